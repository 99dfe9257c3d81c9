#include "server/session/sync_barrier.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "base/thread_pool.h"
#include "server/optim/model_segments.h"

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
  return std::any_of(contributions_.begin(), contributions_.end(),
                     [&](const Contribution& c) { return c.worker_id == worker_id; });
}

std::vector<std::string> SyncBarrier::contributors() const {
  std::vector<std::string> out;
  for (const Contribution& c : contributions_) out.push_back(c.worker_id);
  return out;
}

int64_t SyncBarrier::ContributionBytes(const std::vector<Gradient>& gradients) {
  int64_t bytes = 0;
  for (const Gradient& g : gradients) bytes += g.bytes();
  return bytes;
}

bool SyncBarrier::Add(std::vector<Gradient> gradients, std::optional<double> loss, Waiter waiter,
                      absl::Time now, MemoryReservation memory) {
  const bool opens = contributions_.empty();
  if (opens) opened_ = now;
  for (Gradient& g : gradients) g.Detach();
  bytes_ += ContributionBytes(gradients);
  contributions_.push_back(
      Contribution{waiter.worker_id, std::move(gradients), loss, std::move(memory)});
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

void SyncBarrier::ReduceTensor(size_t k, const std::vector<const Contribution*>& order,
                               double scale, ThreadPool* pool, Reduced* out) const {
  const int64_t n = (*specs_)[k].num_elements;
  const bool dense = std::any_of(order.begin(), order.end(),
                                 [&](const Contribution* c) { return !c->gradients[k].sparse(); });
  std::atomic<bool> finite{true};
  if (dense && std::none_of(order.begin(), order.end(),
                            [&](const Contribution* c) { return c->gradients[k].sparse(); })) {
    // All dense: block by block, each element summed over the contributions in order.
    std::vector<float> values(static_cast<size_t>(n));
    constexpr int64_t kBlock = ModelSegments::kBlockElements;
    auto block = [&](int64_t begin, int64_t end) {
      std::vector<double> acc(static_cast<size_t>(end - begin), 0.0);
      for (const Contribution* c : order) {
        const float* g = c->gradients[k].values().data() + begin;
        for (size_t i = 0; i < acc.size(); ++i) acc[i] += g[i];
      }
      bool ok = true;
      for (size_t i = 0; i < acc.size(); ++i) {
        values[begin + i] = static_cast<float>(acc[i] * scale);
        ok &= std::isfinite(values[begin + i]);
      }
      if (!ok) finite = false;
    };
    if (pool == nullptr || n < ModelSegments::kParallelMinElements) {
      for (int64_t b = 0; b < n; b += kBlock) block(b, std::min(n, b + kBlock));
    } else {
      pool->ParallelFor(n, kBlock, block);
    }
    out->gradients[k] = Gradient::Dense(std::move(values));
  } else {
    // Some sparse: into a dense sum, contribution by contribution in order (rows for sparse
    // ones); the result is dense if any contribution was, else sparse over the rows touched.
    const int64_t row_size = (*specs_)[k].row_size();
    std::vector<double> sum(static_cast<size_t>(n), 0.0);
    std::vector<int64_t> touched;
    for (const Contribution* c : order) {
      const Gradient& g = c->gradients[k];
      const float* values = g.values().data();
      if (!g.sparse()) {
        for (int64_t i = 0; i < n; ++i) sum[i] += values[i];
        continue;
      }
      for (size_t r = 0; r < g.rows().size(); ++r) {
        double* dst = sum.data() + g.rows()[r] * row_size;
        for (int64_t j = 0; j < row_size; ++j) dst[j] += values[r * row_size + j];
      }
      std::vector<int64_t> merged;
      std::set_union(touched.begin(), touched.end(), g.rows().begin(), g.rows().end(),
                     std::back_inserter(merged));
      touched = std::move(merged);
    }
    auto round = [&](const double* from, int64_t count, float* to) {
      for (int64_t i = 0; i < count; ++i) {
        to[i] = static_cast<float>(from[i] * scale);
        if (!std::isfinite(to[i])) finite = false;
      }
    };
    if (dense) {
      std::vector<float> values(static_cast<size_t>(n));
      round(sum.data(), n, values.data());
      out->gradients[k] = Gradient::Dense(std::move(values));
    } else {
      std::vector<float> values(touched.size() * row_size);
      for (size_t r = 0; r < touched.size(); ++r) {
        round(sum.data() + touched[r] * row_size, row_size, values.data() + r * row_size);
      }
      out->touched[k] = touched;
      out->gradients[k] = Gradient::Sparse(std::move(touched), std::move(values));
    }
  }
  // An overflow is noted, not hidden.
  if (!finite && out->overflow_tensor < 0) out->overflow_tensor = static_cast<int>(k);
}

SyncBarrier::Reduced SyncBarrier::Take(absl::Time now, ThreadPool* pool) {
  Reduced out;
  const int n = contributions();
  out.workers = n;
  out.waited = now - opened_;
  const double scale =
      options_.reduce == ConsistencyOptions::Reduce::kMean ? 1.0 / static_cast<double>(n) : 1.0;
  if (n < options_.workers) out.missing_workers = MissingWorkers();
  // The reduction order: by worker id, whatever the arrival order.
  std::vector<const Contribution*> order;
  for (const Contribution& c : contributions_) order.push_back(&c);
  std::sort(order.begin(), order.end(), [](const Contribution* a, const Contribution* b) {
    return a->worker_id < b->worker_id;
  });
  for (const Contribution* c : order) {
    if (std::find(known_workers_.begin(), known_workers_.end(), c->worker_id) ==
            known_workers_.end() &&
        known_workers_.size() < static_cast<size_t>(ConsistencyOptions::kMaxSyncWorkers)) {
      known_workers_.push_back(c->worker_id);
    }
  }
  double losses = 0;
  int reported = 0;
  for (const Contribution* c : order) {
    if (!c->loss.has_value()) continue;
    losses += *c->loss;
    ++reported;
  }
  if (reported > 0) out.loss = losses / reported;
  const size_t tensors = specs_->size();
  out.gradients.resize(tensors);
  out.touched.resize(tensors);
  for (size_t k = 0; k < tensors; ++k) ReduceTensor(k, order, scale, pool, &out);
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
  contributions_.clear();
  bytes_ = 0;
  waiters_.clear();
}

}  // namespace optd
