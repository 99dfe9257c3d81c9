// File: gradient.h
//
// Gradient: one tensor's gradient as the session applies it, decoded from a request's wire bytes
// (DecodeGradients): dense, or row-sparse with sorted unique rows (repeated rows summed in the
// order they came), or absent (none sent: a partial step). Decoding validates the request against
// the session's tensors (each tensor at most once and at least one, by name, with its shape; rows
// in range; every value finite) and measures each
// dense gradient's squared norm in the same pass that checks it is finite.
//
// A dense F32 gradient that arrives in one piece is read in place (borrowed from the request's
// bytes: no copy); one in several pieces, or in BF16/F16, is gathered and decoded block by block
// (on the pool when large), each block measured while in cache. Own() copies borrowed values
// before anything writes them or keeps them past the request (clipping, scaling, a SYNC barrier).
//
// Who calls it: Session::Step, outside the session's lock (tensor names and shapes never change).
// Plain data and pure functions: thread-compatible.
//
// Errors: InvalidArgument naming the field (gradients[i]...), a short prefix of the bad value and
// the valid range; the refusal reason says whether a value was non-finite.

#ifndef OPTD_SERVER_SESSION_GRADIENT_H_
#define OPTD_SERVER_SESSION_GRADIENT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/session/session_observer.h"
#include "server/session/tensor_spec.h"
#include "wire/wire_tensor.h"

namespace optd {

class Gradient {
 public:
  bool sparse() const { return sparse_; }
  // No gradient was sent for the tensor (a partial step; torch: its .grad is None): the optimizer
  // skips it (TensorGrad::absent). values() is empty.
  bool absent() const { return absent_; }
  // Row-sparse only: sorted, unique.
  const std::vector<int64_t>& rows() const { return rows_; }

  // Dense: every element. Row-sparse: rows().size() * row size values, row by row.
  absl::Span<const float> values() const {
    return borrowed_ ? borrowed_values_ : absl::MakeConstSpan(owned_);
  }

  // SquaredNorm(values()) when it is known (measured while decoding); forgotten by Own().
  std::optional<double> squares() const { return squares_; }

  // The values as a vector of their own, for the caller to write or keep (a borrowed view is
  // copied first).
  std::vector<float>& Own();

  // Makes the values outlive the request they were decoded from, for a caller that keeps them
  // (a SYNC barrier): copies them only if they are read in place from the request's bytes.
  void Detach() {
    if (borrowed_ && buffer_ == nullptr) Own();
  }

  // The bytes the values (and rows) take.
  int64_t bytes() const {
    return static_cast<int64_t>(values().size() * sizeof(float) + rows_.size() * sizeof(int64_t));
  }

  // A dense gradient with `values`.
  static Gradient Dense(std::vector<float> values);
  // A row-sparse gradient of `rows` (sorted, unique) with rows.size() * row size `values`.
  static Gradient Sparse(std::vector<int64_t> rows, std::vector<float> values);

  // The dense form for a tensor of `spec`: rows not sent are zero.
  std::vector<float> Densify(const TensorSpec& spec) &&;

 private:
  friend absl::StatusOr<std::vector<Gradient>> DecodeGradients(const TensorSpecs&,
                                                               absl::string_view,
                                                               absl::Span<const WireTensorView>,
                                                               RefusalReason*);

  void Borrow(absl::Span<const float> values) {
    borrowed_values_ = values;
    borrowed_ = true;
  }
  // A buffer of `n` values to fill (a decoded gradient), held as a borrowed view is: no zero-fill
  // first, as a vector would do.
  absl::Span<float> Allocate(size_t n);

  bool sparse_ = false;
  bool absent_ = false;
  std::vector<int64_t> rows_;
  std::optional<double> squares_;
  std::unique_ptr<float[]> buffer_;  // what Allocate() lent, if anything
  std::vector<float> owned_;
  absl::Span<const float> borrowed_values_;
  bool borrowed_ = false;
};

// An upper bound of the bytes DecodeGradients allocates for `gradients` (BF16/F16 decoded to
// float32, F32 gathered from several pieces, row-sparse values): what a caller reserves from the
// memory budget first. Gradients it will refuse count 0.
int64_t DecodeBytes(const TensorSpecs& specs, absl::Span<const WireTensorView> gradients);

// Decodes `gradients` into one Gradient per tensor of `specs`, in creation order; a tensor with no
// entry is absent() (a partial step), but at least one must have one. The dense ones may borrow
// the gradients' bytes, which must outlive them. On failure sets `*reason` (kInvalid or
// kNonFinite). `session_id` is for messages only.
absl::StatusOr<std::vector<Gradient>> DecodeGradients(const TensorSpecs& specs,
                                                      absl::string_view session_id,
                                                      absl::Span<const WireTensorView> gradients,
                                                      RefusalReason* reason);

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_GRADIENT_H_
