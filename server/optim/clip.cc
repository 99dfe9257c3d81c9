#include "server/optim/clip.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/optim/range_check.h"

namespace optd {
namespace {

// torch clip_grad_norm_'s fixed guard, added to the norm.
constexpr double kNormEps = 1e-6;

// Sum of squares of `g` in double, with four independent accumulators so that the loop is not one
// long dependency chain.
double SumOfSquares(absl::Span<const float> g) {
  double acc[4] = {0, 0, 0, 0};
  const size_t n = g.size();
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (size_t j = 0; j < 4; ++j) {
      const double x = g[i + j];
      acc[j] += x * x;
    }
  }
  for (; i < n; ++i) {
    const double x = g[i];
    acc[0] += x * x;
  }
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
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

double GlobalNorm(absl::Span<const absl::Span<const float>> grads) {
  double sum = 0;
  for (const absl::Span<const float> g : grads) sum += SumOfSquares(g);
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
