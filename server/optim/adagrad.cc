#include "server/optim/adagrad.h"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "server/optim/kernel_internal.h"

namespace optd {
namespace {

using optim_internal::DispatchBool;
using optim_internal::IsNonFinite;
using optim_internal::NonFiniteCount;

// One fused pass over a tensor, in torch's op order (addcmul_, sqrt().add_(eps), addcdiv_).
// Returns how many p it left non-finite.
template <bool kWeightDecay>
OPTD_SIMD_CLONES int64_t AdagradKernel(float* __restrict p, const float* __restrict g,
                                       float* __restrict sum, int64_t n, float sign, float wd,
                                       float neg_clr, float eps) {
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    float d = sign * g[i];
    if constexpr (kWeightDecay) d += wd * p[i];
    const float s = sum[i] + d * d;
    sum[i] = s;
    const float p_new = p[i] + (neg_clr * d) / (std::sqrt(s) + eps);
    p[i] = p_new;
    non_finite += IsNonFinite(p_new);
  }
  return non_finite;
}

}  // namespace

Adagrad::Adagrad(const AdagradOptions& options, std::vector<int64_t> tensor_sizes)
    : Optimizer(std::move(tensor_sizes)), options_(options), state_(this->tensor_sizes().size()) {}

Optimizer::StateRefs Adagrad::StateOf(size_t tensor) {
  TensorState& s = state_[tensor];
  return {&s.step, {{"sum", &s.sum}}, {}};
}

int64_t Adagrad::StateBytesPerElement() const { return static_cast<int64_t>(sizeof(float)); }

absl::StatusOr<RowSparseRule> Adagrad::RowSparse() const {
  if (options_.weight_decay != 0.0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "adagrad.weight_decay = %g is not compatible with row-sparse gradients (as in torch): "
        "must be 0",
        options_.weight_decay));
  }
  return RowSparseRule::kDensify;
}

void Adagrad::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  const float sign = options_.maximize ? -1.0f : 1.0f;
  const float wd = static_cast<float>(options_.weight_decay);
  const float eps = static_cast<float>(options_.eps);
  const bool has_weight_decay = options_.weight_decay != 0.0;

  // State and the per-tensor lr are set up before the loop, which runs on the pool.
  std::vector<float> neg_clr(tensors.size());
  for (size_t t = 0; t < tensors.size(); ++t) {
    TensorState& s = state_[t];
    const int64_t n = static_cast<int64_t>(tensors[t].param.size());
    if (s.step == 0) s.sum.assign(n, static_cast<float>(options_.initial_accumulator_value));
    ++s.step;
    const double clr = lr / (1.0 + static_cast<double>(s.step - 1) * options_.lr_decay);
    neg_clr[t] = static_cast<float>(-clr);
  }

  UpdateSegments([&](const Segment& seg) {
    float* p = tensors[seg.tensor].param.data() + seg.begin;
    const float* g = tensors[seg.tensor].grad.data() + seg.begin;
    float* sum = state_[seg.tensor].sum.data() + seg.begin;
    return DispatchBool(has_weight_decay, [&](auto kWd) {
      return AdagradKernel<decltype(kWd)::value>(p, g, sum, seg.end - seg.begin, sign, wd,
                                                 neg_clr[seg.tensor], eps);
    });
  });
}

}  // namespace optd
