#include "server/optim/lars.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "server/optim/kernel_internal.h"

namespace optd {
namespace {

using optim_internal::DispatchBool;
using optim_internal::FitsFloat;
using optim_internal::IsNonFinite;
using optim_internal::NonFiniteCount;
using optim_internal::SumOfSquares;

// Pass 1 works on tiles this long: u goes to a stack buffer for the norm, then is dropped.
constexpr int64_t kTile = 256;

// u = g + weight_decay * p. Both passes compute it with this expression, so they agree on u.
inline float Direction(float g, float p, float weight_decay) { return g + weight_decay * p; }

// Pass 1 on one segment: returns {||p||^2, ||u||^2} of the segment.
std::array<double, 2> Norms(const float* p, const float* g, int64_t n, float weight_decay,
                            bool has_weight_decay) {
  std::array<double, 2> sums = {SumOfSquares(p, n), 0.0};
  if (!has_weight_decay) {
    sums[1] = SumOfSquares(g, n);
    return sums;
  }
  float u[kTile];
  for (int64_t begin = 0; begin < n; begin += kTile) {
    const int64_t len = std::min(kTile, n - begin);
    for (int64_t i = 0; i < len; ++i) u[i] = Direction(g[begin + i], p[begin + i], weight_decay);
    sums[1] += SumOfSquares(u, len);
  }
  return sums;
}

// Pass 2, with step = lr * trust in float, or in double when a float cannot hold it. Returns how
// many p it left non-finite.
template <bool kWeightDecay, bool kMomentum, bool kNesterov, typename Coefficient>
OPTD_SIMD_CLONES int64_t Update(float* __restrict p, const float* __restrict g,
                                float* __restrict buf, int64_t n, float weight_decay,
                                float momentum, Coefficient step) {
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float pi = p[i];
    float u = g[i];
    if constexpr (kWeightDecay) u = Direction(u, pi, weight_decay);
    const Coefficient s = step * u;
    float p_new;
    if constexpr (kMomentum) {
      const Coefficient b = momentum * buf[i] + s;
      buf[i] = static_cast<float>(b);
      if constexpr (kNesterov) {
        p_new = static_cast<float>(pi - (s + momentum * b));
      } else {
        p_new = static_cast<float>(pi - b);
      }
    } else {
      p_new = static_cast<float>(pi - s);
    }
    p[i] = p_new;
    non_finite += IsNonFinite(p_new);
  }
  return non_finite;
}

}  // namespace

Lars::Lars(const LarsOptions& options, std::vector<int64_t> tensor_sizes)
    : Optimizer(std::move(tensor_sizes)),
      options_(options),
      momentum_buffers_(this->tensor_sizes().size()) {}

Optimizer::StateRefs Lars::StateOf(size_t tensor) {
  return {nullptr, {{"momentum_buffer", &momentum_buffers_[tensor]}}, {}};
}

int64_t Lars::StateBytesPerElement() const {
  return options_.momentum != 0.0 ? static_cast<int64_t>(sizeof(float)) : 0;
}

void Lars::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  const float weight_decay = static_cast<float>(options_.weight_decay);
  const float momentum = static_cast<float>(options_.momentum);
  const bool has_weight_decay = options_.weight_decay != 0.0;
  const bool has_momentum = options_.momentum != 0.0;

  // Buffers are created before the passes, which run on the pool.
  if (has_momentum) {
    for (size_t t = 0; t < tensors.size(); ++t) {
      if (momentum_buffers_[t].empty()) momentum_buffers_[t].assign(tensors[t].param.size(), 0.0f);
    }
  }

  // Pass 1: ||p||^2 and ||u||^2 per tensor.
  const std::vector<std::array<double, 2>> norms = SumPerTensor<2>([&](const Segment& seg) {
    return Norms(tensors[seg.tensor].param.data() + seg.begin,
                 tensors[seg.tensor].grad.data() + seg.begin, seg.end - seg.begin, weight_decay,
                 has_weight_decay);
  });

  // lr * trust per tensor, in double.
  std::vector<double> steps(tensors.size());
  for (size_t t = 0; t < tensors.size(); ++t) {
    const double param_norm = std::sqrt(norms[t][0]);
    const double update_norm = std::sqrt(norms[t][1]);
    const double trust =
        param_norm > 0.0 && update_norm > 0.0
            ? options_.trust_coefficient * param_norm / (update_norm + options_.eps)
            : 1.0;
    steps[t] = lr * trust;
  }

  // Pass 2: the momentum buffer and p.
  UpdateSegments([&](const Segment& seg) {
    float* p = tensors[seg.tensor].param.data() + seg.begin;
    const float* g = tensors[seg.tensor].grad.data() + seg.begin;
    float* buf = has_momentum ? momentum_buffers_[seg.tensor].data() + seg.begin : nullptr;
    const int64_t n = seg.end - seg.begin;
    const double step = steps[seg.tensor];
    return DispatchBool(has_weight_decay, [&](auto kWd) {
      return DispatchBool(has_momentum, [&](auto kMomentum) {
        return DispatchBool(options_.nesterov, [&](auto kNesterov) {
          constexpr bool kW = decltype(kWd)::value;
          constexpr bool kM = decltype(kMomentum)::value;
          constexpr bool kN = decltype(kNesterov)::value;
          if (FitsFloat(step)) {
            return Update<kW, kM, kN>(p, g, buf, n, weight_decay, momentum,
                                      static_cast<float>(step));
          }
          return Update<kW, kM, kN>(p, g, buf, n, weight_decay, momentum, step);
        });
      });
    });
  });
}

}  // namespace optd
