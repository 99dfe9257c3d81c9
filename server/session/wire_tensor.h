// File: wire_tensor.h
//
// Tensors as they cross the wire, in domain types (no protobuf): a name, a shape, an encoding and
// the raw little-endian bytes. WireTensorView borrows the bytes of an incoming request;
// WireTensor owns the bytes of an outgoing reply, ready to be moved into a message, or, for a
// whole tensor in F32, shares the session's own parameter buffer instead of copying it.
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
  // Row-sparse: `data` holds rows.size() rows of the tensor of `shape`, in the order of `rows`.
  bool has_rows = false;
  absl::Span<const int64_t> rows;
};

// Float32 values shared rather than copied: a session's parameter buffer, which the session never
// writes again while any such reference to it lives (it copies the buffer first: copy on write).
// So the values stay those of the version they were returned at, and may be read without a lock.
using SharedFloats = std::shared_ptr<const std::vector<float>>;

// A tensor in an outgoing reply.
struct WireTensor {
  std::string name;
  std::vector<int64_t> shape;
  WireDType dtype = WireDType::kF32;
  std::string data;       // the encoded elements, unless `shared` holds them
  SharedFloats shared;    // if set (dtype F32, whole tensor): the elements, and `data` is empty
  bool has_rows = false;  // row-sparse: `data` holds only `rows`
  std::vector<int64_t> rows;

  // The encoded elements, wherever they are.
  absl::string_view bytes() const {
    return shared ? absl::string_view(reinterpret_cast<const char*>(shared->data()),
                                      shared->size() * sizeof(float))
                  : absl::string_view(data);
  }
};

// Rows of one tensor to read (Pull).
struct RowSelection {
  absl::string_view name;
  absl::Span<const int64_t> rows;
};

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_WIRE_TENSOR_H_
