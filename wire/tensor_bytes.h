// File: tensor_bytes.h
//
// TensorBytes: the encoded elements of one tensor on their way into or out of optd, in whichever
// form they are at hand, so that no layer copies them only to change their type. One of:
//
//   owned    a std::string of encoded bytes that this object owns (rows gathered for a reply,
//            a request's data that protobuf parsed into a string);
//   borrowed bytes that live elsewhere, as pieces laid end to end (a request's bytes where the
//            transport received them, never gathered into one buffer; contiguous bytes are one
//            piece). The owner must keep them alive while any TensorBytes borrows them;
//   shared   float32 values shared with their owner (SharedFloats: a session's parameter buffer,
//            which the session never writes again while it is shared; see ParameterBuffers), to
//            be encoded as the tensor's dtype only when they are written out.
//
// The encoding (F32, BF16, F16) is the tensor's: WireTensor::dtype says what owned and borrowed
// bytes are in, and what shared floats are to become. The transport adapts its own buffers to
// these forms (server/service turns gRPC slices into borrowed pieces and shared floats into
// slices); nothing here knows gRPC or protobuf.
//
// Plain value, thread-compatible. Copying owned bytes copies them; copying borrowed or shared
// bytes copies only the references.

#ifndef OPTD_WIRE_TENSOR_BYTES_H_
#define OPTD_WIRE_TENSOR_BYTES_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "wire/wire_dtype.h"

namespace optd {

// Float32 values shared rather than copied (see TensorBytes: "shared"). Readable without a lock.
using SharedFloats = std::shared_ptr<const std::vector<float>>;

class TensorBytes {
 public:
  enum class Kind { kOwned, kBorrowed, kShared };

  // No bytes (owned, empty).
  TensorBytes() = default;

  static TensorBytes Owned(std::string bytes);
  // Borrows `bytes` (one piece) or `pieces` (laid end to end; empty pieces are dropped).
  static TensorBytes Borrowed(absl::string_view bytes);
  static TensorBytes Borrowed(std::vector<absl::string_view> pieces);
  // REQUIRES: values != nullptr.
  static TensorBytes Shared(SharedFloats values);

  Kind kind() const { return kind_; }

  // The number of bytes once encoded as `dtype`: owned and borrowed bytes are already encoded, so
  // their size does not depend on it; shared floats take BytesPerElement(dtype) each.
  int64_t size(WireDType dtype) const;

  // Owned and borrowed bytes: the pieces they are in, laid end to end (owned: one piece, valid
  // until this object changes or is destroyed). Shared: none.
  std::vector<absl::string_view> Pieces() const;

  // Shared: the values. Otherwise null.
  const SharedFloats& shared() const { return shared_; }

  // Owned: the string, for the caller to move from (then this holds no bytes). REQUIRES: owned.
  std::string* mutable_owned();

  // Bytes [offset, offset + size) of owned or borrowed bytes: copied to `out`, or returned as a
  // view into the piece that holds them all (gathered into `*scratch` when they span pieces).
  // REQUIRES: not shared, and the range lies within size().
  void CopyTo(int64_t offset, int64_t size, char* out) const;
  absl::string_view View(int64_t offset, int64_t size, std::string* scratch) const;

  // A TensorBytes that borrows this one's bytes (owned: as one piece) or shares its values: for a
  // view that must not copy. This object must outlive it and not change meanwhile.
  TensorBytes Borrow() const;

  // The bytes encoded as `dtype`, in one string (a copy): for small tensors and tests.
  std::string Flatten(WireDType dtype) const;

 private:
  // The piece holding byte `offset` of borrowed bytes.
  size_t PieceOf(int64_t offset) const;

  Kind kind_ = Kind::kOwned;
  std::string owned_;
  std::vector<absl::string_view> pieces_;  // borrowed
  std::vector<int64_t> starts_;            // borrowed: the offset of each piece
  int64_t borrowed_size_ = 0;
  SharedFloats shared_;
};

}  // namespace optd

#endif  // OPTD_WIRE_TENSOR_BYTES_H_
