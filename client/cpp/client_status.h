// File: client_status.h
//
// Internal to the C++ client (client.cc, step_stream.cc): step replies decoded, and gRPC statuses
// and stream StepErrors as absl::Status, with the details optd sends besides code and message
// carried as payloads (the current version of an ABORTED step, the rejoin flag of a
// FAILED_PRECONDITION one, the answering server's incarnation), which CurrentVersion, NeedsRejoin
// and ServerIncarnation (client.h) read.

#ifndef OPTD_CLIENT_CPP_CLIENT_STATUS_H_
#define OPTD_CLIENT_CPP_CLIENT_STATUS_H_

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/cpp/client.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/status.h"
#include "optd/v1/optd.pb.h"

namespace optd {
namespace client {

// `tensors` of a reply as HostTensors; Internal ("malformed reply") for one that does not decode.
absl::StatusOr<std::vector<HostTensor>> DecodeReplyTensors(
    const google::protobuf::RepeatedPtrField<v1::Tensor>& tensors);

// The StepResult of `response` to `request` (sent `attempts` times); Internal for tensors that do
// not decode.
absl::StatusOr<StepResult> DecodeStepResponse(const v1::StepResponse& response,
                                              const v1::StepRequest& request, int attempts);

// The one conversion from gRPC to absl: the codes are the same canonical set, so the number and
// the message carry over unchanged. The current version of an ABORTED reply, the rejoin flag of a
// FAILED_PRECONDITION one and the server's incarnation come along from `context`'s trailing
// metadata (if not null).
absl::Status FromGrpcStatus(const grpc::Status& status, const grpc::ClientContext* context);

// The status of a StepError embedded in a stream reply; an out-of-range code becomes Unknown.
absl::Status FromStepError(const v1::StepError& error);

// `status` with `note` appended to its message; code and payloads kept.
absl::Status Annotate(const absl::Status& status, absl::string_view note);

}  // namespace client
}  // namespace optd

#endif  // OPTD_CLIENT_CPP_CLIENT_STATUS_H_
