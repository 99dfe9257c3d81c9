// File: host_tensor.h
//
// HostTensor: a named float32 tensor in the caller's memory, and its conversions to and from the
// wire message optd.v1.Tensor. The wire encodings themselves (F32, BF16, F16, little-endian, round
// to nearest even) are wire/wire_dtype.h's; this file only adds the protobuf message around them.
//
// Who may call it: any C++ code talking to optd (the Client in client.h uses it for every tensor
// it sends or receives; optctl uses it too).
//
// Thread safety: plain data and pure functions; thread-compatible.
//
// Errors: InvalidArgument for a tensor whose values do not match its shape, a negative dimension,
// an unknown dtype, or wire bytes of the wrong length. Nothing is partially converted: on error
// the output is not produced.

#ifndef OPTD_CLIENT_CPP_HOST_TENSOR_H_
#define OPTD_CLIENT_CPP_HOST_TENSOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "optd/v1/optd.pb.h"

namespace optd {

// A dense float32 tensor: `values` holds product(shape) elements in row-major (C) order. A scalar
// has an empty shape and one value.
struct HostTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;

  // product(shape): 1 for a scalar. Only meaningful when every dimension is >= 0.
  int64_t num_elements() const;
};

// Encodes `tensor` as a v1::Tensor whose data is `dtype` (F32 is exact; BF16 and F16 round to
// nearest even). InvalidArgument if a dimension is negative, values.size() != product(shape), or
// `dtype` is not a known v1::DType.
absl::StatusOr<v1::Tensor> HostTensorToProto(const HostTensor& tensor,
                                             v1::DType dtype = v1::DTYPE_F32);

// Decodes a v1::Tensor in any dtype into float32 values. InvalidArgument if a dimension is
// negative, the dtype is unknown, or data is not exactly product(shape) * sizeof(dtype) bytes.
absl::StatusOr<HostTensor> HostTensorFromProto(const v1::Tensor& tensor);

}  // namespace optd

#endif  // OPTD_CLIENT_CPP_HOST_TENSOR_H_
