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

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;
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
  StepStreamReactor(OptimizerServiceImpl* service, const GrpcServerMetrics::MethodMetrics* series)
      : service_(service), call_(series) {
    call_.Start();
    StartRead(&read_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client half-closed (or the call ended)
      FinishAndRecord(grpc::Status::OK);
      return;
    }
    call_.Received();
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
    service_->StartStep(request_,
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
    StartRead(&read_);
  }

  void OnDone() override { delete this; }

 private:
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

  OptimizerServiceImpl* const service_;
  GrpcCallRecorder call_;
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

absl::Status OptimizerServiceImpl::DoCreateSession(const v1::CreateSessionRequest& request,
                                                   v1::Session* response) {
  if (!request.from_checkpoint().empty() || !request.from_session_checkpoint().empty()) {
    return DoFork(request, response);
  }
  if (!request.session_id().empty()) {
    if (absl::Status s = ValidateSessionId(request.session_id()); !s.ok()) return s;
  }
  absl::StatusOr<SessionConfig> config = ConfigFromProto(request.config());
  if (!config.ok()) return config.status();
  absl::StatusOr<std::vector<WireTensorView>> tensors = ViewsOf("tensors", request.tensors());
  if (!tensors.ok()) return tensors.status();
  absl::StatusOr<std::shared_ptr<Session>> session =
      store_->Create(request.session_id(), *std::move(config), *tensors);
  if (!session.ok()) return session.status();
  CheckpointNew(**session);
  Describe(**session, response);
  return absl::OkStatus();
}

void OptimizerServiceImpl::CheckpointNew(const Session& session) {
  // A failure (a full disk) is logged and counted by the checkpointer; the session is created all
  // the same, and its reply's durable_version (-1) says it is not durable yet.
  if (options_.checkpointer != nullptr) {
    options_.checkpointer->Checkpoint(session, CheckpointReason::kCreate).IgnoreError();
  }
}

absl::Status OptimizerServiceImpl::DoGetSession(const v1::GetSessionRequest& request,
                                                v1::Session* response) {
  absl::StatusOr<std::shared_ptr<Session>> session = store_->Find(request.session_id());
  if (!session.ok()) return session.status();
  Describe(**session, response);
  return absl::OkStatus();
}

absl::Status OptimizerServiceImpl::DoListSessions(const v1::ListSessionsRequest& request,
                                                  v1::ListSessionsResponse* response) {
  if (request.page_size() < 0 || request.page_size() > kMaxPageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size = ", request.page_size(), " is out of range: must be in [0, ",
                     kMaxPageSize, "] (0 means ", kDefaultPageSize, ")"));
  }
  const int page_size = request.page_size() == 0 ? kDefaultPageSize : request.page_size();
  // One extra tells whether another page follows.
  std::vector<std::shared_ptr<Session>> sessions =
      store_->List(request.page_token(), page_size + 1);
  bool more = static_cast<int>(sessions.size()) > page_size;
  if (more) sessions.pop_back();
  // A page ends early, with a page token, rather than outgrow the reply limit.
  size_t bytes = 0;
  for (size_t i = 0; i < sessions.size(); ++i) {
    v1::Session described;
    Describe(*sessions[i], &described);
    bytes += described.ByteSizeLong() + 16;
    if (i > 0 && bytes + 1024 > static_cast<size_t>(options_.max_reply_bytes)) {
      sessions.resize(i);
      more = true;
      break;
    }
    *response->add_sessions() = std::move(described);
  }
  if (more) response->set_next_page_token(sessions.back()->id());
  return absl::OkStatus();
}

absl::Status OptimizerServiceImpl::DoUpdateSession(const v1::UpdateSessionRequest& request,
                                                   v1::Session* response) {
  absl::StatusOr<std::shared_ptr<Session>> session = store_->Find(request.session_id());
  if (!session.ok()) return session.status();
  SessionUpdate update;
  if (request.has_optimizer()) {
    update.optimizer = [&request](OptimizerOptions* options) {
      return MergeOptimizerFromProto(request.optimizer(), /*require_same_kind=*/true, "", options);
    };
  }
  if (request.has_schedule()) {
    absl::StatusOr<ScheduleOptions> schedule = ScheduleFromProto(request.schedule(), "");
    if (!schedule.ok()) return schedule.status();
    update.schedule = *std::move(schedule);
  }
  if (request.has_clipping()) {
    absl::StatusOr<ClipOptions> clipping = ClippingFromProto(request.clipping(), "");
    if (!clipping.ok()) return clipping.status();
    update.clipping = *clipping;
  }
  if (request.has_optimizer_state()) {
    absl::StatusOr<OptimizerState> state =
        OptimizerStateFromProto(request.optimizer_state(), (*session)->tensors());
    if (!state.ok()) return state.status();
    update.optimizer_state = *std::move(state);
  }
  if (absl::Status s = (*session)->Update(update); !s.ok()) return s;
  Describe(**session, response);
  return absl::OkStatus();
}

absl::StatusOr<PullOutput> OptimizerServiceImpl::DoPull(const v1::PullRequest& request) {
  absl::StatusOr<WireDType> dtype = DTypeFromProto("dtype", request.dtype());
  if (!dtype.ok()) return dtype.status();
  absl::StatusOr<std::shared_ptr<Session>> session = store_->Find(request.session_id());
  if (!session.ok()) return session.status();
  std::vector<absl::string_view> names(request.names().begin(), request.names().end());
  std::vector<RowSelection> rows;
  for (const v1::TensorRows& r : request.rows()) {
    rows.push_back({r.name(), absl::MakeConstSpan(r.indices().data(), r.indices().size())});
  }
  absl::StatusOr<ParameterPoint> point = PointFromProto("point", request.point());
  if (!point.ok()) return point.status();
  return (*session)->Pull(names, *dtype, rows, request.include_optimizer_state(), *point);
}

absl::Status OptimizerServiceImpl::DoDeleteSession(const v1::DeleteSessionRequest& request,
                                                   v1::DeleteSessionResponse* response) {
  // With --checkpoint_dir the store also removes its checkpoints: it does not come back.
  return store_->Delete(request.session_id());
}

absl::Status OptimizerServiceImpl::DoCheckpoint(const v1::CheckpointRequest& request,
                                                v1::CheckpointResponse* response) {
  absl::StatusOr<std::shared_ptr<Session>> session = store_->Find(request.session_id());
  if (!session.ok()) return session.status();
  if (options_.checkpointer == nullptr) {
    return absl::FailedPreconditionError(
        "this server keeps no checkpoints: start it with --checkpoint_dir");
  }
  absl::StatusOr<CheckpointResult> result =
      options_.checkpointer->Checkpoint(**session, CheckpointReason::kRequest);
  if (!result.ok()) return result.status();
  response->set_version(result->version);
  response->set_path(result->path);
  response->set_bytes(result->bytes);
  return absl::OkStatus();
}

absl::Status OptimizerServiceImpl::DoFork(const v1::CreateSessionRequest& request,
                                          v1::Session* response) {
  if (options_.checkpointer == nullptr) {
    return absl::FailedPreconditionError(
        "this server keeps no checkpoints (--checkpoint_dir): it cannot create a session from one");
  }
  if (!request.from_checkpoint().empty() && !request.from_session_checkpoint().empty()) {
    return absl::InvalidArgumentError(
        "from_checkpoint and from_session_checkpoint are both set; give one");
  }
  if (request.tensors_size() > 0) {
    return absl::InvalidArgumentError(
        "tensors must be empty when the session starts from a checkpoint");
  }
  if (request.session_id().empty()) {
    return absl::InvalidArgumentError("session_id is required with a checkpoint");
  }
  if (absl::Status s = ValidateSessionId(request.session_id()); !s.ok()) return s;
  absl::StatusOr<SessionState> state =
      !request.from_checkpoint().empty()
          ? options_.checkpointer->Read(request.from_checkpoint())
          : options_.checkpointer->ReadNewest(request.from_session_checkpoint());
  if (!state.ok() && request.from_checkpoint().empty() &&
      state.status().code() == absl::StatusCode::kInvalidArgument) {
    return absl::InvalidArgumentError(absl::StrCat("from_", state.status().message()));
  }
  if (!state.ok()) return state.status();
  state->id = request.session_id();
  state->exactly_once = ExactlyOnceTable::State();  // the fork's workers join it afresh
  state->sync_workers_seen.clear();
  state->create_time = absl::Now();
  // A config given replaces the checkpoint's hyperparameters, schedule and clipping, as
  // UpdateSession would; the tensors and the consistency mode are the checkpoint's.
  const v1::SessionConfig& config = request.config();
  if (config.has_consistency() && config.consistency().ByteSizeLong() > 0) {
    return absl::InvalidArgumentError(
        "config.consistency cannot be given with a checkpoint: a fork keeps the checkpoint's "
        "(change it with a new session instead)");
  }
  if (config.has_optimizer()) {
    const OptimizerOptions before = state->config.optimizer;
    if (absl::Status s = MergeOptimizerFromProto(config.optimizer(), /*require_same_kind=*/true,
                                                 "config.", &state->config.optimizer);
        !s.ok()) {
      return s;
    }
    // The rules of UpdateSession: options whose state would have no history (Adam's amsgrad,
    // RMSprop's centered, momentum to or from 0) cannot change from the checkpoint's.
    absl::StatusOr<std::unique_ptr<Optimizer>> probe = CreateOptimizer(before, {1});
    if (!probe.ok()) return probe.status();
    if (absl::Status s = (*probe)->UpdateOptions(state->config.optimizer); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("config.optimizer: ", s.message()));
    }
  }
  if (config.has_clipping()) {
    absl::StatusOr<ClipOptions> clipping = ClippingFromProto(config.clipping(), "config.");
    if (!clipping.ok()) return clipping.status();
    state->config.clipping = *clipping;
  }
  if (config.has_schedule()) {
    absl::StatusOr<ScheduleOptions> schedule = ScheduleFromProto(config.schedule(), "config.");
    if (!schedule.ok()) return schedule.status();
    state->config.schedule = *std::move(schedule);
    // A new schedule starts from its own initial state at the checkpoint's step count (as
    // UpdateSession continues a new schedule at the current step).
    absl::StatusOr<LrSchedule> fresh =
        LrSchedule::Create(state->config.schedule, BaseLearningRate(state->config.optimizer));
    if (!fresh.ok()) return fresh.status();
    LrScheduleState restarted = fresh->state();
    restarted.step = state->schedule.step;
    state->schedule = restarted;
  } else if (config.has_optimizer() &&
             BaseLearningRate(state->config.optimizer) != state->schedule.base_lr) {
    // A new lr, as UpdateSession sets one (ReduceOnPlateau starts again from it); other options
    // keep the schedule's state, a plateau-reduced lr included.
    state->schedule.base_lr = BaseLearningRate(state->config.optimizer);
    state->schedule.plateau_lr = state->schedule.base_lr;
  }
  absl::StatusOr<std::shared_ptr<Session>> session =
      store_->Restore(*std::move(state), /*as_new=*/true);
  if (!session.ok()) return session.status();
  CheckpointNew(**session);
  Describe(**session, response);
  return absl::OkStatus();
}

int64_t OptimizerServiceImpl::DurableVersion(absl::string_view session_id) const {
  return options_.checkpointer == nullptr ? -1 : options_.checkpointer->DurableVersion(session_id);
}

void OptimizerServiceImpl::Describe(const Session& session, v1::Session* out) const {
  SessionInfoToProto(session.Info(), out);
  out->set_server_incarnation(options_.server_incarnation);
  out->set_durable_version(DurableVersion(session.id()));
}

absl::Status OptimizerServiceImpl::DoJoinSession(const v1::JoinSessionRequest& request,
                                                 v1::JoinSessionResponse* response) {
  absl::StatusOr<std::shared_ptr<Session>> session = store_->Find(request.session_id());
  if (!session.ok()) return session.status();
  absl::StatusOr<JoinOutput> joined = (*session)->Join(request.worker_id());
  if (!joined.ok()) return joined.status();
  response->set_worker_incarnation(joined->worker_incarnation);
  response->set_next_sequence(1);
  response->set_version(joined->version);
  response->set_server_incarnation(options_.server_incarnation);
  return absl::OkStatus();
}

void OptimizerServiceImpl::StartStep(const StepRequestBytes& request, StepCallback done) {
  // Until the session has `done`, a memory shortfall here is answered here.
  bool handed = false;
  try {
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
    grpc::ByteBuffer* response_bytes, const GrpcServerMetrics::MethodMetrics* series,
    absl::string_view method,
    absl::Status (OptimizerServiceImpl::*handler)(const Request&, Response*)) {
  Request request;
  Response response;
  // Every reply, an error too, says which server process answered (a client tells a restart).
  context->AddTrailingMetadata(kServerIncarnationKey, options_.server_incarnation);
  // gRPC hands the request over and drops it after the call: parsing may consume it.
  absl::Status status = ParseMessage(const_cast<grpc::ByteBuffer*>(request_bytes), &request);
  if (status.ok()) status = Guarded(method, [&] { return (this->*handler)(request, &response); });
  if (status.ok()) SerializeMessage(response, response_bytes);
  return FinishWith(context, series, status);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::CreateSession(grpc::CallbackServerContext* context,
                                                              const grpc::ByteBuffer* request,
                                                              grpc::ByteBuffer* response) {
  return Unary(context, request, response, create_session_series_, "CreateSession",
               &OptimizerServiceImpl::DoCreateSession);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::GetSession(grpc::CallbackServerContext* context,
                                                           const grpc::ByteBuffer* request,
                                                           grpc::ByteBuffer* response) {
  return Unary(context, request, response, get_session_series_, "GetSession",
               &OptimizerServiceImpl::DoGetSession);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::ListSessions(grpc::CallbackServerContext* context,
                                                             const grpc::ByteBuffer* request,
                                                             grpc::ByteBuffer* response) {
  return Unary(context, request, response, list_sessions_series_, "ListSessions",
               &OptimizerServiceImpl::DoListSessions);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::UpdateSession(grpc::CallbackServerContext* context,
                                                              const grpc::ByteBuffer* request,
                                                              grpc::ByteBuffer* response) {
  return Unary(context, request, response, update_session_series_, "UpdateSession",
               &OptimizerServiceImpl::DoUpdateSession);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::DeleteSession(grpc::CallbackServerContext* context,
                                                              const grpc::ByteBuffer* request,
                                                              grpc::ByteBuffer* response) {
  return Unary(context, request, response, delete_session_series_, "DeleteSession",
               &OptimizerServiceImpl::DoDeleteSession);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::JoinSession(grpc::CallbackServerContext* context,
                                                            const grpc::ByteBuffer* request,
                                                            grpc::ByteBuffer* response) {
  return Unary(context, request, response, join_session_series_, "JoinSession",
               &OptimizerServiceImpl::DoJoinSession);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::Checkpoint(grpc::CallbackServerContext* context,
                                                           const grpc::ByteBuffer* request,
                                                           grpc::ByteBuffer* response) {
  return Unary(context, request, response, checkpoint_series_, "Checkpoint",
               &OptimizerServiceImpl::DoCheckpoint);
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::Pull(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request_bytes,
                                                     grpc::ByteBuffer* response) {
  v1::PullRequest request;
  context->AddTrailingMetadata(kServerIncarnationKey, options_.server_incarnation);
  absl::Status status = ParseMessage(const_cast<grpc::ByteBuffer*>(request_bytes), &request);
  if (status.ok()) {
    status = Guarded("Pull", [&]() -> absl::Status {
      absl::StatusOr<PullOutput> out = DoPull(request);
      if (!out.ok()) return out.status();
      SerializePullResponse(*std::move(out), options_.server_incarnation,
                            DurableVersion(request.session_id()), response);
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
  StartStep(started->request, [this, context, reactor, response,
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
  return new StepStreamReactor(this, stream_steps_series_);
}

OptimizerServiceImpl::OptimizerServiceImpl(SessionStore* store,
                                           const GrpcServerMetrics* grpc_metrics,
                                           OptimizerServiceOptions options)
    : store_(store),
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
