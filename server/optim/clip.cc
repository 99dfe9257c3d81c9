#include "server/optim/clip.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "base/thread_pool.h"
#include "server/optim/kernel_internal.h"
#include "server/optim/model_segments.h"
#include "server/optim/range_check.h"

namespace optd {
namespace {

// torch clip_grad_norm_'s fixed guard, added to the norm.
constexpr double kNormEps = 1e-6;

using Segment = ModelSegments::Segment;

OPTD_SIMD_CLONES
double SquaresOf(const float* __restrict x, int64_t n) {
  return optim_internal::SumOfSquares(x, n);
}

OPTD_SIMD_CLONES
void ScaleAndClamp(float* __restrict x, int64_t n, float coef, float hi) {
  const float lo = -hi;
  for (int64_t i = 0; i < n; ++i) {
    const float y = x[i] * coef;
    // Comparisons with NaN are false, so NaN passes through unchanged (torch's clamp_).
    const float low = y < lo ? lo : y;
    x[i] = low > hi ? hi : low;
  }
}

// The tensor sizes of `grads`, for their layout.
template <typename T>
std::vector<int64_t> SizesOf(absl::Span<const absl::Span<T>> grads) {
  std::vector<int64_t> sizes;
  sizes.reserve(grads.size());
  for (const absl::Span<T> g : grads) sizes.push_back(static_cast<int64_t>(g.size()));
  return sizes;
}

}  // namespace

absl::Status ClipOptions::Validate() const {
  absl::Status status =
      optim_internal::CheckDouble(kName, "max_norm", max_norm, optim_internal::kNonNegative);
  if (!status.ok()) return status;
  return optim_internal::CheckDouble(kName, "clip_value", clip_value, optim_internal::kNonNegative);
}

double SquaredNorm(absl::Span<const float> values) {
  return FillAndSquaredNorm(values.size(), {}, values.data());
}

double FillAndSquaredNorm(int64_t n, const std::function<void(int64_t begin, int64_t end)>& fill,
                          const float* values) {
  const ModelSegments layout({n});
  return layout.SumOverModel<1>(ThreadPool::Default(), [&](const Segment& s) {
    if (fill) fill(s.begin, s.end);
    return std::array<double, 1>{SquaresOf(values + s.begin, s.end - s.begin)};
  })[0];
}

double GlobalNorm(absl::Span<const absl::Span<const float>> grads) {
  const ModelSegments layout(SizesOf(grads));
  return std::sqrt(layout.SumOverModel<1>(ThreadPool::Default(), [&](const Segment& s) {
    return std::array<double, 1>{SquaresOf(grads[s.tensor].data() + s.begin, s.end - s.begin)};
  })[0]);
}

namespace {

// torch clip_grad_norm_'s coefficient for a norm of `norm`. std::min keeps a NaN coefficient (NaN
// norm), as torch's clamp does.
double NormCoefficient(double max_norm, double norm) {
  return std::min(max_norm / (norm + kNormEps), 1.0);
}

constexpr double kNoClamp = std::numeric_limits<double>::infinity();

// Every element times `coef` (skipped when it is 1: multiplying by 1 changes nothing; `!(coef >=
// 1)` is also true for NaN), then clamped to [-hi, hi] (kNoClamp: not clamped).
void ScaleAndClamp(const ModelSegments& layout, absl::Span<const absl::Span<float>> grads,
                   double coef, double hi, ThreadPool* pool) {
  const bool scale = !(coef >= 1.0);
  if (!scale && hi == kNoClamp) return;
  const float factor = scale ? static_cast<float>(coef) : 1.0f;
  const float bound = static_cast<float>(hi);
  layout.Run(pool, [&](const Segment& s) {
    ScaleAndClamp(grads[s.tensor].data() + s.begin, s.end - s.begin, factor, bound);
  });
}

}  // namespace

void ClipToNorm(const ClipOptions& options, double norm, const ModelSegments& layout,
                absl::Span<const absl::Span<float>> grads, ThreadPool* pool) {
  const double coef = options.max_norm > 0 ? NormCoefficient(options.max_norm, norm) : 1.0;
  ScaleAndClamp(layout, grads, coef, options.clip_value > 0 ? options.clip_value : kNoClamp, pool);
}

double Clip(const ClipOptions& options, absl::Span<const absl::Span<float>> grads) {
  const std::vector<absl::Span<const float>> views(grads.begin(), grads.end());
  const double norm = GlobalNorm(views);
  ClipToNorm(options, norm, ModelSegments(SizesOf(grads)), grads);
  return norm;
}

double ClipByGlobalNorm(absl::Span<const absl::Span<float>> grads, double max_norm) {
  // Not Clip: there max_norm = 0 is "off", here it zeroes the gradients, as in torch.
  const std::vector<absl::Span<const float>> views(grads.begin(), grads.end());
  const double norm = GlobalNorm(views);
  ScaleAndClamp(ModelSegments(SizesOf(grads)), grads, NormCoefficient(max_norm, norm), kNoClamp,
                ThreadPool::Default());
  return norm;
}

void ClipByValue(absl::Span<const absl::Span<float>> grads, double clip_value) {
  ScaleAndClamp(ModelSegments(SizesOf(grads)), grads, 1.0, clip_value, ThreadPool::Default());
}

}  // namespace optd
