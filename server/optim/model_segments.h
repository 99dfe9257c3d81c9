// File: model_segments.h
//
// How every pass over a whole model is cut, run and reduced: the one mechanism behind an
// optimizer's update and reduction phases (Optimizer::UpdateSegments, SumPerTensor,
// SumOverModel), gradient clipping (clip.h) and the squared norms measured while a gradient is
// decoded (SquaredNorm, FillAndSquaredNorm). Pure C++17 and abseil on top of optd::base.
//
// The cut: each tensor is cut from its own first element every kBlockElements elements (its last
// segment shorter); a segment never spans two tensors. A sum over a tensor is one double partial
// per segment, added in segment order; a sum over the model adds the tensors' sums in tensor
// order. Neither depends on the pool, its size or the order segments run in: the same bits on one
// thread and on N. And since the cut is the tensor's own, a tensor's sum does not depend on the
// tensors around it: SquaredNorm of one gradient alone gives the bits SumPerTensor gives for it
// inside a model, so a norm measured while decoding serves clipping and normalized GD unchanged.
//
// Who may call it: server/optim (Optimizer owns one; clip.cc takes one) and its callers, e.g.
// server/session, which clips with its optimizer's layout(). Immutable after construction:
// any number of threads may use one at once. The callbacks must not call ParallelFor.

#ifndef OPTD_SERVER_OPTIM_MODEL_SEGMENTS_H_
#define OPTD_SERVER_OPTIM_MODEL_SEGMENTS_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "base/thread_pool.h"

namespace optd {

class ModelSegments {
 public:
  // Passes over at least this many elements in all run on the pool (when it has > 1 thread).
  static constexpr int64_t kParallelMinElements = 256 * 1024;
  // Each tensor is cut every this many elements.
  static constexpr int64_t kBlockElements = 64 * 1024;

  // Elements [begin, end) of tensor `tensor`; segments()[index] is this segment.
  struct Segment {
    size_t index;
    size_t tensor;
    int64_t begin;
    int64_t end;
  };

  // REQUIRES: every size >= 0 (an empty tensor has no segment).
  explicit ModelSegments(std::vector<int64_t> tensor_sizes);

  const std::vector<int64_t>& tensor_sizes() const { return tensor_sizes_; }
  int64_t total_elements() const { return total_elements_; }
  // Every tensor's segments, tensor by tensor, in order.
  const std::vector<Segment>& segments() const { return segments_; }

  // Calls fn once for every segment. Inline and in order when there is no pool, it has one
  // thread, or the model has fewer than kParallelMinElements elements; otherwise on the pool,
  // concurrently and in any order (consecutive segments of about kBlockElements elements in all
  // go to one thread together). fn must only write what belongs to its own segment.
  void Run(ThreadPool* pool, const std::function<void(const Segment&)>& fn) const;

  // For each tensor, the kWidth sums over its segments of value(segment), run as Run does: one
  // partial per segment, added in segment order.
  template <size_t kWidth>
  std::vector<std::array<double, kWidth>> SumPerTensor(
      ThreadPool* pool,
      const std::function<std::array<double, kWidth>(const Segment&)>& value) const {
    std::vector<std::array<double, kWidth>> partials(segments_.size());
    Run(pool, [&](const Segment& s) { partials[s.index] = value(s); });
    std::vector<std::array<double, kWidth>> sums(tensor_sizes_.size());  // zeros
    for (const Segment& s : segments_) {
      for (size_t k = 0; k < kWidth; ++k) sums[s.tensor][k] += partials[s.index][k];
    }
    return sums;
  }

  // The kWidth sums over the whole model: SumPerTensor's sums added in tensor order, in double.
  template <size_t kWidth>
  std::array<double, kWidth> SumOverModel(
      ThreadPool* pool,
      const std::function<std::array<double, kWidth>(const Segment&)>& value) const {
    std::array<double, kWidth> total = {};
    for (const std::array<double, kWidth>& t : SumPerTensor<kWidth>(pool, value)) {
      for (size_t k = 0; k < kWidth; ++k) total[k] += t[k];
    }
    return total;
  }

 private:
  std::vector<int64_t> tensor_sizes_;
  int64_t total_elements_ = 0;
  std::vector<Segment> segments_;
  // Work group g (what one thread takes at a time) is segments
  // [group_first_segment_[g], group_first_segment_[g + 1]).
  std::vector<size_t> group_first_segment_;
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_MODEL_SEGMENTS_H_
