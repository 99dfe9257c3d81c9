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
// value and valid range in the message; ABORTED stale gradient or expired SYNC barrier, with the
// session's current version in the trailing metadata key "optd-current-version" (unary) or in
// StepError.current_version (stream); FAILED_PRECONDITION a reused sequence number;
// RESOURCE_EXHAUSTED too many sessions (or, from gRPC itself, a message over the size limit);
// UNAVAILABLE the session was deleted, or the server stopped, while the call waited at a barrier.

#ifndef OPTD_SERVER_SERVICE_OPTIMIZER_SERVICE_H_
#define OPTD_SERVER_SERVICE_OPTIMIZER_SERVICE_H_

#include "absl/functional/any_invocable.h"
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
  grpc::ServerUnaryReactor* UpdateSession(grpc::CallbackServerContext* context,
                                          const v1::UpdateSessionRequest* request,
                                          v1::Session* response) override;
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

  // The work of one Step, shared by Step and StreamSteps: calls `done` exactly once, when the step
  // is answered: at once, or (SYNC) when its barrier completes, from the thread that completes
  // it. `request` must stay valid until StartStep returns and `response` until `done` is called.
  // On an Aborted status, `done` also receives the session's current version (else -1).
  using StepDone = absl::AnyInvocable<void(absl::Status status, int64_t current_version)>;
  void StartStep(const v1::StepRequest& request, v1::StepResponse* response, StepDone done);

 private:
  absl::Status DoCreateSession(const v1::CreateSessionRequest& request, v1::Session* response);
  absl::Status DoGetSession(const v1::GetSessionRequest& request, v1::Session* response);
  absl::Status DoListSessions(const v1::ListSessionsRequest& request,
                              v1::ListSessionsResponse* response);
  absl::Status DoUpdateSession(const v1::UpdateSessionRequest& request, v1::Session* response);
  absl::Status DoPull(const v1::PullRequest& request, v1::PullResponse* response);

  SessionStore* const store_;
};

}  // namespace optd

#endif  // OPTD_SERVER_SERVICE_OPTIMIZER_SERVICE_H_
