#include "server/optim/adam.h"

#include <algorithm>
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

// The float32 coefficients of one step, computed in double and rounded once.
struct AdamCoefficients {
  float sign;          // -1 if maximize, else 1
  float weight_decay;  // coupled L2 (Adam)
  float decay;         // 1 - lr * weight_decay (AdamW)
  float beta1;
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float sqrt_bias_correction2;  // sqrt(1 - beta2^t)
  float eps;
  float neg_step_size;  // -lr / (1 - beta1^t)
};

// One fused pass over a tensor. The operation order follows torch's ops (mul_ then add_,
// addcmul_, sqrt / sqrt(bc2) + eps, addcdiv_) so float32 results stay within a few ulp of torch.
// Returns how many p it left non-finite.
template <bool kCoupledDecay, bool kDecoupledDecay, bool kAmsgrad>
OPTD_SIMD_CLONES int64_t AdamKernel(float* __restrict p, const float* __restrict g,
                                    float* __restrict m, float* __restrict v,
                                    float* __restrict vmax, int64_t n, const AdamCoefficients& c) {
  // Local copies: the compiler need not reload them after stores through the pointers.
  const float sign = c.sign;
  const float weight_decay = c.weight_decay;
  const float decay = c.decay;
  const float beta1 = c.beta1;
  const float one_minus_beta1 = c.one_minus_beta1;
  const float beta2 = c.beta2;
  const float one_minus_beta2 = c.one_minus_beta2;
  const float sqrt_bc2 = c.sqrt_bias_correction2;
  const float eps = c.eps;
  const float neg_step_size = c.neg_step_size;
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    float pi = p[i];
    float d = sign * g[i];
    if constexpr (kCoupledDecay) d += weight_decay * pi;
    if constexpr (kDecoupledDecay) pi *= decay;
    const float mi = beta1 * m[i] + one_minus_beta1 * d;
    const float vi = beta2 * v[i] + (one_minus_beta2 * d) * d;
    m[i] = mi;
    v[i] = vi;
    float denom_v = vi;
    if constexpr (kAmsgrad) {
      denom_v = std::max(vmax[i], vi);
      vmax[i] = denom_v;
    }
    const float denom = std::sqrt(denom_v) / sqrt_bc2 + eps;
    const float p_new = pi + (neg_step_size * mi) / denom;
    p[i] = p_new;
    non_finite += IsNonFinite(p_new);
  }
  return non_finite;
}

}  // namespace

Adam::Adam(const AdamOptions& options, std::vector<int64_t> tensor_sizes)
    : Adam(options,
           Hyperparameters{options.beta1, options.beta2, options.eps, options.weight_decay,
                           options.amsgrad, options.maximize, /*decoupled_weight_decay=*/false},
           std::move(tensor_sizes)) {}

Adam::Adam(const AdamWOptions& options, std::vector<int64_t> tensor_sizes)
    : Adam(options,
           Hyperparameters{options.beta1, options.beta2, options.eps, options.weight_decay,
                           options.amsgrad, options.maximize, /*decoupled_weight_decay=*/true},
           std::move(tensor_sizes)) {}

Adam::Adam(OptimizerOptions options, const Hyperparameters& hyper,
           std::vector<int64_t> tensor_sizes)
    : Optimizer(std::move(tensor_sizes)),
      options_(std::move(options)),
      hyper_(hyper),
      state_(this->tensor_sizes().size()) {}

Adam::Hyperparameters Adam::HyperparametersOf(const OptimizerOptions& options) {
  if (const auto* o = std::get_if<AdamWOptions>(&options)) {
    return {o->beta1, o->beta2, o->eps, o->weight_decay, o->amsgrad, o->maximize, true};
  }
  const AdamOptions& o = std::get<AdamOptions>(options);
  return {o.beta1, o.beta2, o.eps, o.weight_decay, o.amsgrad, o.maximize, false};
}

void Adam::SetOptions(const OptimizerOptions& options) {
  options_ = options;
  hyper_ = HyperparametersOf(options);
}

std::string_view Adam::StructuralChange(const OptimizerOptions& options) const {
  // max_exp_avg_sq exists only with amsgrad (torch has no history for it either).
  return HyperparametersOf(options).amsgrad != hyper_.amsgrad ? "amsgrad" : "";
}

absl::StatusOr<RowSparseRule> Adam::RowSparse() const {
  const char* name = hyper_.decoupled_weight_decay ? "adamw" : "adam";
  if (hyper_.weight_decay != 0.0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "row-sparse gradients follow torch.optim.SparseAdam, which has no weight decay: "
        "%s.weight_decay = %g must be 0",
        name, hyper_.weight_decay));
  }
  if (hyper_.amsgrad) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "row-sparse gradients follow torch.optim.SparseAdam, which has no amsgrad: %s.amsgrad "
        "must be false",
        name));
  }
  return RowSparseRule::kLazy;
}

Optimizer::StateRefs Adam::StateOf(size_t tensor) {
  TensorState& s = state_[tensor];
  StateRefs refs{&s.step, {{"exp_avg", &s.exp_avg}, {"exp_avg_sq", &s.exp_avg_sq}}, {}};
  if (hyper_.amsgrad) refs.arrays.push_back({"max_exp_avg_sq", &s.max_exp_avg_sq});
  return refs;
}

int64_t Adam::StateBytesPerElement() const {
  return static_cast<int64_t>((hyper_.amsgrad ? 3 : 2) * sizeof(float));
}

void Adam::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  const bool has_weight_decay = hyper_.weight_decay != 0.0;
  // AdamW with weight_decay == 0 multiplies p by exactly 1: skipping it changes nothing.
  const bool coupled = has_weight_decay && !hyper_.decoupled_weight_decay;
  const bool decoupled = has_weight_decay && hyper_.decoupled_weight_decay;

  AdamCoefficients c = {};
  c.sign = hyper_.maximize ? -1.0f : 1.0f;
  c.weight_decay = static_cast<float>(hyper_.weight_decay);
  c.decay = static_cast<float>(1.0 - lr * hyper_.weight_decay);
  c.beta1 = static_cast<float>(hyper_.beta1);
  c.one_minus_beta1 = static_cast<float>(1.0 - hyper_.beta1);
  c.beta2 = static_cast<float>(hyper_.beta2);
  c.one_minus_beta2 = static_cast<float>(1.0 - hyper_.beta2);
  c.eps = static_cast<float>(hyper_.eps);

  // State and the per-tensor coefficients are set up before the loop, which runs on the pool.
  std::vector<AdamCoefficients> coefficients(tensors.size(), c);
  for (size_t t = 0; t < tensors.size(); ++t) {
    TensorState& s = state_[t];
    const int64_t n = static_cast<int64_t>(tensors[t].param.size());
    if (s.step == 0) {
      s.exp_avg.assign(n, 0.0f);
      s.exp_avg_sq.assign(n, 0.0f);
      if (hyper_.amsgrad) s.max_exp_avg_sq.assign(n, 0.0f);
    }
    ++s.step;
    const double step = static_cast<double>(s.step);
    const double bias_correction1 = 1.0 - std::pow(hyper_.beta1, step);
    const double bias_correction2 = 1.0 - std::pow(hyper_.beta2, step);
    coefficients[t].sqrt_bias_correction2 = static_cast<float>(std::sqrt(bias_correction2));
    coefficients[t].neg_step_size = static_cast<float>(-(lr / bias_correction1));
  }

  // Row-sparse tensors: torch SparseAdam's lazy rule, in its op order, on the rows sent only.
  for (size_t t = 0; t < tensors.size(); ++t) {
    if (!tensors[t].sparse()) continue;
    TensorState& s = state_[t];
    const double step = static_cast<double>(s.step);
    const float neg_step_size = static_cast<float>(-(
        lr * std::sqrt(1.0 - std::pow(hyper_.beta2, step)) / (1.0 - std::pow(hyper_.beta1, step))));
    const int64_t row_size = tensors[t].row_size;
    int64_t non_finite = 0;
    for (size_t r = 0; r < tensors[t].rows.size(); ++r) {
      const int64_t base = tensors[t].rows[r] * row_size;
      float* p = tensors[t].param.data() + base;
      float* m = s.exp_avg.data() + base;
      float* v = s.exp_avg_sq.data() + base;
      const float* g = tensors[t].grad.data() + r * row_size;
      double update_squares = 0;
      for (int64_t j = 0; j < row_size; ++j) {
        const float gj = c.sign * g[j];
        const float m_new = (gj - m[j]) * c.one_minus_beta1 + m[j];
        const float v_new = (gj * gj - v[j]) * c.one_minus_beta2 + v[j];
        m[j] = m_new;
        v[j] = v_new;
        const float before = p[j];
        p[j] = p[j] + neg_step_size * (m_new / (std::sqrt(v_new) + c.eps));
        const double d = static_cast<double>(p[j]) - before;
        update_squares += d * d;
        non_finite += IsNonFinite(p[j]);
      }
      AddUpdateSquares(update_squares);
    }
    AddNonFinite(t, non_finite);
  }

  UpdateSegments([&](const Segment& seg) -> int64_t {
    if (tensors[seg.tensor].sparse()) return 0;  // its rows were written above
    TensorState& s = state_[seg.tensor];
    float* p = tensors[seg.tensor].param.data() + seg.begin;
    const float* g = tensors[seg.tensor].grad.data() + seg.begin;
    float* vmax = hyper_.amsgrad ? s.max_exp_avg_sq.data() + seg.begin : nullptr;
    return DispatchBool(coupled, [&](auto kCoupled) {
      return DispatchBool(decoupled, [&](auto kDecoupled) {
        return DispatchBool(hyper_.amsgrad, [&](auto kAmsgrad) {
          return AdamKernel<decltype(kCoupled)::value, decltype(kDecoupled)::value,
                            decltype(kAmsgrad)::value>(
              p, g, s.exp_avg.data() + seg.begin, s.exp_avg_sq.data() + seg.begin, vmax,
              seg.end - seg.begin, coefficients[seg.tensor]);
        });
      });
    });
  });
}

}  // namespace optd
