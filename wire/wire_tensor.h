// File: wire_tensor.h
//
// Tensors as they cross the wire, in domain types (no protobuf, no gRPC): a name, a shape, an
// encoding (wire_dtype.h) and the encoded elements (TensorBytes, tensor_bytes.h), whole or as
// rows of a row-sparse tensor.
//
//   WireTensorView  a tensor in an incoming request: borrows its name, shape, rows and bytes,
//                   which stay valid only while the request does.
//   WireTensor      a tensor in an outgoing reply: owns its name, shape and rows; its bytes are
//                   owned (rows gathered for the reply) or the session's shared values.
//
// Used by server/session (Create, Step, Pull), server/service (which converts them to and from
// the protobuf messages and gRPC's buffers) and the C++ client. Plain data: thread-compatible.

#ifndef OPTD_WIRE_WIRE_TENSOR_H_
#define OPTD_WIRE_WIRE_TENSOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "wire/tensor_bytes.h"
#include "wire/wire_dtype.h"

namespace optd {

// A tensor in an incoming request. Borrows everything.
struct WireTensorView {
  absl::string_view name;
  absl::Span<const int64_t> shape;
  WireDType dtype = WireDType::kF32;
  TensorBytes data;  // borrowed (or, in tests, owned)
  // Row-sparse: `data` holds rows.size() rows of the tensor of `shape`, in the order of `rows`.
  bool has_rows = false;
  absl::Span<const int64_t> rows;
};

// A tensor in an outgoing reply.
struct WireTensor {
  std::string name;
  std::vector<int64_t> shape;
  WireDType dtype = WireDType::kF32;
  TensorBytes data;  // owned, or shared values encoded as `dtype` when written
  // Row-sparse: `data` holds only `rows`.
  bool has_rows = false;
  std::vector<int64_t> rows;
};

// An upper bound of the bytes one tensor takes in a message, its own key and length prefix
// included: its data, its name, a varint per dimension and per row index, and room for every key
// and length prefix. A server refuses a reply whose bound exceeds its message limit before it
// builds it.
inline int64_t TensorMessageBound(int64_t name_bytes, int64_t rank, int64_t num_rows,
                                  int64_t data_bytes) {
  constexpr int64_t kVarint = 10;  // the longest varint
  constexpr int64_t kFixed = 128;  // keys and length prefixes of the tensor and its fields
  return data_bytes + name_bytes + kVarint * (rank + num_rows) + kFixed;
}

}  // namespace optd

#endif  // OPTD_WIRE_WIRE_TENSOR_H_
