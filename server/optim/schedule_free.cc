#include "server/optim/schedule_free.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "server/optim/kernel_internal.h"
#include "server/optim/lr_free_internal.h"

namespace optd {
namespace {

using optim_internal::AddCmul;
using optim_internal::AddScaled;
using optim_internal::IsNonFinite;
using optim_internal::Lerp;
using optim_internal::MulAdd;
using optim_internal::NonFiniteCount;

struct Coefficients {
  float beta2;
  float one_minus_beta2;
  float bias_correction2;
  float eps;
  float inner;  // inner momentum
  float one_minus_inner;
  float bias_correction1;
  float wd;
  float c;
  float y_step;  // lr_t (beta1 (1 - c) - 1)
  float neg_lr;  // -lr_t
};

// One pass over n elements of one tensor. kAdamW: the normalized direction; kInner: with inner
// momentum. Returns how many y it left non-finite. The coefficients come by value and the arrays
// do not overlap: nothing a store writes is reloaded, and the loop vectorises.
template <bool kAdamW, bool kInner>
OPTD_FMA_CLONES int64_t Update(float* __restrict y, const float* __restrict g, float* __restrict z,
                               float* __restrict v, float* __restrict m, int64_t n,
                               const Coefficients c) {
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    float yi = y[i];
    float u = g[i];
    if constexpr (kAdamW) {
      const float vi = AddCmul(c.beta2 * v[i], u, u, c.one_minus_beta2);
      v[i] = vi;
      const float denom = std::sqrt(vi / c.bias_correction2) + c.eps;
      if constexpr (kInner) {
        const float mi = MulAdd(m[i], c.inner, u, c.one_minus_inner);
        m[i] = mi;
        u = (mi / c.bias_correction1) / denom;
      } else {
        u = u / denom;
      }
    }
    if (c.wd != 0.0f) u = AddScaled(u, yi, c.wd);
    const float zi = z[i];
    yi = Lerp(yi, zi, c.c);
    yi = AddScaled(yi, u, c.y_step);
    z[i] = AddScaled(zi, u, c.neg_lr);
    y[i] = yi;
    non_finite += IsNonFinite(yi);
  }
  return non_finite;
}

}  // namespace

ScheduleFree::ScheduleFree(OptimizerOptions options, std::vector<int64_t> tensor_sizes)
    : Optimizer(std::move(tensor_sizes)),
      options_(std::move(options)),
      state_(this->tensor_sizes().size()) {}

ScheduleFree::ScheduleFree(const ScheduleFreeAdamWOptions& options,
                           std::vector<int64_t> tensor_sizes)
    : ScheduleFree(OptimizerOptions(options), std::move(tensor_sizes)) {}

ScheduleFree::ScheduleFree(const ScheduleFreeSgdOptions& options, std::vector<int64_t> tensor_sizes)
    : ScheduleFree(OptimizerOptions(options), std::move(tensor_sizes)) {}

bool ScheduleFree::inner_momentum() const {
  const auto* o = std::get_if<ScheduleFreeAdamWOptions>(&options_);
  return o != nullptr && o->inner_momentum != 0.0;
}

double ScheduleFree::beta1() const {
  if (const auto* o = std::get_if<ScheduleFreeAdamWOptions>(&options_)) return o->beta1;
  return std::get<ScheduleFreeSgdOptions>(options_).momentum;
}

int64_t ScheduleFree::StateBytesPerElement() const {
  return static_cast<int64_t>(sizeof(float)) * (1 + (adamw() ? 1 : 0) + (inner_momentum() ? 1 : 0));
}

std::string_view ScheduleFree::StructuralChange(const OptimizerOptions& options) const {
  const auto* o = std::get_if<ScheduleFreeAdamWOptions>(&options);
  const bool inner = o != nullptr && o->inner_momentum != 0.0;
  return inner != inner_momentum() ? "inner_momentum" : "";
}

std::vector<std::pair<std::string, double>> ScheduleFree::Estimates() const {
  return {{"scheduled_lr", scheduled_lr_}, {"c", c_}};
}

Optimizer::StateRefs ScheduleFree::StateOf(size_t tensor) {
  TensorState& s = state_[tensor];
  StateRefs refs;
  if (inner_momentum()) refs.arrays.push_back({"exp_avg", &s.exp_avg});
  if (adamw()) refs.arrays.push_back({"exp_avg_sq", &s.exp_avg_sq});
  refs.arrays.push_back({"z", &s.z});
  return refs;
}

std::vector<std::pair<std::string_view, double*>> ScheduleFree::GlobalScalars() {
  return {{"k", &k_},
          {"weight_sum", &weight_sum_},
          {"lr_max", &lr_max_},
          {"scheduled_lr", &scheduled_lr_}};
}

void ScheduleFree::EvaluationPointImpl(size_t tensor, absl::Span<const float> param,
                                       absl::Span<float> out) const {
  const std::vector<float>& z = state_[tensor].z;
  if (z.empty()) {
    std::copy(param.begin(), param.end(), out.begin());
    return;
  }
  const float w = static_cast<float>(1.0 - 1.0 / beta1());
  for (size_t i = 0; i < out.size(); ++i) out[i] = Lerp(param[i], z[i], w);
}

void ScheduleFree::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  int64_t warmup_steps;
  double r, weight_lr_power, weight_decay;
  if (const auto* o = std::get_if<ScheduleFreeAdamWOptions>(&options_)) {
    warmup_steps = o->warmup_steps;
    r = o->r;
    weight_lr_power = o->weight_lr_power;
    weight_decay = o->weight_decay;
  } else {
    const ScheduleFreeSgdOptions& sgd = std::get<ScheduleFreeSgdOptions>(options_);
    warmup_steps = sgd.warmup_steps;
    r = sgd.r;
    weight_lr_power = sgd.weight_lr_power;
    weight_decay = sgd.weight_decay;
  }
  const double k = k_;
  const double sched = k < static_cast<double>(warmup_steps) ? (k + 1) / warmup_steps : 1.0;
  const double lr_t = lr * sched;
  lr_max_ = std::max(lr_t, lr_max_);
  const double weight = std::pow(k + 1, r) * std::pow(lr_max_, weight_lr_power);
  weight_sum_ += weight;
  const double c = weight_sum_ != 0.0 ? weight / weight_sum_ : 0.0;
  scheduled_lr_ = lr_t;
  c_ = c;

  Coefficients co = {};
  if (const auto* o = std::get_if<ScheduleFreeAdamWOptions>(&options_)) {
    co.beta2 = static_cast<float>(o->beta2);
    co.one_minus_beta2 = static_cast<float>(1.0 - o->beta2);
    co.bias_correction2 = static_cast<float>(1.0 - std::pow(o->beta2, k + 1));
    co.eps = static_cast<float>(o->eps);
    co.inner = static_cast<float>(o->inner_momentum);
    co.one_minus_inner = static_cast<float>(1.0 - o->inner_momentum);
    co.bias_correction1 = static_cast<float>(1.0 - std::pow(o->inner_momentum, k + 1));
  }
  co.wd = static_cast<float>(weight_decay);
  co.c = static_cast<float>(c);
  co.y_step = static_cast<float>(lr_t * (beta1() * (1.0 - c) - 1.0));
  co.neg_lr = static_cast<float>(-lr_t);

  const bool adam = adamw();
  const bool inner = inner_momentum();
  for (size_t t = 0; t < tensors.size(); ++t) {
    TensorState& s = state_[t];
    if (!s.z.empty()) continue;
    s.z.assign(tensors[t].param.begin(), tensors[t].param.end());
    if (adam) s.exp_avg_sq.assign(s.z.size(), 0.0f);
    if (inner) s.exp_avg.assign(s.z.size(), 0.0f);
  }
  UpdateSegments([&](const Segment& seg) -> int64_t {
    TensorState& s = state_[seg.tensor];
    const int64_t b = seg.begin;
    float* y = tensors[seg.tensor].param.data() + b;
    const float* g = tensors[seg.tensor].grad.data() + b;
    float* z = s.z.data() + b;
    float* v = adam ? s.exp_avg_sq.data() + b : nullptr;
    float* m = inner ? s.exp_avg.data() + b : nullptr;
    const int64_t n = seg.end - b;
    if (!adam) return Update<false, false>(y, g, z, v, m, n, co);
    if (inner) return Update<true, true>(y, g, z, v, m, n, co);
    return Update<true, false>(y, g, z, v, m, n, co);
  });
  k_ += 1.0;
}

}  // namespace optd
