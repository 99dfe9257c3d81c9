#include "server/optim/adadelta.h"

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
struct AdadeltaCoefficients {
  float sign;  // -1 if maximize, else 1
  float weight_decay;
  float rho;
  float one_minus_rho;
  float eps;
  float neg_lr;
};

// One fused pass, in torch's op order (mul_ then addcmul_, add(eps).sqrt_(), div_ then mul_,
// add_ with alpha = -lr). Returns how many p it left non-finite.
template <bool kWeightDecay>
OPTD_SIMD_CLONES int64_t AdadeltaKernel(float* __restrict p, const float* __restrict g,
                                        float* __restrict square_avg, float* __restrict acc_delta,
                                        int64_t n, const AdadeltaCoefficients& c) {
  const float sign = c.sign;
  const float weight_decay = c.weight_decay;
  const float rho = c.rho;
  const float one_minus_rho = c.one_minus_rho;
  const float eps = c.eps;
  const float neg_lr = c.neg_lr;
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    float d = sign * g[i];
    if constexpr (kWeightDecay) d += weight_decay * p[i];
    const float sq = rho * square_avg[i] + (one_minus_rho * d) * d;
    square_avg[i] = sq;
    const float acc = acc_delta[i];
    const float delta = std::sqrt(acc + eps) / std::sqrt(sq + eps) * d;
    acc_delta[i] = rho * acc + (one_minus_rho * delta) * delta;
    const float p_new = p[i] + neg_lr * delta;
    p[i] = p_new;
    non_finite += IsNonFinite(p_new);
  }
  return non_finite;
}

}  // namespace

Adadelta::Adadelta(const AdadeltaOptions& options, std::vector<int64_t> tensor_sizes)
    : Optimizer(std::move(tensor_sizes)), options_(options), state_(this->tensor_sizes().size()) {}

Optimizer::StateRefs Adadelta::StateOf(size_t tensor) {
  TensorState& s = state_[tensor];
  return {&s.step, {{"square_avg", &s.square_avg}, {"acc_delta", &s.acc_delta}}, {}};
}

int64_t Adadelta::StateBytesPerElement() const { return static_cast<int64_t>(2 * sizeof(float)); }

void Adadelta::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  AdadeltaCoefficients c;
  c.sign = options_.maximize ? -1.0f : 1.0f;
  c.weight_decay = static_cast<float>(options_.weight_decay);
  c.rho = static_cast<float>(options_.rho);
  c.one_minus_rho = static_cast<float>(1.0 - options_.rho);
  c.eps = static_cast<float>(options_.eps);
  c.neg_lr = static_cast<float>(-lr);
  const bool has_weight_decay = options_.weight_decay != 0.0;

  // State is created before the loop, which runs on the pool.
  for (size_t t = 0; t < tensors.size(); ++t) {
    TensorState& s = state_[t];
    if (s.step == 0) {
      const size_t n = tensors[t].param.size();
      s.square_avg.assign(n, 0.0f);
      s.acc_delta.assign(n, 0.0f);
    }
    ++s.step;
  }

  UpdateSegments([&](const Segment& seg) {
    TensorState& s = state_[seg.tensor];
    float* p = tensors[seg.tensor].param.data() + seg.begin;
    const float* g = tensors[seg.tensor].grad.data() + seg.begin;
    return DispatchBool(has_weight_decay, [&](auto kWd) {
      return AdadeltaKernel<decltype(kWd)::value>(p, g, s.square_avg.data() + seg.begin,
                                                  s.acc_delta.data() + seg.begin,
                                                  seg.end - seg.begin, c);
    });
  });
}

}  // namespace optd
