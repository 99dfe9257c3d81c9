// File: step_codec.h
//
// The conversions of the Python client's native data path (the optd._native extension): a step's
// gradients encoded straight from the caller's float32 buffers into a v1::StepRequest, and a
// reply tensor decoded straight into a caller's buffer. Both are wire/wire_dtype.h's encodings, so
// the bytes are the ones the pure-Python path (optd/tensors.py) produces and reads. No Python API
// here: module.cc holds the bindings and owns the buffers.
//
// Thread safety: pure functions over caller-owned memory; call them without the GIL.
//
// Errors: InvalidArgument for a view whose values do not match its shape, an unknown dtype, or a
// reply tensor whose bytes do not match its shape (and rows).

#ifndef OPTD_CLIENT_PYTHON_NATIVE_STEP_CODEC_H_
#define OPTD_CLIENT_PYTHON_NATIVE_STEP_CODEC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "optd/v1/optd.pb.h"

namespace optd {
namespace python {

// A dense float32 gradient in the caller's memory, row-major.
struct GradientView {
  std::string name;
  std::vector<int64_t> shape;
  absl::Span<const float> values;  // product(shape) elements
};

// Appends one v1::Tensor per view to request->gradients, its data encoded as `dtype` (F32: one
// copy; BF16 and F16 rounded to nearest even). Nothing is appended on error.
absl::Status AddGradients(const std::vector<GradientView>& gradients, v1::DType dtype,
                          v1::StepRequest* request);

// The float32 elements a reply tensor decodes to: product(shape), or rows * product(shape[1:])
// when it carries rows. InvalidArgument for a negative dimension or an unknown dtype.
absl::StatusOr<int64_t> DecodedElements(const v1::Tensor& tensor);

// Decodes `tensor`'s data into `out`, whose size must be DecodedElements(tensor).
absl::Status DecodeInto(const v1::Tensor& tensor, absl::Span<float> out);

}  // namespace python
}  // namespace optd

#endif  // OPTD_CLIENT_PYTHON_NATIVE_STEP_CODEC_H_
