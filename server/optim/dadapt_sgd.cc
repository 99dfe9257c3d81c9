#include "server/optim/dadapt_sgd.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "server/optim/kernel_internal.h"
#include "server/optim/lr_free_internal.h"

namespace optd {
namespace {

using optim_internal::AddScaled;
using optim_internal::DispatchBool;
using optim_internal::IsNonFinite;
using optim_internal::MulAdd;
using optim_internal::NonFiniteCount;
using optim_internal::SumOfSquares;

// Phase 1 on n elements: returns {<g, s_old>, ||s_new||^2}. kDecay: wd != 0 (else p is not read).
template <bool kDecay>
OPTD_FMA_CLONES std::array<double, 2> Accumulate(const float* __restrict p,
                                                 const float* __restrict g, float* __restrict s,
                                                 int64_t n, float wd, float dlr) {
  return optim_internal::LaneSums<2>(n, [&](int64_t i) {
    const float gi = kDecay ? AddScaled(g[i], p[i], wd) : g[i];
    const double term = static_cast<double>(gi) * static_cast<double>(s[i]);
    const float si = AddScaled(s[i], gi, dlr);
    s[i] = si;
    return std::array<double, 2>{term, static_cast<double>(si) * static_cast<double>(si)};
  });
}

OPTD_FMA_CLONES int64_t Finish(float* __restrict p, float* __restrict z, const float* __restrict x0,
                               const float* __restrict s, int64_t n, float momentum,
                               float one_minus_momentum) {
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float zi = x0[i] - s[i];
    z[i] = zi;
    const float pi = MulAdd(p[i], momentum, zi, one_minus_momentum);
    p[i] = pi;
    non_finite += IsNonFinite(pi);
  }
  return non_finite;
}

}  // namespace

DAdaptSgd::DAdaptSgd(const DAdaptSgdOptions& options, std::vector<int64_t> tensor_sizes)
    : Optimizer(std::move(tensor_sizes)),
      options_(options),
      state_(this->tensor_sizes().size()),
      d_(options.d0) {}

absl::Status DAdaptSgd::PartialSteps() const {
  return optim_internal::RefusesPartialSteps("dadapt_sgd",
                                             "its estimate of d sums every tensor's s each step");
}

absl::StatusOr<RowSparseRule> DAdaptSgd::RowSparse() const {
  return optim_internal::NeedsDenseGradients("dadapt_sgd", "the estimate of d");
}

std::vector<std::pair<std::string, double>> DAdaptSgd::Estimates() const {
  return {{"d", d_}, {"effective_lr", g0_norm_ > 0.0 ? d_ * options_.lr / g0_norm_ : 0.0}};
}

Optimizer::StateRefs DAdaptSgd::StateOf(size_t tensor) {
  TensorState& s = state_[tensor];
  return {nullptr, {{"s", &s.s}, {"x0", &s.x0}, {"z", &s.z}}, {}};
}

std::vector<std::pair<std::string_view, double*>> DAdaptSgd::GlobalScalars() {
  return {
      {"d", &d_}, {"numerator_weighted", &numerator_weighted_}, {"g0_norm", &g0_norm_}, {"k", &k_}};
}

void DAdaptSgd::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  const DAdaptSgdOptions& o = options_;
  if (k_ == 0.0) {
    const std::array<double, 1> squares = SumOverModel<1>([&](const Segment& seg) {
      return std::array<double, 1>{
          SumOfSquares(tensors[seg.tensor].grad.data() + seg.begin, seg.end - seg.begin)};
    });
    if (squares[0] == 0.0) return;  // g0_norm would be 0: see the header
    g0_norm_ = std::sqrt(squares[0]);
  }
  const double d = d_;
  const double dlr = d * lr / g0_norm_;

  for (size_t t = 0; t < tensors.size(); ++t) {
    TensorState& s = state_[t];
    if (!s.s.empty()) continue;
    s.z.assign(tensors[t].param.begin(), tensors[t].param.end());
    s.x0 = s.z;
    s.s.assign(s.z.size(), 0.0f);
  }

  const float wd = static_cast<float>(o.weight_decay);
  const float dlr_f = static_cast<float>(dlr);
  const std::array<double, 2> sums = SumOverModel<2>([&](const Segment& seg) {
    const int64_t b = seg.begin;
    return DispatchBool(wd != 0.0f, [&](auto kDecay) {
      return Accumulate<decltype(kDecay)::value>(
          tensors[seg.tensor].param.data() + b, tensors[seg.tensor].grad.data() + b,
          state_[seg.tensor].s.data() + b, seg.end - b, wd, dlr_f);
    });
  });
  numerator_weighted_ += dlr * sums[0];
  const double sk_sq = sums[1];
  if (lr > 0.0) {
    const double d_hat = 2.0 * numerator_weighted_ / std::sqrt(sk_sq);
    d_ = std::max(d, std::min(d_hat, d * o.growth_rate));
  }
  if (sk_sq == 0.0) return;

  const float momentum = static_cast<float>(o.momentum);
  const float one_minus_momentum = static_cast<float>(1.0 - o.momentum);
  UpdateSegments([&](const Segment& seg) -> int64_t {
    TensorState& s = state_[seg.tensor];
    const int64_t b = seg.begin;
    return Finish(tensors[seg.tensor].param.data() + b, s.z.data() + b, s.x0.data() + b,
                  s.s.data() + b, seg.end - b, momentum, one_minus_momentum);
  });
  k_ += 1.0;
}

}  // namespace optd
