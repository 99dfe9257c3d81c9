#include "server/session/sync_barrier.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <utility>

namespace optd {

SyncBarrier::SyncBarrier(const ConsistencyOptions& options, const TensorSpecs* specs)
    : options_(options), specs_(specs) {}

bool SyncBarrier::IsPending(absl::string_view worker_id, int64_t incarnation,
                            int64_t sequence) const {
  if (sequence <= 0) return false;
  for (const Waiter& w : waiters_) {
    if (w.worker_id == worker_id && w.incarnation == incarnation && w.sequence == sequence &&
        !w.duplicate) {
      return true;
    }
  }
  return false;
}

void SyncBarrier::AttachRetry(Waiter waiter) {
  waiter.duplicate = true;
  waiters_.push_back(std::move(waiter));
}

bool SyncBarrier::HasContributed(absl::string_view worker_id) const {
  return std::find(contributors_.begin(), contributors_.end(), worker_id) != contributors_.end();
}

bool SyncBarrier::Add(std::vector<Gradient> gradients, std::optional<double> loss, Waiter waiter,
                      absl::Time now, MemoryReservation sums) {
  const bool opens = contributors_.empty();
  if (opens) {
    opened_ = now;
    sum_reservation_ = std::move(sums);
    sum_.resize(gradients.size());
    dense_.assign(gradients.size(), false);
    touched_.assign(gradients.size(), {});
    for (size_t k = 0; k < gradients.size(); ++k) {
      sum_[k].assign((*specs_)[k].num_elements, 0.0);
    }
  }
  for (size_t k = 0; k < gradients.size(); ++k) {
    double* sum = sum_[k].data();
    const absl::Span<const float> values = gradients[k].values();
    const float* g = values.data();
    if (!gradients[k].sparse()) {
      dense_[k] = true;
      for (size_t i = 0; i < values.size(); ++i) sum[i] += g[i];
      continue;
    }
    const int64_t row_size = (*specs_)[k].row_size();
    const std::vector<int64_t>& rows = gradients[k].rows();
    for (size_t r = 0; r < rows.size(); ++r) {
      double* dst = sum + rows[r] * row_size;
      for (int64_t j = 0; j < row_size; ++j) dst[j] += g[r * row_size + j];
    }
    std::vector<int64_t> merged;
    std::set_union(touched_[k].begin(), touched_[k].end(), rows.begin(), rows.end(),
                   std::back_inserter(merged));
    touched_[k] = std::move(merged);
  }
  contributors_.push_back(waiter.worker_id);
  if (loss.has_value()) losses_.push_back(*loss);
  waiters_.push_back(std::move(waiter));
  return opens;
}

std::vector<std::string> SyncBarrier::MissingWorkers() const {
  const std::vector<std::string>& expected =
      options_.worker_ids.empty() ? known_workers_ : options_.worker_ids;
  std::vector<std::string> missing;
  for (const std::string& w : expected) {
    if (!HasContributed(w)) missing.push_back(w);
  }
  return missing;
}

SyncBarrier::Reduced SyncBarrier::Take(absl::Time now) {
  Reduced out;
  const int n = contributions();
  out.workers = n;
  out.waited = now - opened_;
  const double scale =
      options_.reduce == ConsistencyOptions::Reduce::kMean ? 1.0 / static_cast<double>(n) : 1.0;
  // The reduced values, rounded to float32 once; an overflow is noted, not hidden.
  auto reduce = [&](size_t k, const double* sum, int64_t count, float* out_values) {
    bool finite = true;
    for (int64_t i = 0; i < count; ++i) {
      out_values[i] = static_cast<float>(sum[i] * scale);
      finite &= std::isfinite(out_values[i]);
    }
    if (!finite && out.overflow_tensor < 0) out.overflow_tensor = static_cast<int>(k);
  };
  if (n < options_.workers) out.missing_workers = MissingWorkers();
  for (const std::string& w : contributors_) {
    if (std::find(known_workers_.begin(), known_workers_.end(), w) == known_workers_.end() &&
        known_workers_.size() < static_cast<size_t>(ConsistencyOptions::kMaxSyncWorkers)) {
      known_workers_.push_back(w);
    }
  }
  if (!losses_.empty()) {
    double total = 0;
    for (double l : losses_) total += l;
    out.loss = total / losses_.size();
  }
  out.gradients.resize(sum_.size());
  out.touched.resize(sum_.size());
  for (size_t k = 0; k < sum_.size(); ++k) {
    if (dense_[k]) {
      std::vector<float> values(sum_[k].size());
      reduce(k, sum_[k].data(), static_cast<int64_t>(values.size()), values.data());
      out.gradients[k] = Gradient::Dense(std::move(values));
      continue;
    }
    // Only sparse contributions: the combined gradient is sparse over the rows they touched.
    const int64_t row_size = (*specs_)[k].row_size();
    std::vector<float> values(touched_[k].size() * row_size);
    for (size_t r = 0; r < touched_[k].size(); ++r) {
      reduce(k, sum_[k].data() + touched_[k][r] * row_size, row_size, values.data() + r * row_size);
    }
    out.touched[k] = touched_[k];
    out.gradients[k] = Gradient::Sparse(std::move(touched_[k]), std::move(values));
  }
  out.waiters = std::move(waiters_);
  Reset();
  return out;
}

std::vector<SyncBarrier::Waiter> SyncBarrier::Fail() {
  std::vector<Waiter> waiters = std::move(waiters_);
  Reset();
  return waiters;
}

void SyncBarrier::Reset() {
  ++id_;
  opened_ = absl::Time();
  contributors_.clear();
  sum_.clear();
  sum_reservation_.Release();
  dense_.clear();
  touched_.clear();
  losses_.clear();
  waiters_.clear();
}

}  // namespace optd
