#include "client/cpp/client.h"

#include <climits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace optd {
namespace {

// The one conversion from gRPC to absl: the codes are the same canonical set, so the number and
// the message carry over unchanged.
absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// The code of a StepError embedded in a stream reply; an out-of-range number becomes Unknown.
absl::Status FromStepError(const v1::StepError& error) {
  const int code = error.code();
  if (code <= 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::UnknownError(absl::StrCat("StepError with code ", code, ": ", error.message()));
  }
  return absl::Status(static_cast<absl::StatusCode>(code), error.message());
}

void SetDeadline(grpc::ClientContext* context, absl::Duration timeout) {
  if (timeout != absl::InfiniteDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
}

absl::StatusOr<std::vector<HostTensor>> DecodeReplyTensors(
    const google::protobuf::RepeatedPtrField<v1::Tensor>& tensors) {
  std::vector<HostTensor> out;
  out.reserve(tensors.size());
  for (const v1::Tensor& t : tensors) {
    absl::StatusOr<HostTensor> decoded = HostTensorFromProto(t);
    if (!decoded.ok()) {
      return absl::InternalError(
          absl::StrCat("malformed reply from the server: ", decoded.status().message()));
    }
    out.push_back(*std::move(decoded));
  }
  return out;
}

absl::StatusOr<v1::StepRequest> MakeStepRequest(absl::string_view session_id,
                                                const std::vector<HostTensor>& gradients,
                                                const StepOptions& options) {
  v1::StepRequest request;
  request.set_session_id(std::string(session_id));
  request.set_worker_id(options.worker_id);
  for (const HostTensor& g : gradients) {
    absl::StatusOr<v1::Tensor> t = HostTensorToProto(g, options.gradient_dtype);
    if (!t.ok()) return t.status();
    *request.add_gradients() = *std::move(t);
  }
  if (options.loss.has_value()) request.set_loss(*options.loss);
  request.set_return_parameters(options.return_parameters ? v1::RETURN_PARAMETERS_ALL
                                                          : v1::RETURN_PARAMETERS_NONE);
  request.set_return_dtype(options.return_dtype);
  return request;
}

absl::StatusOr<StepResult> DecodeStepResponse(const v1::StepResponse& response) {
  StepResult result;
  result.version = response.version();
  result.gradient_norm = response.gradient_norm();
  result.learning_rate = response.learning_rate();
  absl::StatusOr<std::vector<HostTensor>> parameters = DecodeReplyTensors(response.parameters());
  if (!parameters.ok()) return parameters.status();
  result.parameters = *std::move(parameters);
  return result;
}

}  // namespace

struct Client::HealthStub {
  explicit HealthStub(const std::shared_ptr<grpc::Channel>& channel)
      : stub(grpc::health::v1::Health::NewStub(channel)) {}
  std::unique_ptr<grpc::health::v1::Health::Stub> stub;
};

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(std::string address,
                                                        ClientOptions options) {
  if (address.empty()) return absl::InvalidArgumentError("server address is empty");
  if (options.max_message_bytes < 1 || options.max_message_bytes > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_message_bytes is ", options.max_message_bytes, "; must be in [1, ", INT_MAX, "]"));
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("timeout is ", absl::FormatDuration(options.timeout), "; must be > 0"));
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot make a channel to '", address, "'"));
  }
  return std::make_unique<Client>(std::move(channel), options);
}

Client::Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
    : options_(options),
      channel_(std::move(channel)),
      stub_(v1::Optimizer::NewStub(channel_)),
      health_(std::make_unique<HealthStub>(channel_)) {}

Client::~Client() = default;

void Client::Prepare(grpc::ClientContext* context) const {
  SetDeadline(context, options_.timeout);
  context->set_wait_for_ready(options_.wait_for_ready);
}

absl::StatusOr<v1::Session> Client::CreateSession(const v1::CreateSessionRequest& request) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::Session session;
  absl::Status s = FromGrpcStatus(stub_->CreateSession(&context, request, &session));
  if (!s.ok()) return s;
  return session;
}

absl::StatusOr<v1::Session> Client::CreateSession(std::string session_id,
                                                  const v1::SessionConfig& config,
                                                  const std::vector<HostTensor>& tensors) {
  v1::CreateSessionRequest request;
  request.set_session_id(std::move(session_id));
  *request.mutable_config() = config;
  for (const HostTensor& tensor : tensors) {
    absl::StatusOr<v1::Tensor> t = HostTensorToProto(tensor);
    if (!t.ok()) return t.status();
    *request.add_tensors() = *std::move(t);
  }
  return CreateSession(request);
}

absl::StatusOr<v1::Session> Client::GetSession(absl::string_view session_id) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::GetSessionRequest request;
  request.set_session_id(std::string(session_id));
  v1::Session session;
  absl::Status s = FromGrpcStatus(stub_->GetSession(&context, request, &session));
  if (!s.ok()) return s;
  return session;
}

absl::StatusOr<std::vector<v1::Session>> Client::ListSessions(int32_t page_size) {
  std::vector<v1::Session> sessions;
  v1::ListSessionsRequest request;
  request.set_page_size(page_size);
  while (true) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::ListSessionsResponse response;
    absl::Status s = FromGrpcStatus(stub_->ListSessions(&context, request, &response));
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

absl::Status Client::DeleteSession(absl::string_view session_id) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::DeleteSessionRequest request;
  request.set_session_id(std::string(session_id));
  v1::DeleteSessionResponse response;
  return FromGrpcStatus(stub_->DeleteSession(&context, request, &response));
}

absl::StatusOr<PullResult> Client::Pull(absl::string_view session_id,
                                        const std::vector<std::string>& names, v1::DType dtype) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::PullRequest request;
  request.set_session_id(std::string(session_id));
  for (const std::string& name : names) request.add_names(name);
  request.set_dtype(dtype);
  v1::PullResponse response;
  absl::Status s = FromGrpcStatus(stub_->Pull(&context, request, &response));
  if (!s.ok()) return s;
  PullResult result;
  result.version = response.version();
  absl::StatusOr<std::vector<HostTensor>> tensors = DecodeReplyTensors(response.tensors());
  if (!tensors.ok()) return tensors.status();
  result.tensors = *std::move(tensors);
  return result;
}

absl::StatusOr<StepResult> Client::Step(absl::string_view session_id,
                                        const std::vector<HostTensor>& gradients,
                                        const StepOptions& options) {
  absl::StatusOr<v1::StepRequest> request = MakeStepRequest(session_id, gradients, options);
  if (!request.ok()) return request.status();
  grpc::ClientContext context;
  Prepare(&context);
  v1::StepResponse response;
  absl::Status s = FromGrpcStatus(stub_->Step(&context, *request, &response));
  if (!s.ok()) return s;
  return DecodeStepResponse(response);
}

std::unique_ptr<StepStream> Client::StreamSteps(absl::Duration lifetime) {
  if (lifetime == absl::ZeroDuration()) lifetime = options_.timeout;
  return std::unique_ptr<StepStream>(
      new StepStream(stub_.get(), lifetime, options_.wait_for_ready));
}

absl::StatusOr<bool> Client::Health(const std::string& service) {
  grpc::ClientContext context;
  Prepare(&context);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  absl::Status s = FromGrpcStatus(health_->stub->Check(&context, request, &response));
  if (!s.ok()) return s;
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

// ---------------------------------------------------------------------------------------------------
// StepStream

StepStream::StepStream(v1::Optimizer::Stub* stub, absl::Duration lifetime, bool wait_for_ready) {
  SetDeadline(&context_, lifetime);
  context_.set_wait_for_ready(wait_for_ready);
  stream_ = stub->StreamSteps(&context_);
}

StepStream::~StepStream() {
  if (!final_status_.has_value()) {
    context_.TryCancel();
    Finish().IgnoreError();
  }
}

absl::Status StepStream::Finish() {
  if (!final_status_.has_value()) final_status_ = FromGrpcStatus(stream_->Finish());
  return *final_status_;
}

absl::StatusOr<StepResult> StepStream::Step(absl::string_view session_id,
                                            const std::vector<HostTensor>& gradients,
                                            const StepOptions& options) {
  if (final_status_.has_value() || writes_done_) {
    absl::Status s = final_status_.value_or(absl::OkStatus());
    if (s.ok()) s = absl::FailedPreconditionError("the StepStream is closed");
    return s;
  }
  absl::StatusOr<v1::StepRequest> request = MakeStepRequest(session_id, gradients, options);
  if (!request.ok()) return request.status();

  v1::StreamStepsResponse response;
  if (!stream_->Write(*request) || !stream_->Read(&response)) {
    // The call is over; its status says why (a stream that ended cleanly without answering is a
    // server fault).
    absl::Status s = Finish();
    if (s.ok()) {
      return absl::InternalError("the server ended the StreamSteps call without a reply");
    }
    return s;
  }
  switch (response.result_case()) {
    case v1::StreamStepsResponse::kReply:
      return DecodeStepResponse(response.reply());
    case v1::StreamStepsResponse::kError:
      return FromStepError(response.error());
    default:
      return absl::InternalError("malformed reply from the server: empty StreamStepsResponse");
  }
}

absl::Status StepStream::Close() {
  if (final_status_.has_value()) return *final_status_;
  if (!writes_done_) {
    writes_done_ = true;
    stream_->WritesDone();
  }
  // The server owes no replies (every Step read its own), so anything left is a protocol error;
  // read to the end so that Finish can return.
  v1::StreamStepsResponse extra;
  bool unexpected = false;
  while (stream_->Read(&extra)) unexpected = true;
  absl::Status s = Finish();
  if (s.ok() && unexpected) {
    final_status_ = absl::InternalError("the server sent a StreamSteps reply nobody asked for");
    return *final_status_;
  }
  return s;
}

}  // namespace optd
