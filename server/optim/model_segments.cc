#include "server/optim/model_segments.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "base/thread_pool.h"

namespace optd {

ModelSegments::ModelSegments(std::vector<int64_t> tensor_sizes)
    : tensor_sizes_(std::move(tensor_sizes)) {
  int64_t group_elements = 0;
  for (size_t t = 0; t < tensor_sizes_.size(); ++t) {
    for (int64_t begin = 0; begin < tensor_sizes_[t]; begin += kBlockElements) {
      const int64_t end = std::min(tensor_sizes_[t], begin + kBlockElements);
      // A new group once the open one holds a block's worth: small tensors share a group.
      if (group_first_segment_.empty() || group_elements >= kBlockElements) {
        group_first_segment_.push_back(segments_.size());
        group_elements = 0;
      }
      segments_.push_back(Segment{segments_.size(), t, begin, end});
      group_elements += end - begin;
    }
    total_elements_ += tensor_sizes_[t];
  }
  group_first_segment_.push_back(segments_.size());
}

void ModelSegments::Run(ThreadPool* pool, const std::function<void(const Segment&)>& fn) const {
  if (pool == nullptr || pool->num_threads() == 1 || total_elements_ < kParallelMinElements) {
    for (const Segment& s : segments_) fn(s);
    return;
  }
  const int64_t groups = static_cast<int64_t>(group_first_segment_.size()) - 1;
  pool->ParallelFor(groups, 1, [&](int64_t begin, int64_t end) {
    for (size_t i = group_first_segment_[begin]; i < group_first_segment_[end]; ++i) {
      fn(segments_[i]);
    }
  });
}

}  // namespace optd
