#include "client/cpp/client.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/types/optional.h"
#include "client/cpp/client_status.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/support/channel_arguments.h"

namespace optd {
namespace client {
namespace {

constexpr size_t kMaxIdLength = 128;
constexpr int32_t kMaxPageSize = 1000;

void SetDeadline(grpc::ClientContext* context, absl::Duration timeout) {
  if (timeout > absl::ZeroDuration() && timeout != absl::InfiniteDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
}

// OK if `id` is 1-128 characters of [A-Za-z0-9] and `extra`; else InvalidArgument naming `field`.
absl::Status CheckId(absl::string_view field, absl::string_view id, absl::string_view extra) {
  if (id.empty() || id.size() > kMaxIdLength) {
    return absl::InvalidArgumentError(absl::StrCat(field, " '", id, "' has ", id.size(),
                                                   " characters; must have 1-", kMaxIdLength));
  }
  for (const char c : id) {
    if (!absl::ascii_isalnum(c) && extra.find(c) == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, " '", id, "' contains '", absl::CHexEscape(absl::string_view(&c, 1)),
                       "'; must be characters of [A-Za-z0-9", extra, "]"));
    }
  }
  return absl::OkStatus();
}

// A session id: 1-128 characters of [A-Za-z0-9._-], optionally after "tenant:" (how an admin names
// another tenant's session, ":id" one of no tenant; the server refuses it from anyone else).
absl::Status CheckSessionId(absl::string_view id) {
  const size_t colon = id.find(':');
  if (colon == absl::string_view::npos) return CheckId("session_id", id, "._-");
  const absl::string_view tenant = id.substr(0, colon);
  if (!tenant.empty()) {
    if (absl::Status s = CheckId("the tenant of session_id", tenant, "._-"); !s.ok()) return s;
  }
  return CheckId("session_id", id.substr(colon + 1), "._-");
}

absl::Status CheckDType(absl::string_view field, v1::DType dtype) {
  if (v1::DType_IsValid(dtype)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(field, " = ", static_cast<int>(dtype),
                                                 "; must be DTYPE_F32, DTYPE_BF16 or DTYPE_F16"));
}

bool Keyed(const v1::StepRequest& request) {
  return !request.worker_id().empty() && request.sequence() > 0;
}

}  // namespace

absl::Status ClientOptions::Validate() const {
  if (timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ClientOptions.timeout = ", absl::FormatDuration(timeout), "; must be > 0 (or infinite)"));
  }
  if (max_message_bytes < 1 || max_message_bytes > INT_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClientOptions.max_message_bytes = ", max_message_bytes, "; must be in [1, ",
                     INT_MAX, "]"));
  }
  if (max_reconnect_backoff < absl::Milliseconds(100) ||
      max_reconnect_backoff > absl::Seconds(120)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ClientOptions.max_reconnect_backoff = ", absl::FormatDuration(max_reconnect_backoff),
        "; must be in [100ms, 120s]"));
  }
  for (const auto& [key, value] : metadata) {
    if (key.empty() || absl::AsciiStrToLower(key) != key) {
      return absl::InvalidArgumentError(
          absl::StrCat("ClientOptions.metadata key '", key, "' must be non-empty and lowercase"));
    }
  }
  absl::Status s = retry.Validate();
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("ClientOptions.", s.message()));
  return absl::OkStatus();
}

absl::StatusOr<v1::StepRequest> MakeStepRequest(absl::string_view session_id,
                                                const std::vector<HostTensor>& gradients,
                                                const StepOptions& options) {
  if (absl::Status s = CheckSessionId(session_id); !s.ok()) return s;
  if (!options.worker_id.empty()) {
    if (absl::Status s = CheckId("worker_id", options.worker_id, "._:-"); !s.ok()) return s;
  }
  if (options.sequence < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence = ", options.sequence, "; must be >= 0 (0: no idempotency key)"));
  }
  if (options.sequence > 0 && options.worker_id.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequence = ", options.sequence, " needs a worker_id (the key is worker_id + sequence)"));
  }
  if (options.worker_incarnation < 0 || (options.worker_incarnation > 0 && options.sequence == 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker_incarnation = ", options.worker_incarnation,
                     "; must be >= 0, and > 0 only with a worker_id and a sequence"));
  }
  if (options.version.has_value() && *options.version < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("version = ", *options.version, "; must be >= 0"));
  }
  if (options.loss.has_value() && !std::isfinite(*options.loss)) {
    return absl::InvalidArgumentError(absl::StrCat("loss = ", *options.loss, "; must be finite"));
  }
  if (!v1::ReturnParameters_IsValid(options.return_parameters)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "return_parameters = ", static_cast<int>(options.return_parameters),
        "; must be RETURN_PARAMETERS_ALL, RETURN_PARAMETERS_NONE or RETURN_PARAMETERS_TOUCHED"));
  }
  if (absl::Status s = CheckDType("return_dtype", options.return_dtype); !s.ok()) return s;
  if (absl::Status s = CheckDType("gradient_dtype", options.gradient_dtype); !s.ok()) return s;

  v1::StepRequest request;
  request.set_session_id(std::string(session_id));
  request.set_worker_id(options.worker_id);
  request.set_sequence(options.sequence);
  request.set_worker_incarnation(options.worker_incarnation);
  if (options.version.has_value()) request.set_version(*options.version);
  for (size_t i = 0; i < gradients.size(); ++i) {
    absl::StatusOr<v1::Tensor> t = HostTensorToProto(gradients[i], options.gradient_dtype);
    if (!t.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("gradients[", i, "]: ", t.status().message()));
    }
    *request.add_gradients() = *std::move(t);
  }
  if (options.loss.has_value()) request.set_loss(*options.loss);
  request.set_return_parameters(options.return_parameters);
  request.set_return_dtype(options.return_dtype);
  request.set_return_point(options.return_point);
  request.set_placement_fingerprint(options.placement_fingerprint);
  return request;
}

struct Client::HealthStub {
  explicit HealthStub(const std::shared_ptr<grpc::Channel>& channel)
      : stub(grpc::health::v1::Health::NewStub(channel)) {}
  std::unique_ptr<grpc::health::v1::Health::Stub> stub;
};

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(std::string address,
                                                        ClientOptions options) {
  if (address.empty()) return absl::InvalidArgumentError("server address is empty; want host:port");
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  const int reconnect_ms =
      static_cast<int>(absl::ToInt64Milliseconds(options.max_reconnect_backoff));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, reconnect_ms);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::min(reconnect_ms, 1000));
  // After a connection fails, the channel reconnects only once the resolver has resolved the
  // address again, which gRPC rate-limits to once per 30 s by default: capped too, or a restarted
  // server is found ~5 s late (measured with gRPC 1.51).
  args.SetInt(GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS, std::min(reconnect_ms, 1000));
  SecurityOptions wanted{options.tls,     options.tls_ca,          options.tls_cert,
                         options.tls_key, options.tls_server_name, options.token};
  absl::StatusOr<Security> security =
      Security::Make(address, wanted, options.credentials != nullptr);
  if (!security.ok()) return security.status();
  if (!security->server_name().empty()) {
    args.SetSslTargetNameOverride(security->server_name());
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      options.credentials != nullptr ? options.credentials
      : security->tls()              ? security->credentials()
                                     : grpc::InsecureChannelCredentials();
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(address, credentials, args);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot make a channel to '", address, "'"));
  }
  return std::unique_ptr<Client>(
      new Client(std::move(channel), std::move(options), address, *std::move(security)));
}

namespace {

// The Security of a client over a given channel: only the token (unusable: none).
Security ChannelSecurity(const std::string& target, const std::optional<std::string>& token) {
  SecurityOptions wanted;
  wanted.token = token;
  absl::StatusOr<Security> security = Security::Make(target, wanted, /*custom_credentials=*/true);
  return security.ok() ? *std::move(security) : Security(target);
}

}  // namespace

Client::Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options, std::string target)
    : Client(channel, options, target,
             ChannelSecurity(target.empty() ? "the server" : target, options.token)) {}

Client::Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options, std::string target,
               Security security)
    : options_(std::move(options)),
      target_(target.empty() ? "the server" : std::move(target)),
      security_(std::move(security)),
      channel_(std::move(channel)),
      stub_(v1::Optimizer::NewStub(channel_)),
      health_(std::make_unique<HealthStub>(channel_)) {}

Client::~Client() = default;

void Client::Prepare(grpc::ClientContext* context, absl::Duration timeout) const {
  SetDeadline(context, timeout);
  context->set_wait_for_ready(options_.wait_for_ready);
  bool authorization = false;
  for (const auto& [key, value] : options_.metadata) {
    context->AddMetadata(key, value);
    authorization = authorization || key == "authorization";
  }
  if (!authorization && !security_.token().empty()) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", security_.token()));
  }
}

template <typename Call>
absl::Status Client::Retry(absl::string_view method, const RetryPolicy& retry, Call call,
                           int* attempts, std::optional<absl::Duration> timeout) {
  const absl::Time start = absl::Now();
  std::optional<absl::BitGen> gen;  // seeded only if a retry needs it
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext context;
    Prepare(&context, timeout.value_or(options_.timeout));
    absl::Status s = call(&context);
    if (attempts != nullptr) *attempts = attempt;
    if (s.ok()) return s;
    absl::Status explained = security_.Explain(s, method);
    const bool tls_failure = IsTlsFailure(explained);
    if (options_.explain_refusals) s = std::move(explained);
    const bool transport = s.code() == absl::StatusCode::kUnavailable ||
                           s.code() == absl::StatusCode::kDeadlineExceeded;
    // A failed TLS handshake fails the same way again: not retried, already explained.
    if (!retry.Retries(s.code()) || attempt >= retry.max_attempts || tls_failure) {
      if (!transport || tls_failure) return s;
      return Annotate(
          s, absl::StrFormat("%s to %s: %d attempt%s in %.2f s%s", method, target_, attempt,
                             attempt == 1 ? "" : "s", absl::ToDoubleSeconds(absl::Now() - start),
                             retry.max_attempts == 1 ? ", not retried" : ""));
    }
    if (!gen.has_value()) gen.emplace();
    absl::SleepFor(retry.Backoff(attempt, *gen));
  }
}

absl::StatusOr<v1::Session> Client::CreateSession(const v1::CreateSessionRequest& request) {
  if (!request.session_id().empty()) {
    if (absl::Status s = CheckSessionId(request.session_id()); !s.ok()) return s;
  }
  v1::Session session;
  absl::Status s = Retry("CreateSession", RetryPolicy::None(), [&](grpc::ClientContext* context) {
    return FromGrpcStatus(stub_->CreateSession(context, request, &session), context);
  });
  if (!s.ok()) return s;
  return session;
}

absl::StatusOr<v1::Session> Client::CreateSession(std::string session_id,
                                                  const v1::SessionConfig& config,
                                                  const std::vector<HostTensor>& tensors) {
  v1::CreateSessionRequest request;
  request.set_session_id(std::move(session_id));
  *request.mutable_config() = config;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].row_sparse()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensors[", i, "] '", tensors[i].name, "' is row-sparse; initial values must be dense"));
    }
    absl::StatusOr<v1::Tensor> t = HostTensorToProto(tensors[i]);
    if (!t.ok()) return t.status();
    *request.add_tensors() = *std::move(t);
  }
  return CreateSession(request);
}

absl::StatusOr<v1::Session> Client::GetSession(absl::string_view session_id) {
  if (absl::Status s = CheckSessionId(session_id); !s.ok()) return s;
  v1::GetSessionRequest request;
  request.set_session_id(std::string(session_id));
  v1::Session session;
  absl::Status s = Retry("GetSession", options_.retry, [&](grpc::ClientContext* context) {
    return FromGrpcStatus(stub_->GetSession(context, request, &session), context);
  });
  if (!s.ok()) return s;
  return session;
}

absl::StatusOr<v1::Placement> Client::PlanPlacement(const v1::PlanPlacementRequest& request) {
  v1::Placement placement;
  absl::Status s = Retry("PlanPlacement", options_.retry, [&](grpc::ClientContext* context) {
    return FromGrpcStatus(stub_->PlanPlacement(context, request, &placement), context);
  });
  if (!s.ok()) return s;
  return placement;
}

absl::StatusOr<std::vector<v1::Session>> Client::ListSessions(int32_t page_size) {
  if (page_size < 0 || page_size > kMaxPageSize) {
    return absl::InvalidArgumentError(absl::StrCat("page_size = ", page_size, "; must be in [0, ",
                                                   kMaxPageSize, "] (0: the server's default)"));
  }
  std::vector<v1::Session> sessions;
  v1::ListSessionsRequest request;
  request.set_page_size(page_size);
  while (true) {
    v1::ListSessionsResponse response;
    absl::Status s = Retry("ListSessions", options_.retry, [&](grpc::ClientContext* context) {
      return FromGrpcStatus(stub_->ListSessions(context, request, &response), context);
    });
    if (!s.ok()) return s;
    for (v1::Session& session : *response.mutable_sessions()) {
      sessions.push_back(std::move(session));
    }
    if (response.next_page_token().empty()) return sessions;
    if (response.next_page_token() == request.page_token()) {
      // A server that hands back the token it was given would keep us here forever.
      return absl::InternalError(absl::StrCat("malformed reply from the server: ListSessions ",
                                              "returned the same page token twice ('",
                                              response.next_page_token(), "')"));
    }
    request.set_page_token(response.next_page_token());
  }
}

absl::StatusOr<v1::Session> Client::UpdateSession(const v1::UpdateSessionRequest& request) {
  if (absl::Status s = CheckSessionId(request.session_id()); !s.ok()) return s;
  v1::Session session;
  absl::Status s = Retry("UpdateSession", RetryPolicy::None(), [&](grpc::ClientContext* context) {
    return FromGrpcStatus(stub_->UpdateSession(context, request, &session), context);
  });
  if (!s.ok()) return s;
  return session;
}

absl::StatusOr<v1::Session> Client::SetLearningRate(absl::string_view session_id, double lr) {
  if (!std::isfinite(lr) || lr < 0) {
    return absl::InvalidArgumentError(absl::StrCat("lr = ", lr, "; must be finite and >= 0"));
  }
  absl::StatusOr<v1::Session> session = GetSession(session_id);
  if (!session.ok()) return session.status();
  v1::UpdateSessionRequest request;
  request.set_session_id(std::string(session_id));
  *request.mutable_optimizer() = session->config().optimizer();
  // The session's optimizer message, cleared but for lr: only what is set changes.
  v1::OptimizerConfig* config = request.mutable_optimizer();
  const google::protobuf::Reflection* reflection = config->GetReflection();
  const google::protobuf::FieldDescriptor* kind = reflection->GetOneofFieldDescriptor(
      *config, config->GetDescriptor()->FindOneofByName("kind"));
  if (kind == nullptr) {
    return absl::InternalError(
        absl::StrCat("session ", session_id, " reports no optimizer; cannot set its lr"));
  }
  google::protobuf::Message* optimizer = reflection->MutableMessage(config, kind);
  optimizer->Clear();
  const google::protobuf::FieldDescriptor* lr_field =
      optimizer->GetDescriptor()->FindFieldByName("lr");
  if (lr_field == nullptr ||
      lr_field->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_DOUBLE) {
    return absl::InternalError(absl::StrCat("optimizer ", kind->name(), " has no double lr"));
  }
  optimizer->GetReflection()->SetDouble(optimizer, lr_field, lr);
  return UpdateSession(request);
}

absl::Status Client::DeleteSession(absl::string_view session_id) {
  if (absl::Status s = CheckSessionId(session_id); !s.ok()) return s;
  v1::DeleteSessionRequest request;
  request.set_session_id(std::string(session_id));
  v1::DeleteSessionResponse response;
  return Retry("DeleteSession", RetryPolicy::None(), [&](grpc::ClientContext* context) {
    return FromGrpcStatus(stub_->DeleteSession(context, request, &response), context);
  });
}

absl::StatusOr<PullResult> Client::Pull(absl::string_view session_id, const PullOptions& options) {
  if (absl::Status s = CheckSessionId(session_id); !s.ok()) return s;
  if (absl::Status s = CheckDType("PullOptions.dtype", options.dtype); !s.ok()) return s;
  v1::PullRequest request;
  request.set_session_id(std::string(session_id));
  for (size_t i = 0; i < options.names.size(); ++i) {
    if (options.names[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("PullOptions.names[", i, "] is empty"));
    }
    request.add_names(options.names[i]);
  }
  request.set_dtype(options.dtype);
  request.set_include_optimizer_state(options.optimizer_state);
  request.set_point(options.point);
  for (size_t i = 0; i < options.rows.size(); ++i) {
    const TensorRows& rows = options.rows[i];
    if (!options.names.empty() &&
        std::find(options.names.begin(), options.names.end(), rows.name) == options.names.end()) {
      return absl::InvalidArgumentError(absl::StrCat("PullOptions.rows[", i, "] names '", rows.name,
                                                     "', which is not among PullOptions.names (",
                                                     absl::StrJoin(options.names, ", "), ")"));
    }
    for (size_t j = 0; j < rows.indices.size(); ++j) {
      if (rows.indices[j] < 0) {
        return absl::InvalidArgumentError(absl::StrCat("PullOptions.rows[", i, "] ('", rows.name,
                                                       "').indices[", j, "] = ", rows.indices[j],
                                                       "; must be >= 0"));
      }
    }
    v1::TensorRows* out = request.add_rows();
    out->set_name(rows.name);
    out->mutable_indices()->Add(rows.indices.begin(), rows.indices.end());
  }
  v1::PullResponse response;
  absl::Status s = Retry("Pull", options_.retry, [&](grpc::ClientContext* context) {
    return FromGrpcStatus(stub_->Pull(context, request, &response), context);
  });
  if (!s.ok()) return s;
  PullResult result;
  result.version = response.version();
  result.server_incarnation = response.server_incarnation();
  result.durable_version = response.durable_version();
  result.point = response.point();
  if (response.has_optimizer_state()) {
    result.optimizer_state = std::move(*response.mutable_optimizer_state());
  }
  absl::StatusOr<std::vector<HostTensor>> tensors = DecodeReplyTensors(response.tensors());
  if (!tensors.ok()) return tensors.status();
  result.tensors = *std::move(tensors);
  return result;
}

absl::StatusOr<CheckpointResult> Client::Checkpoint(absl::string_view session_id) {
  if (absl::Status s = CheckSessionId(session_id); !s.ok()) return s;
  v1::CheckpointRequest request;
  request.set_session_id(std::string(session_id));
  v1::CheckpointResponse response;
  absl::Status s = Retry("Checkpoint", RetryPolicy::None(), [&](grpc::ClientContext* context) {
    return FromGrpcStatus(stub_->Checkpoint(context, request, &response), context);
  });
  if (!s.ok()) return s;
  CheckpointResult result;
  result.version = response.version();
  result.path = response.path();
  result.bytes = response.bytes();
  return result;
}

absl::StatusOr<v1::Session> Client::CreateSessionFromCheckpoint(
    std::string session_id, const CheckpointSource& from,
    const std::optional<v1::SessionConfig>& config) {
  if (from.path.empty() == from.session_id.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("CheckpointSource needs exactly one of path and session_id (got path '",
                     from.path, "', session_id '", from.session_id, "')"));
  }
  if (!from.session_id.empty()) {
    if (absl::Status s = CheckSessionId(from.session_id); !s.ok()) return s;
  }
  v1::CreateSessionRequest request;
  request.set_session_id(std::move(session_id));
  request.set_from_checkpoint(from.path);
  request.set_from_session_checkpoint(from.session_id);
  if (config.has_value()) *request.mutable_config() = *config;
  return CreateSession(request);
}

absl::StatusOr<StepResult> Client::Step(absl::string_view session_id,
                                        const std::vector<HostTensor>& gradients,
                                        const StepOptions& options) {
  absl::StatusOr<v1::StepRequest> request = MakeStepRequest(session_id, gradients, options);
  if (!request.ok()) return request.status();
  if (options.retry.has_value()) {
    if (absl::Status s = options.retry->Validate(); !s.ok()) return s;
    return SendStep(*request, *options.retry);
  }
  return SendStep(*request, options_.retry);
}

absl::StatusOr<StepResult> Client::SendStep(const v1::StepRequest& request,
                                            const RetryPolicy& retry, int* attempts) {
  v1::StepResponse response;
  int made = 0;
  absl::Status s = SendStepRaw(request, retry, options_.timeout, &response, &made);
  if (attempts != nullptr) *attempts = made;
  if (!s.ok()) return s;
  return DecodeStepResponse(response, request, made);
}

absl::Status Client::SendStepRaw(const v1::StepRequest& request, const RetryPolicy& retry,
                                 absl::Duration timeout, v1::StepResponse* response,
                                 int* attempts) {
  if (attempts != nullptr) *attempts = 0;
  if (absl::Status s = retry.Validate(); !s.ok()) return s;
  // A step without a key could be applied twice if its reply were lost: never retried.
  const RetryPolicy& policy = Keyed(request) ? retry : RetryPolicy::None();
  return Retry(
      "Step", policy,
      [&](grpc::ClientContext* context) {
        return FromGrpcStatus(stub_->Step(context, request, response), context);
      },
      attempts, timeout);
}

absl::StatusOr<JoinResult> Client::JoinSession(absl::string_view session_id,
                                               absl::string_view worker_id) {
  if (absl::Status s = CheckSessionId(session_id); !s.ok()) return s;
  if (absl::Status s = CheckId("worker_id", worker_id, "._:-"); !s.ok()) return s;
  v1::JoinSessionRequest request;
  request.set_session_id(std::string(session_id));
  request.set_worker_id(std::string(worker_id));
  v1::JoinSessionResponse response;
  absl::Status s = Retry("JoinSession", options_.retry, [&](grpc::ClientContext* context) {
    return FromGrpcStatus(stub_->JoinSession(context, request, &response), context);
  });
  if (!s.ok()) return s;
  JoinResult result;
  result.worker_incarnation = response.worker_incarnation();
  result.next_sequence = response.next_sequence();
  result.version = response.version();
  result.server_incarnation = response.server_incarnation();
  return result;
}

std::unique_ptr<StepStream> Client::StreamSteps(absl::Duration lifetime) {
  return std::unique_ptr<StepStream>(new StepStream(this, lifetime));
}

absl::StatusOr<bool> Client::Health(const std::string& service) {
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  absl::Status s = Retry("Health", RetryPolicy::None(), [&](grpc::ClientContext* context) {
    return FromGrpcStatus(health_->stub->Check(context, request, &response), context);
  });
  if (!s.ok()) return s;
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

}  // namespace client
}  // namespace optd
