// File: step_convert.h
//
// Conversions of a Step between optd.v1 and server/session: the request's fields (not the
// gradients), the point of the model a reply carries, and the reply's fields (not the parameters).
//
// Only server/service uses this file. Pure functions, thread-safe.

#ifndef OPTD_SERVER_SERVICE_STEP_CONVERT_H_
#define OPTD_SERVER_SERVICE_STEP_CONVERT_H_

#include <string>

#include "absl/status/statusor.h"
#include "optd/v1/optd.pb.h"
#include "server/session/step.h"

namespace optd {

// The StepRequest's fields but the gradients (attached by the caller), validated: return_dtype
// and return_parameters must be known values.
absl::StatusOr<StepInput> StepInputFromProto(const v1::StepRequest& request);

// A ParameterPoint enum value of `field` (e.g. "point"); InvalidArgument for an unknown one.
absl::StatusOr<ParameterPoint> PointFromProto(const std::string& field, int point);

// `output`'s fields but its parameters (which the caller writes: message_bytes.h).
void StepOutputToProto(const StepOutput& output, v1::StepResponse* out);

}  // namespace optd

#endif  // OPTD_SERVER_SERVICE_STEP_CONVERT_H_
