#include "server/optim/sgd.h"

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

// p += neg_lr * (sign * g + wd * p). Plain SGD, no state. Returns how many p it left non-finite.
template <bool kWeightDecay>
OPTD_SIMD_CLONES int64_t SgdKernel(float* __restrict p, const float* __restrict g, int64_t n,
                                   float sign, float wd, float neg_lr) {
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    float d = sign * g[i];
    if constexpr (kWeightDecay) d += wd * p[i];
    const float p_new = p[i] + neg_lr * d;
    p[i] = p_new;
    non_finite += IsNonFinite(p_new);
  }
  return non_finite;
}

// SGD with momentum. On the first step the buffer is a copy of d (torch.clone), with no
// (1 - dampening) factor. Returns how many p it left non-finite.
template <bool kWeightDecay, bool kFirstStep, bool kNesterov>
OPTD_SIMD_CLONES int64_t SgdMomentumKernel(float* __restrict p, const float* __restrict g,
                                           float* __restrict buf, int64_t n, float sign, float wd,
                                           float momentum, float one_minus_dampening,
                                           float neg_lr) {
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    float d = sign * g[i];
    if constexpr (kWeightDecay) d += wd * p[i];
    float b;
    if constexpr (kFirstStep) {
      b = d;
    } else {
      b = momentum * buf[i] + one_minus_dampening * d;
    }
    buf[i] = b;
    float p_new;
    if constexpr (kNesterov) {
      p_new = p[i] + neg_lr * (d + momentum * b);
    } else {
      p_new = p[i] + neg_lr * b;
    }
    p[i] = p_new;
    non_finite += IsNonFinite(p_new);
  }
  return non_finite;
}

}  // namespace

Sgd::Sgd(const SgdOptions& options, std::vector<int64_t> tensor_sizes)
    : Optimizer(std::move(tensor_sizes)),
      options_(options),
      momentum_buffers_(this->tensor_sizes().size()) {}

Optimizer::StateRefs Sgd::StateOf(size_t tensor) {
  // Created at the first step with momentum (torch: momentum_buffer), empty without.
  return {nullptr, {{"momentum_buffer", &momentum_buffers_[tensor]}}, {}};
}

int64_t Sgd::StateBytesPerElement() const {
  return options_.momentum != 0.0 ? static_cast<int64_t>(sizeof(float)) : 0;
}

void Sgd::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  const float sign = options_.maximize ? -1.0f : 1.0f;
  const float wd = static_cast<float>(options_.weight_decay);
  const float neg_lr = static_cast<float>(-lr);
  const float momentum = static_cast<float>(options_.momentum);
  const float one_minus_dampening = static_cast<float>(1.0 - options_.dampening);
  const bool has_weight_decay = options_.weight_decay != 0.0;

  if (options_.momentum == 0.0) {
    UpdateSegments([&](const Segment& s) {
      float* p = tensors[s.tensor].param.data() + s.begin;
      const float* g = tensors[s.tensor].grad.data() + s.begin;
      return DispatchBool(has_weight_decay, [&](auto kWd) {
        return SgdKernel<decltype(kWd)::value>(p, g, s.end - s.begin, sign, wd, neg_lr);
      });
    });
    return;
  }

  // Buffers are created (and first steps decided) before the loop, which runs on the pool.
  std::vector<char> first_step(tensors.size());
  for (size_t t = 0; t < tensors.size(); ++t) {
    std::vector<float>& buf = momentum_buffers_[t];
    first_step[t] = buf.empty();
    if (buf.empty()) buf.resize(tensors[t].param.size());
  }
  UpdateSegments([&](const Segment& s) {
    float* p = tensors[s.tensor].param.data() + s.begin;
    const float* g = tensors[s.tensor].grad.data() + s.begin;
    float* buf = momentum_buffers_[s.tensor].data() + s.begin;
    const int64_t n = s.end - s.begin;
    return DispatchBool(has_weight_decay, [&](auto kWd) {
      return DispatchBool(first_step[s.tensor], [&](auto kFirst) {
        return DispatchBool(options_.nesterov, [&](auto kNesterov) {
          return SgdMomentumKernel<decltype(kWd)::value, decltype(kFirst)::value,
                                   decltype(kNesterov)::value>(p, g, buf, n, sign, wd, momentum,
                                                               one_minus_dampening, neg_lr);
        });
      });
    });
  });
}

}  // namespace optd
