#include "server/session/parameter_buffers.h"

#include <algorithm>
#include <atomic>
#include <utility>

#include "absl/strings/str_cat.h"

namespace optd {

struct ParameterBuffers::Buffer {
  Buffer(std::vector<float> v, MemoryReservation r, std::shared_ptr<std::atomic<int64_t>> l)
      : values(std::move(v)), reservation(std::move(r)), live(std::move(l)) {
    live->fetch_add(Bytes(), std::memory_order_relaxed);
  }
  ~Buffer() { live->fetch_sub(Bytes(), std::memory_order_relaxed); }
  int64_t Bytes() const { return static_cast<int64_t>(values.size() * sizeof(float)); }

  std::vector<float> values;
  MemoryReservation reservation;
  std::shared_ptr<std::atomic<int64_t>> live;
};

std::shared_ptr<std::vector<float>> ParameterBuffers::Wrap(
    std::vector<float> values, MemoryReservation reservation,
    std::shared_ptr<std::atomic<int64_t>> live) {
  auto buffer =
      std::make_shared<Buffer>(std::move(values), std::move(reservation), std::move(live));
  return std::shared_ptr<std::vector<float>>(buffer, &buffer->values);
}

ParameterBuffers::ParameterBuffers(std::vector<std::vector<float>> values,
                                   MemoryReservation reservation, MemoryBudget* budget)
    : budget_(budget) {
  buffers_.reserve(values.size());
  for (std::vector<float>& v : values) {
    MemoryReservation own = reservation.Split(static_cast<int64_t>(v.size() * sizeof(float)));
    buffers_.push_back(Wrap(std::move(v), std::move(own), live_bytes_));
  }
}

absl::StatusOr<absl::Span<float>> ParameterBuffers::Writable(int index, int64_t* copied_bytes) {
  std::shared_ptr<std::vector<float>>& values = buffers_[index];
  if (values.use_count() > 1) {
    const int64_t bytes = static_cast<int64_t>(values->size() * sizeof(float));
    absl::StatusOr<MemoryReservation> reservation =
        budget_ != nullptr ? budget_->Reserve(bytes, "a copy of parameters a reply still holds")
                           : absl::StatusOr<MemoryReservation>(MemoryReservation());
    if (!reservation.ok()) return reservation.status();
    values = Wrap(*values, *std::move(reservation), live_bytes_);
    *copied_bytes += bytes;
  } else {
    // The last reply that shared the buffer has let go of it; its reads (on other threads)
    // happen before the writes that follow.
    std::atomic_thread_fence(std::memory_order_acquire);
  }
  return absl::MakeSpan(*values);
}

std::string ParameterBuffers::EncodeRows(int index, absl::Span<const int64_t> rows,
                                         int64_t row_size, WireDType dtype) const {
  const std::vector<float>& values = *buffers_[index];
  std::vector<float> gathered(rows.size() * row_size);
  for (size_t r = 0; r < rows.size(); ++r) {
    std::copy_n(values.data() + rows[r] * row_size, row_size, gathered.data() + r * row_size);
  }
  std::string bytes;
  EncodeFloats(dtype, gathered, &bytes);
  return bytes;
}

}  // namespace optd
