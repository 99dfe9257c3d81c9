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
// gRPC server metrics: given a GrpcServerMetrics, the service records its own calls through
// GrpcCallRecorders (the series go-grpc-prometheus defines: started, messages received and sent,
// handled by code, handling seconds), so OptdServer initialises its methods with
// Recording::kByService and gRPC's interceptor machinery, which costs a few microseconds per call,
// stays off optd's own methods. A call's clock starts when its handler is invoked (after gRPC has
// parsed the request; Step and StreamSteps parse their own, inside the clock) and stops when the
// handler finishes the call.
//
// Step and StreamSteps are raw methods (grpc::ByteBuffer in and out): they read the request and
// write the reply through message_bytes.h, which leaves gradients' bytes in gRPC's slices for the
// session to read, and hands the returned parameters to gRPC without copying them (the session's
// shared buffer, or bytes encoded straight into gRPC's slice). A request that does not
// parse gets INVALID_ARGUMENT (unary) or a StepError with that code (stream, which goes on).
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

#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "optd/v1/optd.grpc.pb.h"
#include "server/metrics/grpc_metrics_interceptor.h"
#include "server/service/message_bytes.h"
#include "server/session/session_store.h"

namespace optd {

// The callback service with Step and StreamSteps as raw methods (the others typed).
using OptimizerCallbackService = v1::Optimizer::WithCallbackMethod_CreateSession<
    v1::Optimizer::WithCallbackMethod_GetSession<v1::Optimizer::WithCallbackMethod_ListSessions<
        v1::Optimizer::WithCallbackMethod_UpdateSession<
            v1::Optimizer::WithCallbackMethod_DeleteSession<
                v1::Optimizer::WithCallbackMethod_Pull<v1::Optimizer::WithRawCallbackMethod_Step<
                    v1::Optimizer::WithRawCallbackMethod_StreamSteps<v1::Optimizer::Service>>>>>>>>;

class OptimizerServiceImpl final : public OptimizerCallbackService {
 public:
  // `store` must outlive the service; so must `grpc_metrics`, which may be null (metrics off).
  explicit OptimizerServiceImpl(SessionStore* store,
                                const GrpcServerMetrics* grpc_metrics = nullptr);

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
  // Raw methods: they parse the StepRequest and serialize the reply themselves (message_bytes.h),
  // so that the parameters a reply returns are not copied once more by gRPC.
  grpc::ServerUnaryReactor* Step(grpc::CallbackServerContext* context,
                                 const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* StreamSteps(
      grpc::CallbackServerContext* context) override;

  // The work of one Step, shared by Step and StreamSteps: finds the session and steps it; `done` is
  // called exactly once, when the step is answered: at once, or (SYNC) when its barrier
  // completes, from the thread that completes it. `request` must stay valid until StartStep
  // returns. An Aborted status carries the session's current version (CurrentVersionOf).
  void StartStep(const StepRequestBytes& request, StepCallback done);

 private:
  absl::Status DoCreateSession(const v1::CreateSessionRequest& request, v1::Session* response);
  absl::Status DoGetSession(const v1::GetSessionRequest& request, v1::Session* response);
  absl::Status DoListSessions(const v1::ListSessionsRequest& request,
                              v1::ListSessionsResponse* response);
  absl::Status DoUpdateSession(const v1::UpdateSessionRequest& request, v1::Session* response);
  absl::Status DoPull(const v1::PullRequest& request, v1::PullResponse* response);

  // The series of one of this service's methods ("Step") if the service records it
  // (Recording::kByService), else null.
  const GrpcServerMetrics::MethodMetrics* MethodSeries(absl::string_view method) const;

  SessionStore* const store_;
  const GrpcServerMetrics* const grpc_metrics_;
  // Looked up once: the series of each method (null without metrics).
  const GrpcServerMetrics::MethodMetrics* const create_session_series_;
  const GrpcServerMetrics::MethodMetrics* const get_session_series_;
  const GrpcServerMetrics::MethodMetrics* const list_sessions_series_;
  const GrpcServerMetrics::MethodMetrics* const update_session_series_;
  const GrpcServerMetrics::MethodMetrics* const delete_session_series_;
  const GrpcServerMetrics::MethodMetrics* const pull_series_;
  const GrpcServerMetrics::MethodMetrics* const step_series_;
  const GrpcServerMetrics::MethodMetrics* const stream_steps_series_;
};

}  // namespace optd

#endif  // OPTD_SERVER_SERVICE_OPTIMIZER_SERVICE_H_
