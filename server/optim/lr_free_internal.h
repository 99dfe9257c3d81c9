// File: lr_free_internal.h
//
// Internal to server/optim: the element operations of torch 1.13's CPU kernels that the
// learning-rate-free optimizers (prodigy.cc, dadapt_*.cc, dog.cc, schedule_free_*.cc, muon.cc,
// adafactor.cc) compose, each rounded as torch rounds it (reference/optimizers-lr-free.md
// section 9), and the refusal of row-sparse gradients they share. Stateless; thread-safe.

#ifndef OPTD_SERVER_OPTIM_LR_FREE_INTERNAL_H_
#define OPTD_SERVER_OPTIM_LR_FREE_INTERNAL_H_

#include <cmath>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace optd {
namespace optim_internal {

// a.add_(x, alpha): one FMA.
inline float AddScaled(float a, float x, float alpha) { return std::fma(alpha, x, a); }

// a.mul_(beta).add_(x, alpha): round(beta * a), then one FMA.
inline float MulAdd(float a, float beta, float x, float alpha) {
  return std::fma(alpha, x, beta * a);
}

// a.addcmul_(t1, t2, value): fma(round(value * t1), t2, a).
inline float AddCmul(float a, float t1, float t2, float value) {
  return std::fma(value * t1, t2, a);
}

// a.addcdiv_(t1, t2, value): a + round(round(value * t1) / t2), no FMA.
inline float AddCdiv(float a, float t1, float t2, float value) { return a + (value * t1) / t2; }

// torch.lerp(a, b, w): two branches, each one rounding after b - a.
inline float Lerp(float a, float b, float w) {
  const float diff = b - a;
  return std::abs(w) < 0.5f ? std::fma(w, diff, a) : std::fma(-diff, 1.0f - w, b);
}

// The refusal of row-sparse gradients by an optimizer that reduces over every element.
inline absl::Status NeedsDenseGradients(std::string_view optimizer, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s refuses row-sparse gradients: %s needs every element's gradient in every step (send "
      "dense gradients)",
      optimizer, why));
}

}  // namespace optim_internal
}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_LR_FREE_INTERNAL_H_
