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
// stays off optd's own methods. A call's clock starts when its handler is invoked and stops when
// the handler finishes the call.
//
// Every method is raw (grpc::ByteBuffer in and out): the service parses each request itself
// (message_bytes.h), so bytes that are no valid message get INVALID_ARGUMENT (a StepError with
// that code on a stream, which goes on), never gRPC's UNIMPLEMENTED; Step leaves gradients' bytes
// in gRPC's slices for the session to read, and Step and Pull hand returned parameters to gRPC
// without copying them. A handler never lets an exception escape: running out of memory is
// RESOURCE_EXHAUSTED and the call is still answered. Requests in flight count against the memory
// budget.
//
// Errors, as the client sees them: NOT_FOUND unknown session; ALREADY_EXISTS taken id;
// INVALID_ARGUMENT bad id, tensor, dtype, hyperparameter or non-finite gradient, with the field,
// a short prefix of the value and the valid range in the message; ABORTED stale gradient or
// expired SYNC barrier, with the session's current version in the trailing metadata key
// "optd-current-version" (unary) or in StepError.current_version (stream); FAILED_PRECONDITION a
// keyed step the server cannot tell from a retry, with trailing metadata "optd-rejoin: 1" (or
// StepError.rejoin) when the worker must join again; RESOURCE_EXHAUSTED too many sessions, a
// memory budget or per-session limit reached, a reply over the message limit (or, from gRPC
// itself, a request over it); UNAVAILABLE the session was deleted, or the server stopped, while
// the call waited at a barrier.

#ifndef OPTD_SERVER_SERVICE_OPTIMIZER_SERVICE_H_
#define OPTD_SERVER_SERVICE_OPTIMIZER_SERVICE_H_

#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "optd/v1/optd.grpc.pb.h"
#include "server/auth/access_control.h"
#include "server/auth/audit_log.h"
#include "server/metrics/grpc_metrics_interceptor.h"
#include "server/persist/checkpointer.h"
#include "server/service/call_tracker.h"
#include "server/service/caller.h"
#include "server/service/message_bytes.h"
#include "server/session/session_store.h"

namespace optd {

// The callback service with every method raw (grpc::ByteBuffer in and out): the service parses
// each request itself, so bytes that are no message get INVALID_ARGUMENT, and writes each reply
// itself, so tensors go out without a copy.
using OptimizerCallbackService = v1::Optimizer::WithRawCallbackMethod_CreateSession<
    v1::Optimizer::WithRawCallbackMethod_GetSession<
        v1::Optimizer::WithRawCallbackMethod_ListSessions<
            v1::Optimizer::WithRawCallbackMethod_UpdateSession<
                v1::Optimizer::WithRawCallbackMethod_DeleteSession<
                    v1::Optimizer::WithRawCallbackMethod_Pull<
                        v1::Optimizer::WithRawCallbackMethod_Step<
                            v1::Optimizer::WithRawCallbackMethod_StreamSteps<
                                v1::Optimizer::WithRawCallbackMethod_JoinSession<
                                    v1::Optimizer::WithRawCallbackMethod_Checkpoint<
                                        v1::Optimizer::WithRawCallbackMethod_PlanPlacement<
                                            v1::Optimizer::Service>>>>>>>>>>>;

// What the service needs besides the store and the metrics.
struct OptimizerServiceOptions {
  MemoryBudget* budget = MemoryBudget::Unlimited();  // pays for requests in flight
  int64_t max_reply_bytes = int64_t{1} << 31;        // bounds ListSessions pages
  Checkpointer* checkpointer = nullptr;              // null: no --checkpoint_dir
  std::string server_incarnation;                    // in every reply
  // Who may call and what (server/auth); null: every caller is the anonymous admin.
  AccessControl* access = nullptr;
  AuditLog* audit = nullptr;  // null: no audit lines
  // Told when a StreamSteps stream waits for its next request (idle: shutdown need not wait for
  // it); null: nobody is.
  CallTracker* calls = nullptr;
};

class OptimizerServiceImpl final : public OptimizerCallbackService {
 public:
  // `store`, `grpc_metrics` (may be null: metrics off) and the options' budget and checkpointer
  // must outlive the service.
  OptimizerServiceImpl(SessionStore* store, const GrpcServerMetrics* grpc_metrics = nullptr,
                       OptimizerServiceOptions options = OptimizerServiceOptions());

  using Reactor = grpc::ServerUnaryReactor;
  Reactor* CreateSession(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                         grpc::ByteBuffer* response) override;
  Reactor* GetSession(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                      grpc::ByteBuffer* response) override;
  Reactor* ListSessions(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                        grpc::ByteBuffer* response) override;
  Reactor* UpdateSession(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                         grpc::ByteBuffer* response) override;
  Reactor* DeleteSession(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                         grpc::ByteBuffer* response) override;
  Reactor* JoinSession(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                       grpc::ByteBuffer* response) override;
  Reactor* Checkpoint(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                      grpc::ByteBuffer* response) override;
  Reactor* PlanPlacement(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                         grpc::ByteBuffer* response) override;
  Reactor* Pull(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                grpc::ByteBuffer* response) override;
  Reactor* Step(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* StreamSteps(
      grpc::CallbackServerContext* context) override;

  MemoryBudget* budget() const { return options_.budget; }
  CallTracker* calls() const { return options_.calls; }
  const std::string& server_incarnation() const { return options_.server_incarnation; }
  // The session's newest checkpointed version, or -1.
  // With --checkpoint_dir: writes a new session's first checkpoint before CreateSession answers.
  void CheckpointNew(const Session& session);
  int64_t DurableVersion(absl::string_view session_id) const;

  // The work of one Step, shared by Step and StreamSteps: finds the session and steps it; `done` is
  // called exactly once, when the step is answered: at once, or (SYNC) when its barrier
  // completes, from the thread that completes it. `request` must stay valid until StartStep
  // returns. An Aborted status carries the session's current version (CurrentVersionOf).
  // `caller` names the session as its tenant sees it; the step counts against its tenant's
  // steps_per_second quota. `request`'s session id is replaced by the stored one.
  void StartStep(const Caller& caller, StepRequestBytes& request, StepCallback done);

  AccessControl& access() const { return *access_; }
  AuditLog* audit() const { return options_.audit; }

 private:
  template <typename Request, typename Response>
  Reactor* Unary(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request_bytes,
                 grpc::ByteBuffer* response_bytes, const GrpcServerMetrics::MethodMetrics* series,
                 Action action,
                 absl::Status (OptimizerServiceImpl::*handler)(const Caller&, const Request&,
                                                               Response*));

  absl::Status DoCreateSession(const Caller& caller, const v1::CreateSessionRequest& request,
                               v1::Session* response);
  absl::Status DoGetSession(const Caller& caller, const v1::GetSessionRequest& request,
                            v1::Session* response);
  absl::Status DoListSessions(const Caller& caller, const v1::ListSessionsRequest& request,
                              v1::ListSessionsResponse* response);
  absl::Status DoUpdateSession(const Caller& caller, const v1::UpdateSessionRequest& request,
                               v1::Session* response);
  // UpdateSessionRequest.restore_version: `session` replaced by its checkpoint at that version.
  absl::Status RestoreVersion(const Caller& caller, const v1::UpdateSessionRequest& request,
                              const Session& session, v1::Session* response);
  absl::Status DoDeleteSession(const Caller& caller, const v1::DeleteSessionRequest& request,
                               v1::DeleteSessionResponse* response);
  absl::Status DoJoinSession(const Caller& caller, const v1::JoinSessionRequest& request,
                             v1::JoinSessionResponse* response);
  absl::Status DoPlanPlacement(const Caller& caller, const v1::PlanPlacementRequest& request,
                               v1::Placement* response);
  absl::Status DoCheckpoint(const Caller& caller, const v1::CheckpointRequest& request,
                            v1::CheckpointResponse* response);
  // CreateSession from a checkpoint (a fork).
  absl::Status DoFork(const Caller& caller, const v1::CreateSessionRequest& request,
                      v1::Session* response);
  // The session's description, with the server's incarnation and its durable version.
  void Describe(const Caller& caller, const Session& session, v1::Session* out) const;
  // CreateSession or a fork, before its audit line.
  absl::Status Create(const Caller& caller, const v1::CreateSessionRequest& request,
                      v1::Session* response);
  // With quotas: OK if `caller`'s tenant may add a session of `new_bytes`.
  absl::Status CheckQuota(const Caller& caller, int64_t new_bytes) const;
  // The session `id` names for `caller` (a tenant's own, or NotFound).
  absl::StatusOr<std::shared_ptr<Session>> Find(const Caller& caller, absl::string_view id);
  absl::StatusOr<PullOutput> DoPull(const Caller& caller, const v1::PullRequest& request);

  // The series of one of this service's methods ("Step") if the service records it
  // (Recording::kByService), else null.
  const GrpcServerMetrics::MethodMetrics* MethodSeries(absl::string_view method) const;

  SessionStore* const store_;
  std::unique_ptr<AccessControl> anonymous_;  // when options_.access is null
  AccessControl* const access_;
  // Serialises creations while quotas are checked, so that two cannot both fit the last room.
  absl::Mutex create_mu_;
  const GrpcServerMetrics* const grpc_metrics_;
  const OptimizerServiceOptions options_;
  // Looked up once: the series of each method (null without metrics).
  const GrpcServerMetrics::MethodMetrics* const create_session_series_;
  const GrpcServerMetrics::MethodMetrics* const get_session_series_;
  const GrpcServerMetrics::MethodMetrics* const list_sessions_series_;
  const GrpcServerMetrics::MethodMetrics* const update_session_series_;
  const GrpcServerMetrics::MethodMetrics* const delete_session_series_;
  const GrpcServerMetrics::MethodMetrics* const pull_series_;
  const GrpcServerMetrics::MethodMetrics* const join_session_series_;
  const GrpcServerMetrics::MethodMetrics* const checkpoint_series_;
  const GrpcServerMetrics::MethodMetrics* const plan_placement_series_;
  const GrpcServerMetrics::MethodMetrics* const step_series_;
  const GrpcServerMetrics::MethodMetrics* const stream_steps_series_;
};

}  // namespace optd

#endif  // OPTD_SERVER_SERVICE_OPTIMIZER_SERVICE_H_
