#include "server/optim/prodigy.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "server/optim/kernel_internal.h"
#include "server/optim/lr_free_internal.h"

namespace optd {
namespace {

using optim_internal::AddCdiv;
using optim_internal::AddCmul;
using optim_internal::AddScaled;
using optim_internal::DispatchBool;
using optim_internal::IsNonFinite;
using optim_internal::MulAdd;
using optim_internal::NonFiniteCount;

// The float32 coefficients of one step, computed in double and rounded once.
struct Coefficients {
  float coupled_wd;  // g += coupled_wd * p (0: decoupled or none)
  float beta1;
  float m_scale;  // d (1 - beta1)
  float beta2;
  float v_scale;  // d^2 (1 - beta2)
  float beta3;
  float s_scale;  // (d / d0) * (dlr or d)
  float decay;    // -wd * dlr (decoupled)
  float eps;      // d_new * eps
  float neg_dlr;  // -dlr, or -dlr * d_new with beta1 = 0
};

// Phase 1 on elements [begin, end) of one tensor: m, v and s; returns the sums
// {<g[::sp], p0 - p[::sp]>, ||s||_1} over the slices in the range. kCoupled: coupled_wd != 0;
// kMomentum: m is kept (beta1 > 0).
template <bool kCoupled, bool kMomentum>
OPTD_FMA_CLONES std::array<double, 2> Accumulate(const float* __restrict p,
                                                 const float* __restrict g, float* __restrict m,
                                                 float* __restrict v, float* __restrict p0,
                                                 float* __restrict s, int64_t begin, int64_t end,
                                                 int64_t slice, const Coefficients c) {
  for (int64_t i = begin; i < end; ++i) {
    const float gi = kCoupled ? AddScaled(g[i], p[i], c.coupled_wd) : g[i];
    if constexpr (kMomentum) m[i] = MulAdd(m[i], c.beta1, gi, c.m_scale);
    v[i] = AddCmul(c.beta2 * v[i], gi, gi, c.v_scale);
  }
  // The slices j with j * slice in [begin, end).
  const int64_t first = (begin + slice - 1) / slice;
  const int64_t count = std::max<int64_t>(0, (end + slice - 1) / slice - first);
  return optim_internal::LaneSums<2>(count, [&](int64_t k) {
    const int64_t j = first + k;
    const int64_t i = j * slice;
    const float gi = kCoupled ? AddScaled(g[i], p[i], c.coupled_wd) : g[i];
    const double term = static_cast<double>(gi) * static_cast<double>(p0[j] - p[i]);
    const float sj = MulAdd(s[j], c.beta3, gi, c.s_scale);
    s[j] = sj;
    return std::array<double, 2>{term, std::abs(static_cast<double>(sj))};
  });
}

// Phase 2 on elements [begin, end): moves p. Returns how many p it left non-finite. kDecay: decay
// != 0; kCoupled and kMomentum as in Accumulate.
template <bool kDecay, bool kCoupled, bool kMomentum>
OPTD_FMA_CLONES int64_t Finish(float* __restrict p, const float* __restrict g,
                               const float* __restrict m, const float* __restrict v, int64_t n,
                               const Coefficients c) {
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    float pi = p[i];
    if constexpr (kDecay) pi = AddScaled(pi, pi, c.decay);
    const float denom = std::sqrt(v[i]) + c.eps;
    if constexpr (kMomentum) {
      pi = AddCdiv(pi, m[i], denom, c.neg_dlr);
    } else {
      const float gi = kCoupled ? AddScaled(g[i], p[i], c.coupled_wd) : g[i];
      pi = AddCdiv(pi, gi, denom, c.neg_dlr);
    }
    p[i] = pi;
    non_finite += IsNonFinite(pi);
  }
  return non_finite;
}

int64_t Slices(int64_t n, int64_t slice) { return (n + slice - 1) / slice; }

}  // namespace

Prodigy::Prodigy(const ProdigyOptions& options, std::vector<int64_t> tensor_sizes)
    : Optimizer(std::move(tensor_sizes)),
      options_(options),
      state_(this->tensor_sizes().size()),
      d_(options.d0),
      d_max_(options.d0) {}

absl::Status Prodigy::PartialSteps() const {
  return optim_internal::RefusesPartialSteps(
      "prodigy", "its estimate of d sums every tensor's s and moments each step");
}

absl::StatusOr<RowSparseRule> Prodigy::RowSparse() const {
  return optim_internal::NeedsDenseGradients("prodigy", "the estimate of d");
}

Optimizer::StateRefs Prodigy::StateOf(size_t tensor) {
  TensorState& s = state_[tensor];
  StateRefs refs;
  if (options_.beta1 > 0.0) refs.arrays.push_back({"exp_avg", &s.exp_avg});
  refs.arrays.push_back({"exp_avg_sq", &s.exp_avg_sq});
  refs.arrays.push_back({"p0", &s.p0});
  refs.arrays.push_back({"s", &s.s});
  return refs;
}

std::vector<std::pair<std::string_view, double*>> Prodigy::GlobalScalars() {
  return {{"d", &d_},         {"d_max", &d_max_},     {"d_numerator", &d_numerator_},
          {"d_hat", &d_hat_}, {"d_denom", &d_denom_}, {"k", &k_}};
}

int64_t Prodigy::ArraySize(size_t tensor, std::string_view array) const {
  const int64_t n = tensor_sizes()[tensor];
  return array == "p0" || array == "s" ? Slices(n, options_.slice_p) : n;
}

int64_t Prodigy::StateBytesPerElement() const {
  // Per element; the sliced arrays are rounded up per tensor, so StateBytes may be a little more.
  return static_cast<int64_t>(sizeof(float)) * (options_.beta1 > 0.0 ? 2 : 1) +
         static_cast<int64_t>(2 * sizeof(float)) / options_.slice_p;
}

std::string_view Prodigy::StructuralChange(const OptimizerOptions& options) const {
  const ProdigyOptions& o = std::get<ProdigyOptions>(options);
  if ((o.beta1 > 0.0) != (options_.beta1 > 0.0)) return "beta1";
  if (o.slice_p != options_.slice_p) return "slice_p";
  return "";
}

void Prodigy::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  const ProdigyOptions& o = options_;
  const double beta3 = o.beta3.has_value() ? *o.beta3 : std::sqrt(o.beta2);
  const double bias_correction =
      o.use_bias_correction
          ? std::sqrt(1.0 - std::pow(o.beta2, k_ + 1)) / (1.0 - std::pow(o.beta1, k_ + 1))
          : 1.0;
  const double d = d_;
  const double dlr = d * lr * bias_correction;
  const double d_numerator = d_numerator_ * beta3;
  const int64_t slice = o.slice_p;

  Coefficients c = {};
  c.coupled_wd = o.decouple ? 0.0f : static_cast<float>(o.weight_decay);
  c.beta1 = static_cast<float>(o.beta1);
  c.m_scale = static_cast<float>(d * (1.0 - o.beta1));
  c.beta2 = static_cast<float>(o.beta2);
  c.v_scale = static_cast<float>(d * d * (1.0 - o.beta2));
  c.beta3 = static_cast<float>(beta3);
  c.s_scale = static_cast<float>((d / o.d0) * (o.safeguard_warmup ? d : dlr));

  for (size_t t = 0; t < tensors.size(); ++t) {
    TensorState& s = state_[t];
    if (!s.exp_avg_sq.empty()) continue;
    const int64_t n = tensor_sizes()[t];
    if (o.beta1 > 0.0) s.exp_avg.assign(n, 0.0f);
    s.exp_avg_sq.assign(n, 0.0f);
    s.p0.resize(Slices(n, slice));
    for (size_t j = 0; j < s.p0.size(); ++j) s.p0[j] = tensors[t].param[j * slice];
    s.s.assign(Slices(n, slice), 0.0f);
  }
  if (lr <= 0.0) return;  // upstream skips a group with lr 0, and then d_denom is 0

  // Phase 1: the moments and the two global sums.
  const std::array<double, 2> sums = SumOverModel<2>([&](const Segment& seg) {
    TensorState& s = state_[seg.tensor];
    return DispatchBool(c.coupled_wd != 0.0f, [&](auto kCoupled) {
      return DispatchBool(!s.exp_avg.empty(), [&](auto kMomentum) {
        return Accumulate<decltype(kCoupled)::value, decltype(kMomentum)::value>(
            tensors[seg.tensor].param.data(), tensors[seg.tensor].grad.data(), s.exp_avg.data(),
            s.exp_avg_sq.data(), s.p0.data(), s.s.data(), seg.begin, seg.end, slice, c);
      });
    });
  });
  const double delta_numerator = (d / o.d0) * dlr * sums[0];
  const double d_denom = sums[1];
  if (d_denom == 0.0) return;  // every gradient was zero: d, k and p stay, as upstream

  // The reduced scalars.
  const double numerator = d_numerator + delta_numerator;
  const double d_hat = o.d_coef * numerator / d_denom;
  double d_new = d;
  if (d == o.d0) d_new = std::max(d, d_hat);
  d_max_ = std::max(d_max_, d_hat);
  d_new = std::min(d_max_, d_new * o.growth_rate);
  d_numerator_ = numerator;
  d_hat_ = d_hat;
  d_denom_ = d_denom;
  d_ = d_new;

  // Phase 2: the update with the new d in eps (and in the step when beta1 = 0), the old in dlr.
  c.decay = o.decouple ? static_cast<float>(-o.weight_decay * dlr) : 0.0f;
  c.eps = static_cast<float>(d_new * o.eps);
  c.neg_dlr = static_cast<float>(o.beta1 > 0.0 ? -dlr : -dlr * d_new);
  UpdateSegments([&](const Segment& seg) -> int64_t {
    TensorState& s = state_[seg.tensor];
    const int64_t b = seg.begin;
    float* p = tensors[seg.tensor].param.data() + b;
    const float* g = tensors[seg.tensor].grad.data() + b;
    const float* m = s.exp_avg.empty() ? nullptr : s.exp_avg.data() + b;
    const float* v = s.exp_avg_sq.data() + b;
    return DispatchBool(c.decay != 0.0f, [&](auto kDecay) {
      return DispatchBool(c.coupled_wd != 0.0f, [&](auto kCoupled) {
        return DispatchBool(m != nullptr, [&](auto kMomentum) {
          return Finish<decltype(kDecay)::value, decltype(kCoupled)::value,
                        decltype(kMomentum)::value>(p, g, m, v, seg.end - b, c);
        });
      });
    });
  });
  k_ += 1.0;
}

}  // namespace optd
