// File: proto_convert.h
//
// Conversions between optd.v1 messages and the domain types of server/session and server/optim.
// Decoding validates what the types cannot express (a required field, an unknown enum value, a
// missing oneof) and returns InvalidArgument naming the field with its full path, e.g.
// "config.optimizer.sgd.lr is required". Range checks are the optimizers' own Validate().
//
// Only server/service uses this file. Pure functions, thread-safe. The conversions of steps
// (step_convert.h) and of optimizer state (state_convert.h) are in files of their own, included
// here.

#ifndef OPTD_SERVER_SERVICE_PROTO_CONVERT_H_
#define OPTD_SERVER_SERVICE_PROTO_CONVERT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "optd/v1/optd.pb.h"
#include "server/service/placement_convert.h"
#include "server/service/param_group_convert.h"
#include "server/service/state_convert.h"
#include "server/service/step_convert.h"
#include "server/session/session.h"
#include "server/session/step.h"
#include "wire/tensor_bytes.h"
#include "wire/wire_tensor.h"

namespace optd {

// A tensor of a request whose data protobuf did not parse: its other fields (`fields`, whose data
// is empty) and its data (borrowed from the transport's buffers, or owned).
struct TensorMessage {
  v1::Tensor fields;
  TensorBytes data;
};

// InvalidArgument for an unknown dtype value, naming `field`.
absl::StatusOr<WireDType> DTypeFromProto(const char* field, int dtype);

// Views of the tensors of a request; they borrow from `tensors`. Fails on an unknown dtype.
absl::StatusOr<std::vector<WireTensorView>> ViewsOf(
    const char* field, const google::protobuf::RepeatedPtrField<v1::Tensor>& tensors);
absl::StatusOr<std::vector<WireTensorView>> ViewsOf(const char* field,
                                                    const std::vector<TensorMessage>& tensors);

// `tensor`'s fields but its data.
void TensorFieldsToProto(const WireTensor& tensor, v1::Tensor* out);

// `tensor` whole: its bytes are moved into `*out` (encoded, so copied, if the session shares them).
void TensorToProto(WireTensor&& tensor, v1::Tensor* out);

// Fails if no optimizer is set, a required field is missing, an enum value is unknown, or a value
// is out of range.
absl::StatusOr<SessionConfig> ConfigFromProto(const v1::SessionConfig& config);

// Merges the fields `config` sets over `*options` and validates the result; with
// `require_same_kind`, a different optimizer kind is refused. `*options` changes only on success.
// `prefix` is where the message sits in its request, for error messages ("config." in a
// CreateSessionRequest, "" in an UpdateSessionRequest).
absl::Status MergeOptimizerFromProto(const v1::OptimizerConfig& config, bool require_same_kind,
                                     const std::string& prefix, OptimizerOptions* options);

// An unset schedule is the constant schedule. `prefix` as above.
absl::StatusOr<ScheduleOptions> ScheduleFromProto(const v1::LrSchedule& schedule,
                                                  const std::string& prefix);
absl::StatusOr<ClipOptions> ClippingFromProto(const v1::Clipping& clipping,
                                              const std::string& prefix);

// Writes `config` with every field set (the defaults in force made explicit).
void ConfigToProto(const SessionConfig& config, v1::SessionConfig* out);

void SessionInfoToProto(const SessionInfo& info, v1::Session* out);

}  // namespace optd

#endif  // OPTD_SERVER_SERVICE_PROTO_CONVERT_H_
