// File: optimizer_service.h
//
// OptimizerServiceImpl: the optd.v1.Optimizer gRPC service on the callback API. A thin adapter:
// each method decodes the request into domain types (proto_convert.h), calls the SessionStore or a
// Session, encodes the reply and finishes with the status converted once (status_util.h). It holds
// no lock of its own and never blocks a gRPC thread on anything but a session's step.
//
// Who may call it: OptdServer registers it with a grpc::Server. Thread-safe: every method may run
// concurrently; the store and the sessions synchronise themselves.
//
// Errors, as the client sees them: NOT_FOUND unknown session; ALREADY_EXISTS taken id;
// INVALID_ARGUMENT bad id, tensor, dtype, hyperparameter or non-finite gradient, with the field,
// value and valid range in the message; RESOURCE_EXHAUSTED too many sessions (or, from gRPC itself,
// a message over the size limit).

#ifndef OPTD_SERVER_SERVICE_OPTIMIZER_SERVICE_H_
#define OPTD_SERVER_SERVICE_OPTIMIZER_SERVICE_H_

#include "absl/status/status.h"
#include "optd/v1/optd.grpc.pb.h"
#include "server/session/session_store.h"

namespace optd {

class OptimizerServiceImpl final : public v1::Optimizer::CallbackService {
 public:
  // `store` must outlive the service.
  explicit OptimizerServiceImpl(SessionStore* store) : store_(store) {}

  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* context,
                                          const v1::CreateSessionRequest* request,
                                          v1::Session* response) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const v1::GetSessionRequest* request,
                                       v1::Session* response) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* context,
                                         const v1::ListSessionsRequest* request,
                                         v1::ListSessionsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteSession(grpc::CallbackServerContext* context,
                                          const v1::DeleteSessionRequest* request,
                                          v1::DeleteSessionResponse* response) override;
  grpc::ServerUnaryReactor* Pull(grpc::CallbackServerContext* context,
                                 const v1::PullRequest* request,
                                 v1::PullResponse* response) override;
  grpc::ServerUnaryReactor* Step(grpc::CallbackServerContext* context,
                                 const v1::StepRequest* request,
                                 v1::StepResponse* response) override;
  grpc::ServerBidiReactor<v1::StepRequest, v1::StreamStepsResponse>* StreamSteps(
      grpc::CallbackServerContext* context) override;

  // The work of one Step, shared by Step and StreamSteps.
  absl::Status DoStep(const v1::StepRequest& request, v1::StepResponse* response);

 private:
  absl::Status DoCreateSession(const v1::CreateSessionRequest& request, v1::Session* response);
  absl::Status DoGetSession(const v1::GetSessionRequest& request, v1::Session* response);
  absl::Status DoListSessions(const v1::ListSessionsRequest& request,
                              v1::ListSessionsResponse* response);
  absl::Status DoPull(const v1::PullRequest& request, v1::PullResponse* response);

  SessionStore* const store_;
};

}  // namespace optd

#endif  // OPTD_SERVER_SERVICE_OPTIMIZER_SERVICE_H_
