#include "server/service/optimizer_service.h"

#include <exception>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/service/message_bytes.h"
#include "server/service/proto_convert.h"
#include "server/service/status_util.h"

namespace optd {
namespace {

// Trailing metadata of every unary reply: the server process that answered.
constexpr char kServerIncarnationKey[] = "optd-server-incarnation";

// Records one unary call in the gRPC server metrics: started and its one message received when
// made, the reply (only when OK, as go-grpc-prometheus counts it) and the code when finished.
class UnaryRecorder {
 public:
  explicit UnaryRecorder(const GrpcServerMetrics::MethodMetrics* series) : call_(series) {
    call_.Start();
    call_.Received();
  }

  void Finish(grpc::ServerUnaryReactor* reactor, const grpc::Status& status) {
    if (status.ok()) call_.Sent();
    call_.Finished(static_cast<int>(status.error_code()));
    reactor->Finish(status);
  }

 private:
  GrpcCallRecorder call_;
};

grpc::ServerUnaryReactor* FinishWith(grpc::CallbackServerContext* context,
                                     const GrpcServerMetrics::MethodMetrics* series,
                                     const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  UnaryRecorder(series).Finish(reactor, ToGrpcStatus(status));
  return reactor;
}

// Runs `fn`, turning a memory shortfall or any other exception it throws into a status: a
// handler never lets one escape into gRPC, and its call is always answered.
template <typename F>
absl::Status Guarded(absl::string_view method, F&& fn) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat(method, ": the server ran out of memory; nothing was changed"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(method, ": ", e.what()));
  }
}

// Serves one StreamSteps stream: read a request, step, write its reply, read the next. One request
// is in flight at a time, so replies keep request order. A refused step, or a request that does not
// parse, is reported in its reply and the stream goes on. Raw method: the reactor parses requests
// and serializes replies itself (message_bytes.h).
class StepStreamReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  StepStreamReactor(OptimizerServiceImpl* service, const GrpcServerMetrics::MethodMetrics* series,
                    CallCredentials credentials)
      : service_(service), call_(series), credentials_(std::move(credentials)) {
    call_.Start();
    if (absl::Status admitted = Admit(); !admitted.ok()) {
      FinishAndRecord(ToGrpcStatus(admitted));
      return;
    }
    ReadNext();
  }

  void OnReadDone(bool ok) override {
    if (service_->calls() != nullptr) service_->calls()->LeaveIdle();
    if (!ok) {  // the client half-closed (or the call ended)
      FinishAndRecord(grpc::Status::OK);
      return;
    }
    call_.Received();
    // A changed access file (a token removed) applies to open streams from their next step.
    if (service_->access().enabled() && service_->access().generation() != generation_) {
      if (absl::Status admitted = Admit(); !admitted.ok()) {
        FinishAndRecord(ToGrpcStatus(admitted));
        return;
      }
    }
    // The request's bytes count against the memory budget until its reply is written.
    absl::StatusOr<MemoryReservation> held =
        service_->budget()->Reserve(static_cast<int64_t>(read_.Length()), "a StreamSteps request");
    if (!held.ok()) {
      read_.Clear();
      Reply(held.status());
      return;
    }
    held_ = *std::move(held);
    if (absl::Status parsed = ParseStepRequest(&read_, &request_); !parsed.ok()) {
      Reply(parsed);
      return;
    }
    // Replies go out in request order: the next read starts only after this reply is written.
    service_->StartStep(*caller_, request_,
                        [this](absl::StatusOr<StepOutput> out) { Reply(std::move(out)); });
  }

  void OnWriteDone(bool ok) override {
    // Let go of the reply's slices now: one that shares the session's parameters would otherwise
    // make the next step copy them (copy on write) for nothing.
    write_.Clear();
    held_.Release();
    if (!ok) {
      FinishAndRecord(
          grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream closed while writing a reply"));
      return;
    }
    ReadNext();
  }

  void OnDone() override { delete this; }

 private:
  // Waits for the next request; until it comes, shutdown need not wait for this stream.
  void ReadNext() {
    if (service_->calls() != nullptr) service_->calls()->EnterIdle();
    StartRead(&read_);
  }

  void Reply(absl::StatusOr<StepOutput> out) {
    absl::Status status = out.status();
    if (out.ok()) {
      out->server_incarnation = service_->server_incarnation();
      out->durable_version = service_->DurableVersion(request_.message.session_id());
      status = Guarded("StreamSteps", [&] {
        SerializeStreamStepsReply(*std::move(out), &write_);
        return absl::OkStatus();
      });
    }
    if (!status.ok()) {
      v1::StreamStepsResponse response;
      v1::StepError* error = response.mutable_error();
      error->set_code(static_cast<int>(status.code()));
      error->set_message(std::string(status.message()));
      error->set_current_version(CurrentVersionOf(status));
      error->set_rejoin(NeedsRejoin(status));
      error->set_server_incarnation(service_->server_incarnation());
      SerializeMessage(response, &write_);
    }
    call_.Sent();
    StartWrite(&write_);
  }

  void FinishAndRecord(const grpc::Status& status) {
    call_.Finished(static_cast<int>(status.error_code()));
    Finish(status);
  }

  // Authenticates the stream's caller (again, after the access file changed).
  absl::Status Admit() {
    generation_ = service_->access().generation();
    absl::StatusOr<Caller> caller =
        optd::Admit(credentials_, Action::kStep, service_->access(), service_->audit());
    if (!caller.ok()) return caller.status();
    caller_ = *std::move(caller);
    return absl::OkStatus();
  }

  OptimizerServiceImpl* const service_;
  GrpcCallRecorder call_;
  const CallCredentials credentials_;
  std::optional<Caller> caller_;
  int64_t generation_ = 0;  // of the access file caller_ was admitted by
  grpc::ByteBuffer read_;
  grpc::ByteBuffer write_;
  // Kept from request to request, so its buffers are reused.
  StepRequestBytes request_;
  MemoryReservation held_;  // the request in flight
};

// One unary Step call: its request and reply, alive until the call is answered.
struct StepCall {
  explicit StepCall(const GrpcServerMetrics::MethodMetrics* series) : recorder(series) {}

  StepRequestBytes request;
  MemoryReservation held;  // the request's bytes
  UnaryRecorder recorder;
};

}  // namespace

void OptimizerServiceImpl::StartStep(const Caller& caller, StepRequestBytes& request,
                                     StepCallback done) {
  // Until the session has `done`, a memory shortfall here is answered here.
  bool handed = false;
  try {
    absl::StatusOr<std::string> id = StoredSessionId(caller.who, request.message.session_id());
    if (!id.ok()) return done(id.status());
    *request.message.mutable_session_id() = *std::move(id);
    if (absl::Status s = access_->AdmitStep(caller.who); !s.ok()) return done(s);
    absl::StatusOr<StepInput> input = StepInputFromProto(request.message);
    if (!input.ok()) return done(input.status());
    absl::StatusOr<std::shared_ptr<Session>> session = store_->Find(request.message.session_id());
    if (!session.ok()) return done(session.status());
    absl::StatusOr<std::vector<WireTensorView>> gradients = ViewsOf("gradients", request.gradients);
    if (!gradients.ok()) return done(gradients.status());
    input->gradients = *gradients;
    handed = true;
    (*session)->Step(*input, std::move(done));
  } catch (const std::bad_alloc&) {
    if (!handed) {
      done(absl::ResourceExhaustedError("Step: the server ran out of memory; nothing was changed"));
    }
  }
}

// Serves a unary method whose reply is a small message: parses the request (INVALID_ARGUMENT if
// it does not), runs `handler` (a memory shortfall or any other exception becomes a status, never
// an escaped exception), serializes the reply, finishes.
template <typename Request, typename Response>
grpc::ServerUnaryReactor* OptimizerServiceImpl::Unary(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request_bytes,
    grpc::ByteBuffer* response_bytes, const GrpcServerMetrics::MethodMetrics* series, Action action,
    absl::Status (OptimizerServiceImpl::*handler)(const Caller&, const Request&, Response*)) {
  Request request;
  Response response;
  // Every reply, an error too, says which server process answered (a client tells a restart).
  context->AddTrailingMetadata(kServerIncarnationKey, options_.server_incarnation);
  // Who calls is known before the request is even parsed.
  absl::StatusOr<Caller> caller =
      Admit(CredentialsOf(*context, *access_), action, *access_, options_.audit);
  if (!caller.ok()) return FinishWith(context, series, caller.status());
  // gRPC hands the request over and drops it after the call: parsing may consume it.
  absl::Status status = ParseMessage(const_cast<grpc::ByteBuffer*>(request_bytes), &request);
  if (status.ok()) {
    status =
        Guarded(ActionName(action), [&] { return (this->*handler)(*caller, request, &response); });
  }
  if (status.ok()) SerializeMessage(response, response_bytes);
  return FinishWith(context, series, status);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::CreateSession(grpc::CallbackServerContext* context,
                                                              const grpc::ByteBuffer* request,
                                                              grpc::ByteBuffer* response) {
  return Unary(context, request, response, create_session_series_, Action::kCreateSession,
               &OptimizerServiceImpl::DoCreateSession);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::GetSession(grpc::CallbackServerContext* context,
                                                           const grpc::ByteBuffer* request,
                                                           grpc::ByteBuffer* response) {
  return Unary(context, request, response, get_session_series_, Action::kGetSession,
               &OptimizerServiceImpl::DoGetSession);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::ListSessions(grpc::CallbackServerContext* context,
                                                             const grpc::ByteBuffer* request,
                                                             grpc::ByteBuffer* response) {
  return Unary(context, request, response, list_sessions_series_, Action::kListSessions,
               &OptimizerServiceImpl::DoListSessions);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::UpdateSession(grpc::CallbackServerContext* context,
                                                              const grpc::ByteBuffer* request,
                                                              grpc::ByteBuffer* response) {
  return Unary(context, request, response, update_session_series_, Action::kUpdateSession,
               &OptimizerServiceImpl::DoUpdateSession);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::DeleteSession(grpc::CallbackServerContext* context,
                                                              const grpc::ByteBuffer* request,
                                                              grpc::ByteBuffer* response) {
  return Unary(context, request, response, delete_session_series_, Action::kDeleteSession,
               &OptimizerServiceImpl::DoDeleteSession);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::JoinSession(grpc::CallbackServerContext* context,
                                                            const grpc::ByteBuffer* request,
                                                            grpc::ByteBuffer* response) {
  return Unary(context, request, response, join_session_series_, Action::kJoinSession,
               &OptimizerServiceImpl::DoJoinSession);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::Checkpoint(grpc::CallbackServerContext* context,
                                                           const grpc::ByteBuffer* request,
                                                           grpc::ByteBuffer* response) {
  return Unary(context, request, response, checkpoint_series_, Action::kCheckpoint,
               &OptimizerServiceImpl::DoCheckpoint);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::PlanPlacement(grpc::CallbackServerContext* context,
                                                              const grpc::ByteBuffer* request,
                                                              grpc::ByteBuffer* response) {
  return Unary(context, request, response, plan_placement_series_, Action::kPlanPlacement,
               &OptimizerServiceImpl::DoPlanPlacement);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::Pull(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request_bytes,
                                                     grpc::ByteBuffer* response) {
  v1::PullRequest request;
  context->AddTrailingMetadata(kServerIncarnationKey, options_.server_incarnation);
  absl::StatusOr<Caller> caller =
      Admit(CredentialsOf(*context, *access_), Action::kPull, *access_, options_.audit);
  if (!caller.ok()) return FinishWith(context, pull_series_, caller.status());
  absl::Status status = ParseMessage(const_cast<grpc::ByteBuffer*>(request_bytes), &request);
  if (status.ok()) {
    status = Guarded("Pull", [&]() -> absl::Status {
      absl::StatusOr<PullOutput> out = DoPull(*caller, request);
      if (!out.ok()) return out.status();
      absl::StatusOr<std::string> id = StoredSessionId(caller->who, request.session_id());
      SerializePullResponse(*std::move(out), options_.server_incarnation,
                            DurableVersion(id.ok() ? *id : ""), response);
      return absl::OkStatus();
    });
  }
  return FinishWith(context, pull_series_, status);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::Step(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  context->AddTrailingMetadata(kServerIncarnationKey, options_.server_incarnation);
  auto call = std::make_unique<StepCall>(step_series_);
  absl::StatusOr<Caller> caller =
      Admit(CredentialsOf(*context, *access_), Action::kStep, *access_, options_.audit);
  if (!caller.ok()) {
    call->recorder.Finish(reactor, ToGrpcStatus(caller.status()));
    return reactor;
  }
  // The request's bytes count against the memory budget until the call is answered.
  absl::StatusOr<MemoryReservation> held =
      options_.budget->Reserve(static_cast<int64_t>(request->Length()), "a Step request");
  // gRPC hands the request over and drops it after the call: parsing may consume it.
  absl::Status parsed =
      held.ok() ? ParseStepRequest(const_cast<grpc::ByteBuffer*>(request), &call->request)
                : held.status();
  if (!parsed.ok()) {
    call->recorder.Finish(reactor, ToGrpcStatus(parsed));
    return reactor;
  }
  call->held = *std::move(held);
  StepCall* const started = call.get();
  StartStep(*caller, started->request,
            [this, context, reactor, response,
             call = std::move(call)](absl::StatusOr<StepOutput> out) mutable {
              const int64_t current_version = CurrentVersionOf(out.status());
              if (current_version >= 0) {
                context->AddTrailingMetadata("optd-current-version", absl::StrCat(current_version));
              }
              if (NeedsRejoin(out.status())) context->AddTrailingMetadata("optd-rejoin", "1");
              absl::Status status = out.status();
              if (out.ok()) {
                out->server_incarnation = options_.server_incarnation;
                out->durable_version = DurableVersion(call->request.message.session_id());
                status = Guarded("Step", [&] {
                  SerializeStepResponse(*std::move(out), response);
                  return absl::OkStatus();
                });
              }
              call->recorder.Finish(reactor, ToGrpcStatus(status));
            });
  return reactor;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* OptimizerServiceImpl::StreamSteps(
    grpc::CallbackServerContext* context) {
  return new StepStreamReactor(this, stream_steps_series_, CredentialsOf(*context, *access_));
}

OptimizerServiceImpl::OptimizerServiceImpl(SessionStore* store,
                                           const GrpcServerMetrics* grpc_metrics,
                                           OptimizerServiceOptions options)
    : store_(store),
      anonymous_(options.access == nullptr ? *AccessControl::Open({}) : nullptr),
      access_(options.access != nullptr ? options.access : anonymous_.get()),
      grpc_metrics_(grpc_metrics),
      options_(std::move(options)),
      create_session_series_(MethodSeries("CreateSession")),
      get_session_series_(MethodSeries("GetSession")),
      list_sessions_series_(MethodSeries("ListSessions")),
      update_session_series_(MethodSeries("UpdateSession")),
      delete_session_series_(MethodSeries("DeleteSession")),
      pull_series_(MethodSeries("Pull")),
      join_session_series_(MethodSeries("JoinSession")),
      checkpoint_series_(MethodSeries("Checkpoint")),
      plan_placement_series_(MethodSeries("PlanPlacement")),
      step_series_(MethodSeries("Step")),
      stream_steps_series_(MethodSeries("StreamSteps")) {}

const GrpcServerMetrics::MethodMetrics* OptimizerServiceImpl::MethodSeries(
    absl::string_view method) const {
  if (grpc_metrics_ == nullptr) return nullptr;
  const GrpcServerMetrics::MethodMetrics* series =
      grpc_metrics_->Find(absl::StrCat("/", v1::Optimizer::service_full_name(), "/", method));
  // A method the interceptor records is left to it (never counted twice).
  if (series == nullptr || series->recording != GrpcServerMetrics::Recording::kByService) {
    return nullptr;
  }
  return series;
}

}  // namespace optd
