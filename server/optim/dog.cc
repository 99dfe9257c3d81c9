#include "server/optim/dog.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/optim/kernel_internal.h"
#include "server/optim/lr_free_internal.h"

namespace optd {
namespace {

using optim_internal::AddScaled;
using optim_internal::DispatchBool;
using optim_internal::IsNonFinite;
using optim_internal::MulAdd;
using optim_internal::NonFiniteCount;

DogOptions AsDog(const LdogOptions& o) {
  DogOptions d;
  d.lr = o.lr;
  d.reps_rel = o.reps_rel;
  d.weight_decay = o.weight_decay;
  d.eps = o.eps;
  d.init_eta = o.init_eta;
  d.averaging = o.averaging;
  d.averager_gamma = o.averager_gamma;
  return d;
}

LdogOptions AsLdog(const DogOptions& o) {
  LdogOptions d;
  d.lr = o.lr;
  d.reps_rel = o.reps_rel;
  d.weight_decay = o.weight_decay;
  d.eps = o.eps;
  d.init_eta = o.init_eta;
  d.averaging = o.averaging;
  d.averager_gamma = o.averager_gamma;
  return d;
}

// Phase 1 on n elements: {sum g^2 (g with weight decay), sum (p - x0)^2, sum p^2}. On the first
// step it also fills x0. kDecay: wd != 0.
template <bool kDecay>
OPTD_FMA_CLONES std::array<double, 3> Sums(const float* __restrict p, const float* __restrict g,
                                           float* __restrict x0, int64_t n, float wd,
                                           bool first_step) {
  if (first_step) std::copy(p, p + n, x0);
  return optim_internal::LaneSums<3>(n, [&](int64_t i) {
    const float gi = kDecay ? AddScaled(g[i], p[i], wd) : g[i];
    const float diff = p[i] - x0[i];
    const double pi = p[i];
    return std::array<double, 3>{static_cast<double>(gi) * gi, static_cast<double>(diff) * diff,
                                 pi * pi};
  });
}

// Phase 2: p -= eta * g, then the average (kAveraging). Returns how many p it left non-finite.
template <bool kDecay, bool kAveraging>
OPTD_FMA_CLONES int64_t Update(float* __restrict p, const float* __restrict g,
                               float* __restrict avg, int64_t n, float wd, float neg_eta,
                               float keep, float weight) {
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = kDecay ? AddScaled(g[i], p[i], wd) : g[i];
    const float pi = AddScaled(p[i], gi, neg_eta);
    p[i] = pi;
    if constexpr (kAveraging) avg[i] = MulAdd(avg[i], keep, pi, weight);
    non_finite += IsNonFinite(pi);
  }
  return non_finite;
}

}  // namespace

Dog::Dog(const DogOptions& options, bool layerwise, std::vector<int64_t> tensor_sizes)
    : Optimizer(std::move(tensor_sizes)),
      options_(options),
      layerwise_(layerwise),
      state_(this->tensor_sizes().size()) {}

Dog::Dog(const DogOptions& options, std::vector<int64_t> tensor_sizes)
    : Dog(options, /*layerwise=*/false, std::move(tensor_sizes)) {}

Dog::Dog(const LdogOptions& options, std::vector<int64_t> tensor_sizes)
    : Dog(AsDog(options), /*layerwise=*/true, std::move(tensor_sizes)) {}

OptimizerOptions Dog::options() const {
  if (layerwise_) return AsLdog(options_);
  return options_;
}

void Dog::SetOptions(const OptimizerOptions& options) {
  options_ = layerwise_ ? AsDog(std::get<LdogOptions>(options)) : std::get<DogOptions>(options);
}

std::string_view Dog::StructuralChange(const OptimizerOptions& options) const {
  const bool averaging = layerwise_ ? std::get<LdogOptions>(options).averaging
                                    : std::get<DogOptions>(options).averaging;
  return averaging != options_.averaging ? "averaging" : "";
}

int64_t Dog::StateBytesPerElement() const {
  return static_cast<int64_t>((options_.averaging ? 2 : 1) * sizeof(float));
}

absl::Status Dog::PartialSteps() const {
  return optim_internal::RefusesPartialSteps(
      layerwise_ ? "ldog" : "dog",
      layerwise_ ? "its step count and iterate average are model-wide and every tensor's distance "
                   "is measured each step"
                 : "its eta divides the distance of the whole model by the sum of every tensor's "
                   "gradients");
}

absl::StatusOr<RowSparseRule> Dog::RowSparse() const {
  return optim_internal::NeedsDenseGradients(layerwise_ ? "ldog" : "dog",
                                             "the distance and gradient sums");
}

std::vector<std::pair<std::string, double>> Dog::Estimates() const {
  if (!layerwise_) return {{"eta", eta_}, {"rbar", rbar_}, {"G", g_sum_}};
  std::vector<std::pair<std::string, double>> out;
  for (size_t t = 0; t < state_.size(); ++t) {
    out.emplace_back(absl::StrCat("eta[", t, "]"), state_[t].layer.eta);
    out.emplace_back(absl::StrCat("rbar[", t, "]"), state_[t].layer.rbar);
    out.emplace_back(absl::StrCat("G[", t, "]"), state_[t].layer.g_sum);
  }
  return out;
}

Optimizer::StateRefs Dog::StateOf(size_t tensor) {
  TensorState& s = state_[tensor];
  StateRefs refs;
  if (options_.averaging) refs.arrays.push_back({"averaged_params", &s.averaged_params});
  refs.arrays.push_back({"init_buffer", &s.init_buffer});
  if (layerwise_) {
    refs.scalars = {{"G", &s.layer.g_sum}, {"eta", &s.layer.eta}, {"rbar", &s.layer.rbar}};
  }
  return refs;
}

std::vector<std::pair<std::string_view, double*>> Dog::GlobalScalars() {
  if (layerwise_) return {{"step", &step_}};
  return {{"G", &g_sum_}, {"eta", &eta_}, {"rbar", &rbar_}, {"step", &step_}};
}

void Dog::EvaluationPointImpl(size_t tensor, absl::Span<const float> param,
                              absl::Span<float> out) const {
  const std::vector<float>& avg = state_[tensor].averaged_params;
  if (avg.empty()) {
    std::copy(param.begin(), param.end(), out.begin());
  } else {
    std::copy(avg.begin(), avg.end(), out.begin());
  }
}

Dog::Scalars Dog::Next(const Scalars& old, double grad_squares, double distance_squares,
                       double param_squares, double lr) const {
  Scalars next;
  const bool first_step = step_ == 0.0;
  const double reps_rel = options_.init_eta.has_value() ? 0.0 : options_.reps_rel;
  if (first_step) {
    next.rbar = static_cast<float>(reps_rel * (1.0 + static_cast<float>(std::sqrt(param_squares))));
    next.g_sum = static_cast<float>(grad_squares) + static_cast<float>(options_.eps);
  } else {
    next.rbar = std::max(old.rbar, static_cast<float>(std::sqrt(distance_squares)));
    next.g_sum = old.g_sum + static_cast<float>(grad_squares);
  }
  next.eta = static_cast<float>(lr) * next.rbar / std::sqrt(next.g_sum);
  if (first_step && options_.init_eta.has_value())
    next.eta = static_cast<float>(*options_.init_eta);
  return next;
}

void Dog::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  const bool first_step = step_ == 0.0;
  const float wd = static_cast<float>(options_.weight_decay);
  for (size_t t = 0; t < tensors.size(); ++t) {
    TensorState& s = state_[t];
    if (!s.init_buffer.empty()) continue;
    s.init_buffer.resize(tensor_sizes()[t]);  // filled by the first pass
    if (options_.averaging)
      s.averaged_params.assign(tensors[t].param.begin(), tensors[t].param.end());
  }
  const std::vector<std::array<double, 3>> sums = SumPerTensor<3>([&](const Segment& seg) {
    const int64_t b = seg.begin;
    return DispatchBool(wd != 0.0f, [&](auto kDecay) {
      return Sums<decltype(kDecay)::value>(
          tensors[seg.tensor].param.data() + b, tensors[seg.tensor].grad.data() + b,
          state_[seg.tensor].init_buffer.data() + b, seg.end - b, wd, first_step);
    });
  });

  std::vector<float> eta(tensors.size());
  if (layerwise_) {
    for (size_t t = 0; t < tensors.size(); ++t) {
      Scalars& layer = state_[t].layer;
      layer = Next(layer, sums[t][0], sums[t][1], sums[t][2], lr);
      eta[t] = layer.eta;
    }
  } else {
    std::array<double, 3> total = {};
    for (const std::array<double, 3>& t : sums) {
      for (size_t k = 0; k < 3; ++k) total[k] += t[k];
    }
    const Scalars old{static_cast<float>(rbar_), static_cast<float>(g_sum_),
                      static_cast<float>(eta_)};
    const Scalars next = Next(old, total[0], total[1], total[2], lr);
    rbar_ = next.rbar;
    g_sum_ = next.g_sum;
    eta_ = next.eta;
    std::fill(eta.begin(), eta.end(), next.eta);
  }

  step_ += 1.0;
  const double gamma = options_.averager_gamma;
  const double weight = (gamma + 1.0) / (gamma + step_);
  const float keep_f = static_cast<float>(1.0 - weight);
  const float weight_f = static_cast<float>(weight);
  UpdateSegments([&](const Segment& seg) -> int64_t {
    TensorState& s = state_[seg.tensor];
    const int64_t b = seg.begin;
    return DispatchBool(wd != 0.0f, [&](auto kDecay) {
      return DispatchBool(options_.averaging, [&](auto kAveraging) {
        return Update<decltype(kDecay)::value, decltype(kAveraging)::value>(
            tensors[seg.tensor].param.data() + b, tensors[seg.tensor].grad.data() + b,
            kAveraging ? s.averaged_params.data() + b : nullptr, seg.end - b, wd, -eta[seg.tensor],
            keep_f, weight_f);
      });
    });
  });
}

}  // namespace optd
