// File: wire_tensor.h
//
// Tensors as they cross the wire, in domain types (no protobuf): a name, a shape, an encoding and
// the raw little-endian bytes. WireTensorView borrows the bytes of an incoming request;
// WireTensor owns the bytes of an outgoing reply, ready to be moved into a message.
//
// The element encodings themselves live in wire/wire_dtype.h. Plain data: thread-compatible.

#ifndef OPTD_SERVER_SESSION_WIRE_TENSOR_H_
#define OPTD_SERVER_SESSION_WIRE_TENSOR_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/types/span.h"
#include "wire/wire_dtype.h"

namespace optd {

// A tensor in an incoming request. Borrows everything: valid only while the request is.
struct WireTensorView {
  absl::string_view name;
  absl::Span<const int64_t> shape;
  WireDType dtype = WireDType::kF32;
  absl::string_view data;
  // Row-sparse: `data` holds rows.size() rows of the tensor of `shape`, in the order of `rows`.
  bool has_rows = false;
  absl::Span<const int64_t> rows;
};

// A tensor in an outgoing reply.
struct WireTensor {
  std::string name;
  std::vector<int64_t> shape;
  WireDType dtype = WireDType::kF32;
  std::string data;
  bool has_rows = false;       // row-sparse: `data` holds only `rows`
  std::vector<int64_t> rows;
};

// Rows of one tensor to read (Pull).
struct RowSelection {
  absl::string_view name;
  absl::Span<const int64_t> rows;
};

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_WIRE_TENSOR_H_
