#include "server/optim/lion.h"

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "server/optim/kernel_internal.h"

namespace optd {
namespace {

using optim_internal::DispatchBool;
using optim_internal::IsNonFinite;
using optim_internal::NonFiniteCount;

// The float32 coefficients of one step, computed in double and rounded once.
struct LionCoefficients {
  float decay;  // 1 - lr * weight_decay
  float beta1;
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float neg_lr;
};

// One fused pass, in lion-pytorch's op order: p.mul_(decay), c = m * beta1 + g * (1 - beta1),
// p.add_(sign(c), alpha=-lr), m.mul_(beta2).add_(g, alpha=1 - beta2). Returns how many p it left
// non-finite.
template <bool kWeightDecay>
OPTD_SIMD_CLONES int64_t LionKernel(float* __restrict p, const float* __restrict g,
                                    float* __restrict m, int64_t n, const LionCoefficients& c) {
  const float decay = c.decay;
  const float beta1 = c.beta1;
  const float one_minus_beta1 = c.one_minus_beta1;
  const float beta2 = c.beta2;
  const float one_minus_beta2 = c.one_minus_beta2;
  const float neg_lr = c.neg_lr;
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    float pi = p[i];
    if constexpr (kWeightDecay) pi *= decay;
    const float gi = g[i];
    const float mi = m[i];
    const float interpolated = beta1 * mi + one_minus_beta1 * gi;
    // sign(), branch-free so the loop vectorises; 0 for 0.
    const float sign = (interpolated > 0.0f ? 1.0f : 0.0f) - (interpolated < 0.0f ? 1.0f : 0.0f);
    const float p_new = pi + neg_lr * sign;
    p[i] = p_new;
    m[i] = beta2 * mi + one_minus_beta2 * gi;
    non_finite += IsNonFinite(p_new);
  }
  return non_finite;
}

}  // namespace

Lion::Lion(const LionOptions& options, std::vector<int64_t> tensor_sizes)
    : Optimizer(std::move(tensor_sizes)),
      options_(options),
      exp_avgs_(this->tensor_sizes().size()) {}

Optimizer::StateRefs Lion::StateOf(size_t tensor) {
  return {nullptr, {{"exp_avg", &exp_avgs_[tensor]}}, {}};
}

int64_t Lion::StateBytesPerElement() const { return static_cast<int64_t>(sizeof(float)); }

void Lion::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  LionCoefficients c;
  c.decay = static_cast<float>(1.0 - lr * options_.weight_decay);
  c.beta1 = static_cast<float>(options_.beta1);
  c.one_minus_beta1 = static_cast<float>(1.0 - options_.beta1);
  c.beta2 = static_cast<float>(options_.beta2);
  c.one_minus_beta2 = static_cast<float>(1.0 - options_.beta2);
  c.neg_lr = static_cast<float>(-lr);
  // weight_decay == 0 multiplies p by exactly 1: skipping it changes nothing.
  const bool has_weight_decay = options_.weight_decay != 0.0;

  // State is created before the loop, which runs on the pool.
  for (size_t t = 0; t < tensors.size(); ++t) {
    if (exp_avgs_[t].empty()) exp_avgs_[t].assign(tensors[t].param.size(), 0.0f);
  }

  UpdateSegments([&](const Segment& seg) {
    float* p = tensors[seg.tensor].param.data() + seg.begin;
    const float* g = tensors[seg.tensor].grad.data() + seg.begin;
    float* m = exp_avgs_[seg.tensor].data() + seg.begin;
    return DispatchBool(has_weight_decay, [&](auto kWd) {
      return LionKernel<decltype(kWd)::value>(p, g, m, seg.end - seg.begin, c);
    });
  });
}

}  // namespace optd
