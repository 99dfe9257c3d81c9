// File: wire_tensor.h
//
// Tensors as they cross the wire, in domain types (no protobuf): a name, a shape, an encoding and
// the raw little-endian bytes. WireTensorView borrows the bytes of an incoming request;
// WireTensor owns the bytes of an outgoing reply, ready to be moved into a message, or, for a
// whole tensor, shares the session's own parameter buffer instead of copying it.
//
// The element encodings themselves live in wire/wire_dtype.h. Plain data: thread-compatible.

#ifndef OPTD_SERVER_SESSION_WIRE_TENSOR_H_
#define OPTD_SERVER_SESSION_WIRE_TENSOR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "wire/wire_dtype.h"

namespace optd {

// A tensor in an incoming request. Borrows everything: valid only while the request is.
struct WireTensorView {
  absl::string_view name;
  absl::Span<const int64_t> shape;
  WireDType dtype = WireDType::kF32;
  absl::string_view data;
  // Dense tensors only: when not empty, the bytes are these pieces laid end to end (a request's
  // bytes where gRPC received them, never copied into one buffer) and `data` is empty.
  absl::Span<const absl::string_view> pieces;
  // Row-sparse: `data` holds rows.size() rows of the tensor of `shape`, in the order of `rows`.
  bool has_rows = false;
  absl::Span<const int64_t> rows;

  // The number of bytes, in `data` or in `pieces`.
  int64_t size() const {
    int64_t n = static_cast<int64_t>(data.size());
    for (const absl::string_view piece : pieces) n += static_cast<int64_t>(piece.size());
    return n;
  }
};

// Float32 values shared rather than copied: a session's parameter buffer, which the session never
// writes again while any such reference to it lives (it copies the buffer first: copy on write).
// So the values stay those of the version they were returned at, and may be read without a lock.
using SharedFloats = std::shared_ptr<const std::vector<float>>;

// A tensor in an outgoing reply. A whole tensor shares the session's values (`shared`), encoded
// as `dtype` only when the reply is written (F32: not even then, the bytes are the floats); rows
// (Pull and touched-rows replies) are encoded into `data`.
struct WireTensor {
  std::string name;
  std::vector<int64_t> shape;
  WireDType dtype = WireDType::kF32;
  std::string data;       // the encoded elements, unless `shared` holds the values
  SharedFloats shared;    // if set: the values, and `data` is empty
  bool has_rows = false;  // row-sparse: `data` holds only `rows`
  std::vector<int64_t> rows;

  // The size of the encoded elements.
  int64_t EncodedSize() const {
    return shared ? static_cast<int64_t>(shared->size()) * BytesPerElement(dtype)
                  : static_cast<int64_t>(data.size());
  }
  // The encoded elements (a copy).
  std::string EncodedData() const {
    if (!shared) return data;
    std::string bytes;
    EncodeFloats(dtype, *shared, &bytes);
    return bytes;
  }
};

// Rows of one tensor to read (Pull).
struct RowSelection {
  absl::string_view name;
  absl::Span<const int64_t> rows;
};

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_WIRE_TENSOR_H_
