// File: lr_free_internal.h
//
// Internal to server/optim: the element operations of torch 1.13's CPU kernels that the
// learning-rate-free optimizers (prodigy.cc, dadapt_*.cc, dog.cc, schedule_free_*.cc, muon.cc,
// adafactor.cc) compose, each rounded as torch rounds it (reference/optimizers-lr-free.md
// section 9), and the refusal of row-sparse gradients they share. Stateless; thread-safe.

#ifndef OPTD_SERVER_OPTIM_LR_FREE_INTERNAL_H_
#define OPTD_SERVER_OPTIM_LR_FREE_INTERNAL_H_

#include <array>
#include <cmath>
#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

// The kernels of these optimizers are compiled twice, like OPTD_SIMD_CLONES, but for FMA (which
// brings AVX) rather than AVX2: their element operations are torch's fused multiply-adds
// (std::fma), one instruction there and a library call without it. The clone is chosen by the
// CPU's feature bits at load time (an "arch=" clone would be chosen by CPU model, and never on
// AMD); the baseline clone runs where the CPU has no FMA. One CPU always runs the same clone, so
// results are the same bits whatever the thread count.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OPTD_FMA_CLONES __attribute__((target_clones("fma", "default")))
#else
#define OPTD_FMA_CLONES
#endif

// The element operations below are inlined into every clone, which compiles them for its target.
#define OPTD_LR_FREE_INLINE inline __attribute__((always_inline))

namespace optd {
namespace optim_internal {

// a.add_(x, alpha): one FMA.
OPTD_LR_FREE_INLINE float AddScaled(float a, float x, float alpha) { return std::fma(alpha, x, a); }

// a.mul_(beta).add_(x, alpha): round(beta * a), then one FMA.
OPTD_LR_FREE_INLINE float MulAdd(float a, float beta, float x, float alpha) {
  return std::fma(alpha, x, beta * a);
}

// a.addcmul_(t1, t2, value): fma(round(value * t1), t2, a).
OPTD_LR_FREE_INLINE float AddCmul(float a, float t1, float t2, float value) {
  return std::fma(value * t1, t2, a);
}

// a.addcdiv_(t1, t2, value): a + round(round(value * t1) / t2), no FMA.
OPTD_LR_FREE_INLINE float AddCdiv(float a, float t1, float t2, float value) {
  return a + (value * t1) / t2;
}

// torch.lerp(a, b, w): two branches, each one rounding after b - a.
OPTD_LR_FREE_INLINE float Lerp(float a, float b, float w) {
  const float diff = b - a;
  return std::abs(w) < 0.5f ? std::fma(w, diff, a) : std::fma(-diff, 1.0f - w, b);
}

// Runs element(i) for i in [0, n), which does the element's work and returns its kWidth terms,
// and returns the kWidth sums of the terms in double, in a fixed order: eight interleaved partial
// sums (which vectorise, as SumOfSquares's), combined pairwise, then the tail. The same bits for
// the same n and terms, whoever calls it.
template <int kWidth, typename Element>
OPTD_LR_FREE_INLINE std::array<double, kWidth> LaneSums(int64_t n, Element&& element) {
  constexpr int kLanes = 8;
  double acc[kWidth][kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const std::array<double, kWidth> t = element(i + j);
      for (int k = 0; k < kWidth; ++k) acc[k][j] += t[k];
    }
  }
  std::array<double, kWidth> sums;
  for (int k = 0; k < kWidth; ++k) {
    sums[k] = ((acc[k][0] + acc[k][1]) + (acc[k][2] + acc[k][3])) +
              ((acc[k][4] + acc[k][5]) + (acc[k][6] + acc[k][7]));
  }
  for (; i < n; ++i) {
    const std::array<double, kWidth> t = element(i);
    for (int k = 0; k < kWidth; ++k) sums[k] += t[k];
  }
  return sums;
}

// The refusal of row-sparse gradients by an optimizer that reduces over every element.
inline absl::Status NeedsDenseGradients(std::string_view optimizer, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s refuses row-sparse gradients: %s needs every element's gradient in every step (send "
      "dense gradients)",
      optimizer, why));
}

// The refusal of a partial step (some tensors without a gradient, torch's grad None) by an
// optimizer whose model-wide estimate sums over every tensor's state in every step.
inline absl::Status RefusesPartialSteps(std::string_view optimizer, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s refuses a partial step (a gradient for some tensors only): %s, so leaving a tensor out "
      "would not be the same as upstream skipping it; send a gradient for every tensor (zeros "
      "included) or use another optimizer",
      optimizer, why));
}

}  // namespace optim_internal
}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_LR_FREE_INTERNAL_H_
