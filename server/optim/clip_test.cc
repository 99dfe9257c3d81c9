#include "server/optim/clip.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/optim/optimizer.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

using ::testing::ElementsAre;

constexpr float kNanF = std::numeric_limits<float>::quiet_NaN();
constexpr float kInfF = std::numeric_limits<float>::infinity();
constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Spans over the tensors of `grads`, the form the clip functions take.
std::vector<absl::Span<float>> Spans(std::vector<std::vector<float>>& grads) {
  std::vector<absl::Span<float>> spans;
  for (std::vector<float>& g : grads) spans.push_back(absl::MakeSpan(g));
  return spans;
}

std::vector<absl::Span<const float>> Views(const std::vector<std::vector<float>>& grads) {
  return std::vector<absl::Span<const float>>(grads.begin(), grads.end());
}

TEST(SquaredNormTest, SumsSquaresInDoubleOnAndOffThePool) {
  EXPECT_EQ(SquaredNorm({}), 0.0);
  const std::vector<float> small = {3.0f, -4.0f, 0.5f};
  EXPECT_EQ(SquaredNorm(small), 25.25);
  // Large enough to be summed in blocks on the pool: every value 2^-4, so each square and every
  // partial sum is exact and any order gives the same bits.
  const std::vector<float> large(Optimizer::kParallelMinElements * 3 + 7, 0.0625f);
  EXPECT_EQ(SquaredNorm(large), static_cast<double>(large.size()) / 256.0);
  // The largest float squared, a million times, still fits a double.
  const std::vector<float> huge(1000000, std::numeric_limits<float>::max());
  EXPECT_TRUE(std::isfinite(SquaredNorm(huge)));
}

TEST(SquaredNormTest, IsNotFiniteExactlyWhenSomeValueIsNot) {
  for (const size_t n : {size_t{5}, size_t{Optimizer::kParallelMinElements * 2 + 3}}) {
    for (const size_t at : {size_t{0}, n / 2, n - 1}) {
      std::vector<float> g(n, 1.5f);
      g[at] = kNanF;
      EXPECT_TRUE(std::isnan(SquaredNorm(g))) << "n=" << n << " at=" << at;
      g[at] = kInfF;
      EXPECT_EQ(SquaredNorm(g), kInf) << "n=" << n << " at=" << at;
      g[at] = -kInfF;
      EXPECT_EQ(SquaredNorm(g), kInf) << "n=" << n << " at=" << at;
      g[at] = std::numeric_limits<float>::denorm_min();
      EXPECT_TRUE(std::isfinite(SquaredNorm(g))) << "n=" << n << " at=" << at;
    }
  }
}

TEST(SquaredNormTest, FillAndSquaredNormGivesTheBitsOfFillingFirst) {
  for (const int64_t n : {int64_t{0}, int64_t{10}, Optimizer::kParallelMinElements * 2 + 5}) {
    auto value = [](int64_t i) { return std::sin(static_cast<float>(i)) * 3.0f; };
    std::vector<float> filled(n);
    std::vector<int> writes(n, 0);
    const double fused = FillAndSquaredNorm(
        n,
        [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            filled[i] = value(i);
            ++writes[i];
          }
        },
        filled.data());
    std::vector<float> reference(n);
    for (int64_t i = 0; i < n; ++i) reference[i] = value(i);
    EXPECT_EQ(fused, SquaredNorm(reference)) << "n=" << n;  // bit for bit
    EXPECT_EQ(filled, reference);
    EXPECT_TRUE(std::all_of(writes.begin(), writes.end(), [](int w) { return w == 1; }));
  }
}

TEST(ClipByGlobalNormTest, SpecExample) {
  // reference/optimizers.md 4.1 [verified]: grads (3, 4), max_norm 1 -> (0.6, 0.8) - ~1e-7,
  // returns 5.0.
  std::vector<std::vector<float>> grads = {{3.0f, 4.0f}};
  EXPECT_EQ(ClipByGlobalNorm(Spans(grads), 1.0), 5.0);
  const float coef = static_cast<float>(1.0 / (5.0 + 1e-6));
  EXPECT_EQ(grads[0][0], 3.0f * coef);
  EXPECT_EQ(grads[0][1], 4.0f * coef);
  EXPECT_LT(grads[0][0], 0.6f);
  EXPECT_LT(grads[0][1], 0.8f);
  // torch 1.13 float32 gives exactly these (printed with /usr/bin/python3).
  EXPECT_EQ(grads[0][0], 0.5999999046325684f);
  EXPECT_EQ(grads[0][1], 0.7999998331069946f);
}

TEST(ClipByGlobalNormTest, NormIsOverAllTensors) {
  std::vector<std::vector<float>> grads = {{3.0f}, {4.0f, 0.0f}, {12.0f}};
  EXPECT_EQ(GlobalNorm(Views(grads)), 13.0);
  EXPECT_EQ(ClipByGlobalNorm(Spans(grads), 6.5), 13.0);
  const float coef = static_cast<float>(6.5 / (13.0 + 1e-6));
  EXPECT_THAT(grads[0], ElementsAre(3.0f * coef));
  EXPECT_THAT(grads[1], ElementsAre(4.0f * coef, 0.0f));
  EXPECT_THAT(grads[2], ElementsAre(12.0f * coef));
}

TEST(ClipByGlobalNormTest, AccumulatesInDouble) {
  // 2^24 + 3 ones: a float32 running sum of squares would stop at 2^24.
  const int64_t n = (int64_t{1} << 24) + 3;
  std::vector<std::vector<float>> grads = {std::vector<float>(n, 1.0f)};
  EXPECT_EQ(GlobalNorm(Views(grads)), std::sqrt(static_cast<double>(n)));
}

TEST(ClipByGlobalNormTest, NoOpUnderTheMax) {
  std::vector<std::vector<float>> grads = {{0.3f, -0.4f}, {0.0f, 1e-3f}};
  const std::vector<std::vector<float>> before = grads;
  const double norm = ClipByGlobalNorm(Spans(grads), 1.0);
  EXPECT_NEAR(norm, std::sqrt(0.25 + 1e-6), 1e-7);
  EXPECT_EQ(grads, before);
  // At exactly max_norm, coef = max_norm / (max_norm + 1e-6) < 1: torch scales by that.
  std::vector<std::vector<float>> at_max = {{3.0f, 4.0f}};
  ClipByGlobalNorm(Spans(at_max), 5.0);
  EXPECT_LT(at_max[0][0], 3.0f);
}

TEST(ClipByGlobalNormTest, ZeroGradientsStayZero) {
  std::vector<std::vector<float>> grads = {{0.0f, 0.0f}, {0.0f}};
  EXPECT_EQ(ClipByGlobalNorm(Spans(grads), 1.0), 0.0);
  EXPECT_THAT(grads[0], ElementsAre(0.0f, 0.0f));
  EXPECT_THAT(grads[1], ElementsAre(0.0f));
}

TEST(ClipByGlobalNormTest, NoTensors) {
  EXPECT_EQ(GlobalNorm({}), 0.0);
  EXPECT_EQ(ClipByGlobalNorm({}, 1.0), 0.0);
}

TEST(ClipByGlobalNormTest, MaxNormZeroZeroesTheGradients) {
  std::vector<std::vector<float>> grads = {{1.0f, -2.0f}};
  EXPECT_EQ(ClipByGlobalNorm(Spans(grads), 0.0), std::sqrt(5.0));
  EXPECT_THAT(grads[0], ElementsAre(0.0f, -0.0f));
}

TEST(ClipByGlobalNormTest, NonFiniteGradientsBehaveLikeTorch) {
  std::vector<std::vector<float>> nan_grads = {{1.0f, kNanF}, {2.0f}};
  EXPECT_TRUE(std::isnan(ClipByGlobalNorm(Spans(nan_grads), 1.0)));
  for (const auto& g : nan_grads) {
    for (float x : g) EXPECT_TRUE(std::isnan(x));
  }
  std::vector<std::vector<float>> inf_grads = {{1.0f, kInfF}, {2.0f}};
  EXPECT_EQ(ClipByGlobalNorm(Spans(inf_grads), 1.0), kInf);
  EXPECT_EQ(inf_grads[0][0], 0.0f);
  EXPECT_TRUE(std::isnan(inf_grads[0][1]));  // inf * 0
  EXPECT_EQ(inf_grads[1][0], 0.0f);
}

// Random gradients reproducible in C++ and Python: a 32-bit LCG mapped exactly onto float32.
std::vector<float> LcgValues(int n, uint32_t& state) {
  std::vector<float> values;
  for (int i = 0; i < n; ++i) {
    state = 1664525u * state + 1013904223u;
    values.push_back(
        static_cast<float>((static_cast<double>(state >> 8) / 16777216.0 - 0.5) * 8.0));
  }
  return values;
}

TEST(ClipByGlobalNormTest, MatchesTorchFloat32) {
  // Recorded with Debian's python3-torch 1.13 (/usr/bin/python3):
  //   import torch
  //   def lcg_values(n, state):
  //       out = []
  //       for _ in range(n):
  //           state = (1664525 * state + 1013904223) % 2**32
  //           out.append(((state >> 8) / 16777216.0 - 0.5) * 8.0)
  //       return out, state
  //   state, params = 12345, []
  //   for size in (7, 64, 1000):
  //       vals, state = lcg_values(size, state)
  //       p = torch.nn.Parameter(torch.zeros(size, dtype=torch.float32))
  //       p.grad = torch.tensor(vals, dtype=torch.float32)
  //       params.append(p)
  //   total = torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
  //   # total.item(), params[t].grad[i].item(), torch.cat([p.grad ...]).norm().item()
  uint32_t state = 12345;
  std::vector<std::vector<float>> grads;
  for (int size : {7, 64, 1000}) grads.push_back(LcgValues(size, state));
  const double total = ClipByGlobalNorm(Spans(grads), 1.0);
  constexpr double kRtol = 1e-6;
  EXPECT_NEAR(total, 74.87001037597656, kRtol * 74.87001037597656);
  const struct {
    int tensor;
    int index;
    double want;
  } elements[] = {{0, 0, -0.05124586820602417},
                  {0, 6, -0.0004392289265524596},
                  {1, 17, -0.022728990763425827},
                  {2, 0, -0.010250812396407127},
                  {2, 999, -0.021790938451886177}};
  for (const auto& e : elements) {
    EXPECT_NEAR(grads[e.tensor][e.index], e.want, kRtol * std::abs(e.want))
        << "tensor " << e.tensor << " element " << e.index;
  }
  EXPECT_NEAR(GlobalNorm(Views(grads)), 0.9999998807907104, kRtol);
}

TEST(ClipByValueTest, ClampsEveryElement) {
  std::vector<std::vector<float>> grads = {{-3.0f, -0.5f, 0.0f, 0.5f}, {3.0f, -kInfF, kInfF}};
  ClipByValue(Spans(grads), 1.0);
  EXPECT_THAT(grads[0], ElementsAre(-1.0f, -0.5f, 0.0f, 0.5f));
  EXPECT_THAT(grads[1], ElementsAre(1.0f, -1.0f, 1.0f));
}

TEST(ClipByValueTest, NanStaysNan) {
  std::vector<std::vector<float>> grads = {{kNanF, 5.0f}};
  ClipByValue(Spans(grads), 0.25);
  EXPECT_TRUE(std::isnan(grads[0][0]));
  EXPECT_EQ(grads[0][1], 0.25f);
}

TEST(ClipTest, OffByDefaultButReportsTheNorm) {
  std::vector<std::vector<float>> grads = {{30.0f, 40.0f}};
  EXPECT_EQ(Clip(ClipOptions{}, Spans(grads)), 50.0);
  EXPECT_THAT(grads[0], ElementsAre(30.0f, 40.0f));
}

TEST(ClipTest, NormFirstThenValueAndReportsThePreClipNorm) {
  // Norm first: (10, 0.1) * ~0.1 = (~1, ~0.01), then the value clip: (0.5, ~0.01). (Value first
  // would have given (0.5, 0.1).)
  std::vector<std::vector<float>> grads = {{10.0f, 0.1f}};
  ClipOptions options;
  options.max_norm = 1.0;
  options.clip_value = 0.5;
  const double pre_clip = std::sqrt(100.0 + static_cast<double>(0.1f) * 0.1f);
  EXPECT_EQ(Clip(options, Spans(grads)), pre_clip);
  EXPECT_EQ(grads[0][0], 0.5f);
  EXPECT_NEAR(grads[0][1], 0.1 / pre_clip, 1e-8);
}

TEST(ClipTest, ValueOnly) {
  std::vector<std::vector<float>> grads = {{3.0f, -4.0f}};
  ClipOptions options;
  options.clip_value = 2.0;
  EXPECT_EQ(Clip(options, Spans(grads)), 5.0);
  EXPECT_THAT(grads[0], ElementsAre(2.0f, -2.0f));
}

TEST(ClipOptionsTest, Validation) {
  EXPECT_OK(ClipOptions{}.Validate());
  ClipOptions o;
  o.max_norm = 1.0;
  o.clip_value = 0.5;
  EXPECT_OK(o.Validate());

  o = ClipOptions{};
  o.max_norm = -1;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(o.Validate().message(), "clipping.max_norm = -1 is out of range: must be >= 0");
  o.max_norm = kInf;
  EXPECT_EQ(o.Validate().message(), "clipping.max_norm = inf is out of range: must be finite and >= 0");
  o.max_norm = kNan;
  EXPECT_EQ(o.Validate().message(), "clipping.max_norm = nan is out of range: must be finite and >= 0");

  o = ClipOptions{};
  o.clip_value = -0.001;
  EXPECT_EQ(o.Validate().message(), "clipping.clip_value = -0.001 is out of range: must be >= 0");
  o.clip_value = -kInf;
  EXPECT_EQ(o.Validate().message(),
            "clipping.clip_value = -inf is out of range: must be finite and >= 0");
}

}  // namespace
}  // namespace optd
