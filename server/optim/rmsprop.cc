#include "server/optim/rmsprop.h"

#include <algorithm>
#include <cmath>
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
struct RmspropCoefficients {
  float sign;  // -1 if maximize, else 1
  float weight_decay;
  float alpha;
  float one_minus_alpha;
  float eps;
  float momentum;
  float neg_lr;
};

// One fused pass, in torch's op order (mul_ then addcmul_ / add_, addcmul(value=-1).sqrt_(),
// add_(eps), then mul_ and addcdiv_ into the buffer or addcdiv_ into p). Returns how many p it
// left non-finite.
template <bool kWeightDecay, bool kCentered, bool kMomentum>
OPTD_SIMD_CLONES int64_t RmspropKernel(float* __restrict p, const float* __restrict g,
                                       float* __restrict square_avg, float* __restrict grad_avg,
                                       float* __restrict buf, int64_t n,
                                       const RmspropCoefficients& c) {
  const float sign = c.sign;
  const float weight_decay = c.weight_decay;
  const float alpha = c.alpha;
  const float one_minus_alpha = c.one_minus_alpha;
  const float eps = c.eps;
  const float momentum = c.momentum;
  const float neg_lr = c.neg_lr;
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    float d = sign * g[i];
    if constexpr (kWeightDecay) d += weight_decay * p[i];
    const float sq = alpha * square_avg[i] + (one_minus_alpha * d) * d;
    square_avg[i] = sq;
    float avg;
    if constexpr (kCentered) {
      const float ga = alpha * grad_avg[i] + one_minus_alpha * d;
      grad_avg[i] = ga;
      // Keeps a NaN (max returns its first argument when the comparison is false).
      avg = std::sqrt(std::max(sq - ga * ga, 0.0f));
    } else {
      avg = std::sqrt(sq);
    }
    avg += eps;
    float p_new;
    if constexpr (kMomentum) {
      const float b = momentum * buf[i] + d / avg;
      buf[i] = b;
      p_new = p[i] + neg_lr * b;
    } else {
      p_new = p[i] + (neg_lr * d) / avg;
    }
    p[i] = p_new;
    non_finite += IsNonFinite(p_new);
  }
  return non_finite;
}

}  // namespace

Rmsprop::Rmsprop(const RmspropOptions& options, std::vector<int64_t> tensor_sizes)
    : Optimizer(std::move(tensor_sizes)), options_(options), state_(this->tensor_sizes().size()) {}

std::string_view Rmsprop::StructuralChange(const OptimizerOptions& options) const {
  // As in torch, the momentum buffer and grad_avg are created with a tensor's first step.
  const RmspropOptions& o = std::get<RmspropOptions>(options);
  if ((o.momentum != 0.0) != (options_.momentum != 0.0)) return "momentum";
  if (o.centered != options_.centered) return "centered";
  return "";
}

Optimizer::StateRefs Rmsprop::StateOf(size_t tensor) {
  TensorState& s = state_[tensor];
  StateRefs refs{&s.step, {{"square_avg", &s.square_avg}}, {}};
  if (options_.momentum != 0.0) refs.arrays.push_back({"momentum_buffer", &s.momentum_buffer});
  if (options_.centered) refs.arrays.push_back({"grad_avg", &s.grad_avg});
  return refs;
}

int64_t Rmsprop::StateBytesPerElement() const {
  const int buffers = 1 + (options_.momentum != 0.0 ? 1 : 0) + (options_.centered ? 1 : 0);
  return static_cast<int64_t>(buffers * sizeof(float));
}

void Rmsprop::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  RmspropCoefficients c;
  c.sign = options_.maximize ? -1.0f : 1.0f;
  c.weight_decay = static_cast<float>(options_.weight_decay);
  c.alpha = static_cast<float>(options_.alpha);
  c.one_minus_alpha = static_cast<float>(1.0 - options_.alpha);
  c.eps = static_cast<float>(options_.eps);
  c.momentum = static_cast<float>(options_.momentum);
  c.neg_lr = static_cast<float>(-lr);
  const bool has_weight_decay = options_.weight_decay != 0.0;
  const bool has_momentum = options_.momentum != 0.0;

  // State is created before the loop, which runs on the pool.
  for (size_t t = 0; t < tensors.size(); ++t) {
    TensorState& s = state_[t];
    if (s.step == 0) {
      const size_t n = tensors[t].param.size();
      s.square_avg.assign(n, 0.0f);
      if (has_momentum) s.momentum_buffer.assign(n, 0.0f);
      if (options_.centered) s.grad_avg.assign(n, 0.0f);
    }
    ++s.step;
  }

  UpdateSegments([&](const Segment& seg) {
    TensorState& s = state_[seg.tensor];
    float* p = tensors[seg.tensor].param.data() + seg.begin;
    const float* g = tensors[seg.tensor].grad.data() + seg.begin;
    float* grad_avg = options_.centered ? s.grad_avg.data() + seg.begin : nullptr;
    float* buf = has_momentum ? s.momentum_buffer.data() + seg.begin : nullptr;
    return DispatchBool(has_weight_decay, [&](auto kWd) {
      return DispatchBool(options_.centered, [&](auto kCentered) {
        return DispatchBool(has_momentum, [&](auto kMomentum) {
          return RmspropKernel<decltype(kWd)::value, decltype(kCentered)::value,
                               decltype(kMomentum)::value>(p, g, s.square_avg.data() + seg.begin,
                                                           grad_avg, buf, seg.end - seg.begin, c);
        });
      });
    });
  });
}

}  // namespace optd
