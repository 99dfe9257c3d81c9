#include "server/session/memory_budget.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace optd {

MemoryReservation& MemoryReservation::operator=(MemoryReservation&& other) noexcept {
  if (this != &other) {
    Release();
    budget_ = std::exchange(other.budget_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

MemoryReservation MemoryReservation::Split(int64_t bytes) {
  bytes = bytes < 0 ? 0 : (bytes > bytes_ ? bytes_ : bytes);
  bytes_ -= bytes;
  return MemoryReservation(budget_, bytes);
}

void MemoryReservation::Absorb(MemoryReservation other) {
  if (other.bytes_ == 0) return;
  if (budget_ == nullptr) budget_ = other.budget_;
  bytes_ += std::exchange(other.bytes_, 0);
  other.budget_ = nullptr;
}

void MemoryReservation::Release() {
  if (budget_ != nullptr && bytes_ > 0) {
    budget_->in_use_.fetch_sub(bytes_, std::memory_order_relaxed);
  }
  budget_ = nullptr;
  bytes_ = 0;
}

MemoryBudget* MemoryBudget::Unlimited() {
  static MemoryBudget* const budget = new MemoryBudget();
  return budget;
}

absl::StatusOr<MemoryReservation> MemoryBudget::Reserve(int64_t bytes, absl::string_view what) {
  if (bytes <= 0) return MemoryReservation(this, 0);
  int64_t used = in_use_.load(std::memory_order_relaxed);
  const int64_t limit = limit_.load(std::memory_order_relaxed);
  do {
    if (bytes > limit - used) {
      return absl::ResourceExhaustedError(absl::StrCat(what, " needs ", bytes, " bytes; ", used,
                                                       " of the server's memory budget of ", limit,
                                                       " bytes (--max_memory_bytes) are in use"));
    }
  } while (!in_use_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
  return MemoryReservation(this, bytes);
}

}  // namespace optd
