// File: lr_free_internal.h
//
// Internal to server/optim: the element operations of torch 1.13's CPU kernels that the
// learning-rate-free optimizers (prodigy.cc, dadapt_*.cc, dog.cc, schedule_free_*.cc, muon.cc,
// adafactor.cc) compose, each rounded as torch rounds it (reference/optimizers-lr-free.md
// section 9), and the refusal of row-sparse gradients they share. Stateless; thread-safe.

#ifndef OPTD_SERVER_OPTIM_LR_FREE_INTERNAL_H_
#define OPTD_SERVER_OPTIM_LR_FREE_INTERNAL_H_

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

// The kernels of these optimizers are compiled twice, like OPTD_SIMD_CLONES, but for x86-64-v3
// (AVX2 with FMA) rather than AVX2 alone: their element operations are torch's fused multiply-adds
// (std::fma), one instruction there and a library call without it, and their non-finite counts
// are 8 int32 lanes, which need AVX2 (an "fma" clone has AVX's 8 float lanes but only 4 integer
// ones, and the compiler then ran whole loops 4 wide). GCC 12 picks the clone by the CPU's
// x86-64-v3 feature bit at load time (not by CPU model: it is chosen on AMD too); the baseline
// clone runs where the CPU lacks it. std::fma rounds once in both (a library call in the
// baseline), so both clones give the same bits, and one CPU always runs the same clone: results
// are the same whatever the thread count.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OPTD_FMA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
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

// torch.lerp(a, b, w): two branches, each one rounding after b - a: fma(w, diff, a) for |w| <
// 0.5, else fma(-diff, 1 - w, b). Written as one FMA whose operands are selected, so that a loop
// with a lerp has no branch and vectorises: diff * -(1 - w) is the same product as -diff * (1 - w)
// (sign and zero's sign included), so the bits are the branches'.
OPTD_LR_FREE_INLINE float Lerp(float a, float b, float w) {
  const float diff = b - a;
  const bool near_a = std::abs(w) < 0.5f;
  const float far_w = -(1.0f - w);  // computed whatever the branch: GCC will not speculate it
  return std::fma(diff, near_a ? w : far_w, near_a ? a : b);
}

// Runs element(i) for i in [0, n), which does the element's work and returns its kWidth terms,
// and returns the kWidth sums of the terms in double, in a fixed order: eight interleaved partial
// sums (term i goes to lane i % 8), combined pairwise, then the tail (the last n % 8 terms, in
// order). The same bits for the same n and terms, whoever calls it.
//
// The eight lanes are one vector loop (8 floats, 2 x 4 doubles). "unroll 1" keeps GCC from
// unrolling it into eight scalar elements before it vectorises, which it did when the element was
// small (DoG's and D-Adaptation SGD's sums, once their weight-decay test became a template
// parameter), and then vectorised little of it.
template <int kWidth, typename Element>
OPTD_LR_FREE_INLINE std::array<double, kWidth> LaneSums(int64_t n, Element&& element) {
  constexpr int kLanes = 8;
  double acc[kWidth][kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma GCC unroll 1
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
