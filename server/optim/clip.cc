#include "server/optim/clip.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "base/thread_pool.h"
#include "server/optim/kernel_internal.h"
#include "server/optim/optimizer.h"
#include "server/optim/range_check.h"

namespace optd {
namespace {

// torch clip_grad_norm_'s fixed guard, added to the norm.
constexpr double kNormEps = 1e-6;

// SquaredNorm's spans of at least this many elements are cut into blocks of kBlockElements and
// summed on the pool (the same sizes as Optimizer's).
constexpr int64_t kParallelMinElements = Optimizer::kParallelMinElements;
constexpr int64_t kBlockElements = Optimizer::kBlockElements;

OPTD_SIMD_CLONES
double SquaresOf(const float* __restrict x, int64_t n) {
  return optim_internal::SumOfSquares(x, n);
}

void Scale(absl::Span<const absl::Span<float>> grads, float coef) {
  for (const absl::Span<float> g : grads) {
    for (float& x : g) x *= coef;
  }
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
  auto block = [&](int64_t begin, int64_t end) {
    if (fill) fill(begin, end);
    return SquaresOf(values + begin, end - begin);
  };
  if (n < kParallelMinElements) return block(0, n);
  // One partial per block, added in block order: the same bits whatever the pool size.
  std::vector<double> partials((n + kBlockElements - 1) / kBlockElements);
  ThreadPool::Default()->ParallelFor(n, kBlockElements, [&](int64_t begin, int64_t end) {
    partials[begin / kBlockElements] = block(begin, end);
  });
  double sum = 0;
  for (const double partial : partials) sum += partial;
  return sum;
}

double GlobalNorm(absl::Span<const absl::Span<const float>> grads) {
  double sum = 0;
  for (const absl::Span<const float> g : grads) sum += SquaredNorm(g);
  return std::sqrt(sum);
}

namespace {

double GlobalNormOf(absl::Span<const absl::Span<float>> grads) {
  std::vector<absl::Span<const float>> views(grads.begin(), grads.end());
  return GlobalNorm(views);
}

}  // namespace

double ClipByGlobalNorm(absl::Span<const absl::Span<float>> grads, double max_norm) {
  const double total = GlobalNormOf(grads);
  // std::min keeps a NaN coefficient (NaN total), as torch's clamp does.
  const double coef = std::min(max_norm / (total + kNormEps), 1.0);
  // Multiplying by 1 is a no-op; skip the pass. `!(coef >= 1)` is also true for NaN.
  if (!(coef >= 1.0)) Scale(grads, static_cast<float>(coef));
  return total;
}

void ClipByValue(absl::Span<const absl::Span<float>> grads, double clip_value) {
  const float hi = static_cast<float>(clip_value);
  const float lo = -hi;
  for (const absl::Span<float> g : grads) {
    for (float& x : g) {
      // Comparisons with NaN are false, so NaN passes through unchanged (torch's clamp_).
      x = x < lo ? lo : x;
      x = x > hi ? hi : x;
    }
  }
}

double Clip(const ClipOptions& options, absl::Span<const absl::Span<float>> grads) {
  const double total =
      options.max_norm > 0 ? ClipByGlobalNorm(grads, options.max_norm) : GlobalNormOf(grads);
  if (options.clip_value > 0) ClipByValue(grads, options.clip_value);
  return total;
}

}  // namespace optd
