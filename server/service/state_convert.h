// File: state_convert.h
//
// Conversions of an optimizer's state (server/optim's OptimizerState) to and from optd.v1's
// OptimizerState, for Pull and UpdateSession.
//
// Only server/service uses this file. Pure functions, thread-safe.

#ifndef OPTD_SERVER_SERVICE_STATE_CONVERT_H_
#define OPTD_SERVER_SERVICE_STATE_CONVERT_H_

#include <vector>

#include "absl/status/statusor.h"
#include "optd/v1/optd.pb.h"
#include "server/optim/optimizer_state.h"
#include "server/session/tensor_spec.h"

namespace optd {

// An optimizer's state as the message Pull exports (arrays as F32 tensors of the tensor's shape;
// `tensors` names state.tensors, in order): an entry for every tensor, with or without state, so
// that the export imports back as it is (UpdateSession needs an entry for every tensor).
void OptimizerStateToProto(const OptimizerState& state, const std::vector<TensorSpec>& tensors,
                           v1::OptimizerState* out);

// The message UpdateSession imports, in the session's tensor order. InvalidArgument naming the
// field for an unknown, repeated or missing tensor, an array that is not F32 or has the wrong
// length.
absl::StatusOr<OptimizerState> OptimizerStateFromProto(const v1::OptimizerState& message,
                                                       const std::vector<TensorSpec>& tensors);

}  // namespace optd

#endif  // OPTD_SERVER_SERVICE_STATE_CONVERT_H_
