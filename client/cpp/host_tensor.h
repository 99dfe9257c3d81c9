// File: host_tensor.h
//
// HostTensor: a named float32 tensor in the caller's memory, dense or row-sparse, and its
// conversions to and from the wire message optd.v1.Tensor. The wire encodings themselves (F32,
// BF16, F16, little-endian, round to nearest even) are wire/wire_dtype.h's; this file only adds the
// protobuf message around them.
//
// Who may call it: any C++ code talking to optd (the Client in client.h uses it for every tensor
// it sends or receives; optctl uses it too).
//
// Thread safety: plain data and pure functions; thread-compatible.
//
// Errors: InvalidArgument for a tensor whose values do not match its shape (and rows), a negative
// dimension, a row index outside [0, shape[0]), a row-sparse scalar, an unknown dtype, or wire
// bytes of the wrong length. Nothing is partially converted: on error the output is not produced.

#ifndef OPTD_CLIENT_CPP_HOST_TENSOR_H_
#define OPTD_CLIENT_CPP_HOST_TENSOR_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "optd/v1/optd.pb.h"

namespace optd {
namespace client {

// A float32 tensor of `shape`, in row-major (C) order.
//
// Dense (`rows` unset): `values` holds product(shape) elements. A scalar has an empty shape and
// one value.
//
// Row-sparse (`rows` set, rank >= 1): the tensor carries only the rows `*rows` of a tensor of
// `shape`: `values` holds rows->size() rows of row_size() elements each, in the order of the
// indices. In a gradient, repeated indices are summed by the server. Row-sparse tensors come back
// from a Pull with PullOptions::rows and from a step with RETURN_PARAMETERS_TOUCHED.
struct HostTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
  std::optional<std::vector<int64_t>> rows = std::nullopt;

  // product(shape): 1 for a scalar. Only meaningful when every dimension is >= 0.
  int64_t num_elements() const;
  // product(shape[1:]): the elements of one row (1 for a vector, 0 for a scalar).
  int64_t row_size() const;
  bool row_sparse() const { return rows.has_value(); }
};

// A row-sparse tensor: rows `rows` of a tensor of `shape`, `values` row after row.
HostTensor RowSparse(std::string name, std::vector<int64_t> shape, std::vector<int64_t> rows,
                     std::vector<float> values);

// Encodes `tensor` as a v1::Tensor whose data is `dtype` (F32 is exact; BF16 and F16 round to
// nearest even); a row-sparse tensor carries its indices in Tensor.rows. InvalidArgument if a
// dimension is negative, the values do not match the shape (and rows), a row index is outside
// [0, shape[0]), a row-sparse tensor is a scalar, or `dtype` is not a known v1::DType.
absl::StatusOr<v1::Tensor> HostTensorToProto(const HostTensor& tensor,
                                             v1::DType dtype = v1::DTYPE_F32);

// Decodes a v1::Tensor in any dtype, dense or row-sparse, into float32 values. InvalidArgument if
// a dimension is negative, the dtype is unknown, a row index is out of range, or data is not
// exactly (number of elements) * sizeof(dtype) bytes.
absl::StatusOr<HostTensor> HostTensorFromProto(const v1::Tensor& tensor);

}  // namespace client
}  // namespace optd

#endif  // OPTD_CLIENT_CPP_HOST_TENSOR_H_
