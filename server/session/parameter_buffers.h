// File: parameter_buffers.h
//
// ParameterBuffers: a session's parameters, one float32 buffer per tensor, shared with replies
// instead of copied (copy on write). Share() hands out a SharedFloats reference to a buffer, which
// a reply (or a snapshot) reads after the session's lock is released; Writable() gives the session
// a buffer to update, first copying it if anyone still holds a shared reference. So a shared buffer
// is never written again, and its values stay those of the version they were shared at. In a
// worker loop a reply is sent, and its reference dropped, before the next step: no copy.
//
// Every buffer carries its own MemoryReservation (memory_budget.h) and is counted in live_bytes()
// until the last reference to it is dropped, so a copy made because a reply still held the old
// buffer is accounted for exactly as long as it lives.
//
// Who uses it: Session, under its lock. NOT thread-safe (the buffers handed out by Share are
// immutable and may be read from any thread).

#ifndef OPTD_SERVER_SESSION_PARAMETER_BUFFERS_H_
#define OPTD_SERVER_SESSION_PARAMETER_BUFFERS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/session/memory_budget.h"
#include "wire/tensor_bytes.h"
#include "wire/wire_dtype.h"

namespace optd {

class ParameterBuffers {
 public:
  ParameterBuffers() = default;
  // Takes `values` (one vector per tensor) with `reservation`, which must cover their bytes; the
  // budget it came from pays for later copies.
  ParameterBuffers(std::vector<std::vector<float>> values, MemoryReservation reservation,
                   MemoryBudget* budget);

  int size() const { return static_cast<int>(buffers_.size()); }

  absl::Span<const float> values(int index) const { return *buffers_[index]; }

  // Buffer `index` to write: this object's alone, copied first if a reference to it is shared
  // (adding the bytes copied to *copied_bytes). ResourceExhausted if the copy does not fit the
  // memory budget; then nothing changed.
  absl::StatusOr<absl::Span<float>> Writable(int index, int64_t* copied_bytes);

  // A reference to buffer `index` as it is now; later writes do not change what it sees.
  SharedFloats Share(int index) const { return buffers_[index]; }

  // Rows `rows` (of `row_size` elements each) of buffer `index`, gathered and encoded as `dtype`.
  // REQUIRES: every row in range.
  std::string EncodeRows(int index, absl::Span<const int64_t> rows, int64_t row_size,
                         WireDType dtype) const;

  // Bytes of every buffer still alive: the current ones and older ones replies still hold.
  int64_t live_bytes() const { return live_bytes_->load(std::memory_order_relaxed); }

 private:
  // A buffer with its reservation; the session and replies hold it through aliasing pointers to
  // `values`.
  struct Buffer;
  static std::shared_ptr<std::vector<float>> Wrap(std::vector<float> values,
                                                  MemoryReservation reservation,
                                                  std::shared_ptr<std::atomic<int64_t>> live);

  MemoryBudget* budget_ = nullptr;
  std::shared_ptr<std::atomic<int64_t>> live_bytes_ = std::make_shared<std::atomic<int64_t>>(0);
  std::vector<std::shared_ptr<std::vector<float>>> buffers_;
};

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_PARAMETER_BUFFERS_H_
