// File: memory_budget.h
//
// MemoryBudget: the server-wide limit on the memory requests may make optd hold
// (--max_memory_bytes): parameters, optimizer state (reserved whole when a session is created,
// though a tensor's state is allocated at its first step), SYNC barrier sums, gradients being
// decoded, request buffers and parameter buffers still held by replies. Whatever would take more
// is refused, with ResourceExhausted naming what was asked, what is in use and the limit, before
// anything is allocated or changed.
//
// MemoryReservation: bytes taken from a budget, given back when the reservation is destroyed (or
// Release()d). Move-only.
//
// Who uses it: SessionStore and sessions (state, barriers, decoding), the service (requests).
// Thread-safe: Reserve is one atomic compare-and-swap loop; a budget must outlive every
// reservation taken from it (OptdServer owns it and destroys it last).

#ifndef OPTD_SERVER_SESSION_MEMORY_BUDGET_H_
#define OPTD_SERVER_SESSION_MEMORY_BUDGET_H_

#include <atomic>
#include <cstdint>
#include <limits>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace optd {

class MemoryBudget;

class MemoryReservation {
 public:
  MemoryReservation() = default;
  MemoryReservation(MemoryReservation&& other) noexcept { *this = std::move(other); }
  MemoryReservation& operator=(MemoryReservation&& other) noexcept;
  MemoryReservation(const MemoryReservation&) = delete;
  MemoryReservation& operator=(const MemoryReservation&) = delete;
  ~MemoryReservation() { Release(); }

  int64_t bytes() const { return bytes_; }

  // Splits `bytes` (at most bytes()) off into a reservation of their own.
  MemoryReservation Split(int64_t bytes);

  // Takes `other`'s bytes into this reservation. REQUIRES: both come from the same budget (or
  // either is empty).
  void Absorb(MemoryReservation other);

  // Gives the bytes back now.
  void Release();

 private:
  friend class MemoryBudget;
  MemoryReservation(MemoryBudget* budget, int64_t bytes) : budget_(budget), bytes_(bytes) {}

  MemoryBudget* budget_ = nullptr;
  int64_t bytes_ = 0;
};

class MemoryBudget {
 public:
  // REQUIRES: limit > 0.
  explicit MemoryBudget(int64_t limit = std::numeric_limits<int64_t>::max()) : limit_(limit) {}

  // A process-wide budget without a limit, for sessions made without one (tests, embedders).
  static MemoryBudget* Unlimited();
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  // Takes `bytes` (>= 0) for `what` ("the parameters and optimizer state of session s1"), or
  // returns ResourceExhausted: "<what> needs N bytes; M of the server's memory budget of L
  // (--max_memory_bytes) are in use".
  absl::StatusOr<MemoryReservation> Reserve(int64_t bytes, absl::string_view what);

  int64_t limit() const { return limit_.load(std::memory_order_relaxed); }

  // Changes the limit (a measurement made after start-up); what is in use stays, even above it.
  void set_limit(int64_t limit) { limit_.store(limit, std::memory_order_relaxed); }
  int64_t in_use() const { return in_use_.load(std::memory_order_relaxed); }

 private:
  friend class MemoryReservation;

  std::atomic<int64_t> limit_;
  std::atomic<int64_t> in_use_{0};
};

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_MEMORY_BUDGET_H_
