#include "server/optim/model_segments.h"

#include <array>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <random>
#include <vector>

#include "absl/types/span.h"
#include "base/thread_pool.h"
#include "gtest/gtest.h"
#include "server/optim/clip.h"
#include "server/optim/optimizer.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

constexpr int64_t kBlock = ModelSegments::kBlockElements;
using Segment = ModelSegments::Segment;

ThreadPoolOptions Threads(int n) {
  ThreadPoolOptions o;
  o.num_threads = n;
  return o;
}

// Deterministic normal values, one vector per size.
std::vector<std::vector<float>> Values(const std::vector<int64_t>& sizes, float scale = 1.0f) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<std::vector<float>> out;
  for (int64_t n : sizes) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = normal(rng);
    out.push_back(std::move(v));
  }
  return out;
}

std::vector<absl::Span<const float>> Views(const std::vector<std::vector<float>>& v) {
  return std::vector<absl::Span<const float>>(v.begin(), v.end());
}

std::vector<absl::Span<float>> Spans(std::vector<std::vector<float>>& v) {
  std::vector<absl::Span<float>> spans;
  for (std::vector<float>& x : v) spans.push_back(absl::MakeSpan(x));
  return spans;
}

// Sizes over kParallelMinElements in all, tensors not multiples of a block, one tiny.
const std::vector<int64_t> kSizes = {3 * kBlock + 17, 5, 2 * kBlock, 123457};

TEST(ModelSegmentsTest, EmptyTensorsHaveNoSegment) {
  const ModelSegments layout({0, 3, 0});
  ASSERT_EQ(layout.segments().size(), 1u);
  EXPECT_EQ(layout.segments()[0].tensor, 1u);
  EXPECT_EQ(layout.total_elements(), 3);
}

TEST(ModelSegmentsTest, RunVisitsEverySegmentOnceOnAnyPool) {
  const ModelSegments layout(kSizes);
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(Threads(threads));
    std::vector<int> seen(layout.segments().size(), 0);
    std::mutex mu;
    layout.Run(&pool, [&](const Segment& s) {
      std::lock_guard<std::mutex> lock(mu);
      ++seen[s.index];
    });
    EXPECT_EQ(seen, std::vector<int>(seen.size(), 1)) << "threads " << threads;
  }
}

TEST(ModelSegmentsTest, SumsAreTheSameBitsOnAnyPool) {
  const ModelSegments layout(kSizes);
  const std::vector<std::vector<float>> g = Values(kSizes);
  auto squares = [&](const Segment& s) {
    double sum = 0;
    for (int64_t i = s.begin; i < s.end; ++i) sum += double{g[s.tensor][i]} * g[s.tensor][i];
    return std::array<double, 1>{sum};
  };
  const double inline_sum = layout.SumOverModel<1>(nullptr, squares)[0];
  for (int threads : {2, 3}) {
    ThreadPool pool(Threads(threads));
    EXPECT_EQ(layout.SumOverModel<1>(&pool, squares)[0], inline_sum) << "threads " << threads;
  }
}

// A tensor's sum is cut from its own start, so it does not depend on the tensors before it: the
// norm measured of one gradient alone (while decoding) is the one a model-wide reduction gets.
TEST(ModelSegmentsTest, ATensorsSumDoesNotDependOnItsNeighbours) {
  const std::vector<std::vector<float>> g = Values(kSizes);
  const ModelSegments layout(kSizes);
  // The partial of a segment: SquaredNorm of its elements (one segment is one partial there).
  const auto per_tensor = layout.SumPerTensor<1>(ThreadPool::Default(), [&](const Segment& s) {
    return std::array<double, 1>{SquaredNorm(
        absl::MakeConstSpan(g[s.tensor]).subspan(s.begin, static_cast<size_t>(s.end - s.begin)))};
  });
  double total = 0;
  for (size_t t = 0; t < kSizes.size(); ++t) {
    const double alone = SquaredNorm(g[t]);
    EXPECT_EQ(per_tensor[t][0], alone) << "tensor " << t;
    total += alone;
  }
  EXPECT_EQ(GlobalNorm(Views(g)), std::sqrt(total));
}

// Clipping runs on the optimizer's segments: clipping on a pool of 1 or 3 threads, with the norm
// measured tensor by tensor (as decoding does), gives the same bits as Clip.
TEST(ClipToNormTest, SameBitsAsClipOnAnyPool) {
  ClipOptions options;
  options.max_norm = 10.0;
  options.clip_value = 0.02;
  std::vector<std::vector<float>> reference = Values(kSizes, 0.1f);
  const std::vector<std::vector<float>> original = reference;
  const double norm = Clip(options, Spans(reference));
  double squares = 0;
  for (const std::vector<float>& t : original) squares += SquaredNorm(t);
  EXPECT_EQ(std::sqrt(squares), norm);
  ASSERT_LT(10.0, norm);  // the global-norm clipping acts
  for (int threads : {1, 3}) {
    ThreadPool pool(Threads(threads));
    std::vector<std::vector<float>> g = original;
    ClipToNorm(options, norm, ModelSegments(kSizes), Spans(g), &pool);
    EXPECT_EQ(g, reference) << "threads " << threads;
  }
  // Both bounds hold.
  double clipped = 0;
  for (const std::vector<float>& t : reference) {
    for (float x : t) {
      EXPECT_LE(std::abs(x), 0.02f);
      clipped += double{x} * x;
    }
  }
  EXPECT_LE(std::sqrt(clipped), 10.0);
}

// Normalized GD's global norm (its reduction phase) and GlobalNorm are one mechanism: a step of
// lr 1 moves the parameters by g / GlobalNorm(g) exactly.
TEST(ModelSegmentsTest, NormalizedGdUsesTheNormClippingMeasures) {
  const std::vector<std::vector<float>> g = Values(kSizes);
  NormalizedGdOptions options;
  options.lr = 1.0;
  options.eps = 0.0;
  absl::StatusOr<std::unique_ptr<Optimizer>> optimizer = CreateOptimizer(options, kSizes);
  ASSERT_OK(optimizer);
  std::vector<std::vector<float>> params;
  for (int64_t n : kSizes) params.emplace_back(static_cast<size_t>(n), 0.0f);
  std::vector<TensorGrad> tensors;
  for (size_t t = 0; t < kSizes.size(); ++t) {
    tensors.push_back({absl::MakeSpan(params[t]), absl::MakeConstSpan(g[t])});
  }
  ASSERT_OK((*optimizer)->Step(tensors, 1.0));
  const double norm = GlobalNorm(Views(g));
  const float inverse = static_cast<float>(1.0 / norm);
  int64_t mismatches = 0;
  for (size_t t = 0; t < kSizes.size(); ++t) {
    for (size_t i = 0; i < g[t].size(); ++i) mismatches += params[t][i] != -(inverse * g[t][i]);
  }
  EXPECT_EQ(mismatches, 0);
}

}  // namespace
}  // namespace optd
