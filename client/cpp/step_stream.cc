// StepStream (client.h): one StreamSteps call, one request and one reply per step.

#include <utility>

#include "client/cpp/client.h"
#include "client/cpp/client_status.h"

namespace optd {
namespace client {

StepStream::StepStream(const Client* client, absl::Duration lifetime)
    : security_(&client->security_) {
  client->Prepare(&context_, lifetime);
  stream_ = client->stub_->StreamSteps(&context_);
}

StepStream::~StepStream() {
  if (!final_status_.has_value()) {
    context_.TryCancel();
    Finish().IgnoreError();
  }
}

absl::Status StepStream::Finish() {
  if (!final_status_.has_value()) {
    final_status_ = security_->Explain(FromGrpcStatus(stream_->Finish(), nullptr), "StreamSteps");
  }
  return *final_status_;
}

absl::StatusOr<StepResult> StepStream::Step(absl::string_view session_id,
                                            const std::vector<HostTensor>& gradients,
                                            const StepOptions& options) {
  absl::StatusOr<v1::StepRequest> request = MakeStepRequest(session_id, gradients, options);
  if (!request.ok()) return request.status();
  return Send(*request);
}

absl::StatusOr<StepResult> StepStream::Send(const v1::StepRequest& request) {
  if (finished()) {
    absl::Status s = final_status_.value_or(absl::OkStatus());
    if (s.ok()) s = absl::FailedPreconditionError("the StepStream is closed");
    return s;
  }
  v1::StreamStepsResponse response;
  if (!stream_->Write(request) || !stream_->Read(&response)) {
    // The call is over; its status says why (a stream that ended cleanly without answering is a
    // server fault).
    absl::Status s = Finish();
    if (s.ok()) {
      final_status_ = absl::InternalError("the server ended the StreamSteps call without a reply");
      return *final_status_;
    }
    return s;
  }
  switch (response.result_case()) {
    case v1::StreamStepsResponse::kReply:
      return DecodeStepResponse(response.reply(), request, 1);
    case v1::StreamStepsResponse::kError:
      return security_->Explain(FromStepError(response.error()), "StreamSteps (Step)");
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

}  // namespace client
}  // namespace optd
