#include "server/service/optimizer_service.h"

#include <memory>
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
    if (out.ok()) {
      SerializeStreamStepsReply(*std::move(out), &write_);
    } else {
      v1::StreamStepsResponse response;
      v1::StepError* error = response.mutable_error();
      error->set_code(static_cast<int>(out.status().code()));
      error->set_message(std::string(out.status().message()));
      error->set_current_version(CurrentVersionOf(out.status()));
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
};

// One unary Step call: its request and reply, alive until the call is answered.
struct StepCall {
  explicit StepCall(const GrpcServerMetrics::MethodMetrics* series) : recorder(series) {}

  StepRequestBytes request;
  UnaryRecorder recorder;
};

}  // namespace

absl::Status OptimizerServiceImpl::DoCreateSession(const v1::CreateSessionRequest& request,
                                                   v1::Session* response) {
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
  SessionInfoToProto((*session)->Info(), response);
  return absl::OkStatus();
}

absl::Status OptimizerServiceImpl::DoGetSession(const v1::GetSessionRequest& request,
                                                v1::Session* response) {
  absl::StatusOr<std::shared_ptr<Session>> session = store_->Find(request.session_id());
  if (!session.ok()) return session.status();
  SessionInfoToProto((*session)->Info(), response);
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
  const bool more = static_cast<int>(sessions.size()) > page_size;
  if (more) sessions.pop_back();
  for (const std::shared_ptr<Session>& s : sessions) {
    SessionInfoToProto(s->Info(), response->add_sessions());
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
  if (absl::Status s = (*session)->Update(update); !s.ok()) return s;
  SessionInfoToProto((*session)->Info(), response);
  return absl::OkStatus();
}

absl::Status OptimizerServiceImpl::DoPull(const v1::PullRequest& request,
                                          v1::PullResponse* response) {
  absl::StatusOr<WireDType> dtype = DTypeFromProto("dtype", request.dtype());
  if (!dtype.ok()) return dtype.status();
  absl::StatusOr<std::shared_ptr<Session>> session = store_->Find(request.session_id());
  if (!session.ok()) return session.status();
  std::vector<absl::string_view> names(request.names().begin(), request.names().end());
  std::vector<RowSelection> rows;
  for (const v1::TensorRows& r : request.rows()) {
    rows.push_back({r.name(), absl::MakeConstSpan(r.indices().data(), r.indices().size())});
  }
  absl::StatusOr<PullOutput> out = (*session)->Pull(names, *dtype, rows);
  if (!out.ok()) return out.status();
  response->set_version(out->version);
  for (WireTensor& t : out->tensors) TensorToProto(std::move(t), response->add_tensors());
  return absl::OkStatus();
}

void OptimizerServiceImpl::StartStep(const StepRequestBytes& request, StepCallback done) {
  absl::StatusOr<StepInput> input = StepInputFromProto(request.message);
  if (!input.ok()) return done(input.status());
  absl::StatusOr<std::shared_ptr<Session>> session = store_->Find(request.message.session_id());
  if (!session.ok()) return done(session.status());
  absl::StatusOr<std::vector<WireTensorView>> gradients = ViewsOf("gradients", request.gradients);
  if (!gradients.ok()) return done(gradients.status());
  input->gradients = *gradients;
  (*session)->Step(*input, std::move(done));
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::CreateSession(
    grpc::CallbackServerContext* context, const v1::CreateSessionRequest* request,
    v1::Session* response) {
  return FinishWith(context, create_session_series_, DoCreateSession(*request, response));
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::GetSession(grpc::CallbackServerContext* context,
                                                           const v1::GetSessionRequest* request,
                                                           v1::Session* response) {
  return FinishWith(context, get_session_series_, DoGetSession(*request, response));
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::ListSessions(grpc::CallbackServerContext* context,
                                                             const v1::ListSessionsRequest* request,
                                                             v1::ListSessionsResponse* response) {
  return FinishWith(context, list_sessions_series_, DoListSessions(*request, response));
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::UpdateSession(
    grpc::CallbackServerContext* context, const v1::UpdateSessionRequest* request,
    v1::Session* response) {
  return FinishWith(context, update_session_series_, DoUpdateSession(*request, response));
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::DeleteSession(
    grpc::CallbackServerContext* context, const v1::DeleteSessionRequest* request,
    v1::DeleteSessionResponse* response) {
  return FinishWith(context, delete_session_series_, store_->Delete(request->session_id()));
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::Pull(grpc::CallbackServerContext* context,
                                                     const v1::PullRequest* request,
                                                     v1::PullResponse* response) {
  return FinishWith(context, pull_series_, DoPull(*request, response));
}

grpc::ServerUnaryReactor* OptimizerServiceImpl::Step(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto call = std::make_unique<StepCall>(step_series_);
  // gRPC hands the request over and drops it after the call: parsing may consume it.
  if (absl::Status parsed =
          ParseStepRequest(const_cast<grpc::ByteBuffer*>(request), &call->request);
      !parsed.ok()) {
    call->recorder.Finish(reactor, ToGrpcStatus(parsed));
    return reactor;
  }
  StepCall* const started = call.get();
  StartStep(started->request,
            [context, reactor, response, call = std::move(call)](absl::StatusOr<StepOutput> out) {
              const int64_t current_version = CurrentVersionOf(out.status());
              if (current_version >= 0) {
                context->AddTrailingMetadata("optd-current-version", absl::StrCat(current_version));
              }
              const grpc::Status status = ToGrpcStatus(out.status());
              if (out.ok()) SerializeStepResponse(*std::move(out), response);
              call->recorder.Finish(reactor, status);
            });
  return reactor;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* OptimizerServiceImpl::StreamSteps(
    grpc::CallbackServerContext* context) {
  return new StepStreamReactor(this, stream_steps_series_);
}

OptimizerServiceImpl::OptimizerServiceImpl(SessionStore* store,
                                           const GrpcServerMetrics* grpc_metrics)
    : store_(store),
      grpc_metrics_(grpc_metrics),
      create_session_series_(MethodSeries("CreateSession")),
      get_session_series_(MethodSeries("GetSession")),
      list_sessions_series_(MethodSeries("ListSessions")),
      update_session_series_(MethodSeries("UpdateSession")),
      delete_session_series_(MethodSeries("DeleteSession")),
      pull_series_(MethodSeries("Pull")),
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
