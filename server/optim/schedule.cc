#include "server/optim/schedule.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "server/optim/range_check.h"

namespace optd {
namespace {

using optim_internal::FirstError;
using optim_internal::FormatValue;
using optim_internal::kAtLeastOne;
using optim_internal::kInf;
using optim_internal::kNonNegative;
using optim_internal::kPositive;
using optim_internal::kUnitClosed;
using optim_internal::kUnitHalfOpen;
using optim_internal::kUnitOpenClosed;
using optim_internal::Range;

constexpr double kPi = 3.141592653589793;  // Python's math.pi

// Schedule fields are named "schedule.<schedule>.<field>" in messages, e.g.
// "schedule.step.gamma = 1.5 is out of range: must be in (0, 1]".
std::string Prefixed(absl::string_view schedule) { return absl::StrCat("schedule.", schedule); }

std::string OutOfRange(absl::string_view schedule, absl::string_view field, absl::string_view value,
                       absl::string_view range) {
  return optim_internal::OutOfRange(Prefixed(schedule), field, value, range);
}

absl::Status CheckScheduleDouble(absl::string_view schedule, absl::string_view field, double value,
                                 const Range& range) {
  return optim_internal::CheckDouble(Prefixed(schedule), field, value, range);
}

absl::Status CheckScheduleAtLeast(absl::string_view schedule, absl::string_view field,
                                  int64_t value, int64_t lo) {
  return optim_internal::CheckAtLeast(Prefixed(schedule), field, value, lo);
}

// "schedule.one_cycle.anneal_strategy = 7 is out of range: must be cos or linear".
template <typename Enum>
absl::Status CheckEnum(absl::string_view schedule, absl::string_view field, Enum value, Enum first,
                       Enum second, absl::string_view names) {
  if (value == first || value == second) return absl::OkStatus();
  return absl::InvalidArgumentError(OutOfRange(
      schedule, field, absl::StrCat(static_cast<std::underlying_type_t<Enum>>(value)), names));
}

// torch OneCycleLR._annealing_cos and _annealing_linear, operation for operation.
double AnnealCos(double start, double end, double pct) {
  const double cos_out = std::cos(kPi * pct) + 1;
  return end + (start - end) / 2.0 * cos_out;
}
double AnnealLinear(double start, double end, double pct) { return (end - start) * pct + start; }

// torch OneCycleLR.get_lr for step k in [0, total_steps - 1].
double OneCycleLr(const OneCycleScheduleOptions& o, int64_t k) {
  const double initial_lr = o.max_lr / o.div_factor;
  const double min_lr = initial_lr / o.final_div_factor;
  const double total = static_cast<double>(o.total_steps);
  struct Phase {
    double end_step;
    double start_lr;
    double end_lr;
  };
  Phase phases[3];
  int num_phases;
  if (o.three_phase) {
    phases[0] = {o.pct_start * total - 1, initial_lr, o.max_lr};
    phases[1] = {2 * o.pct_start * total - 2, o.max_lr, initial_lr};
    phases[2] = {total - 1, initial_lr, min_lr};
    num_phases = 3;
  } else {
    phases[0] = {o.pct_start * total - 1, initial_lr, o.max_lr};
    phases[1] = {total - 1, o.max_lr, min_lr};
    num_phases = 2;
  }
  const double step = static_cast<double>(k);
  double start_step = 0;
  for (int i = 0; i < num_phases; ++i) {
    const Phase& phase = phases[i];
    if (step <= phase.end_step || i == num_phases - 1) {
      // torch raises ZeroDivisionError for a zero-length phase; take its end value.
      const double pct =
          phase.end_step == start_step ? 1.0 : (step - start_step) / (phase.end_step - start_step);
      return o.anneal_strategy == OneCycleScheduleOptions::Anneal::kCos
                 ? AnnealCos(phase.start_lr, phase.end_lr, pct)
                 : AnnealLinear(phase.start_lr, phase.end_lr, pct);
    }
    start_step = phase.end_step;
  }
  return min_lr;  // not reached: the last phase always returns
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Validation.

absl::Status ConstantScheduleOptions::Validate() const { return absl::OkStatus(); }

absl::Status StepScheduleOptions::Validate() const {
  return FirstError({CheckScheduleAtLeast(kName, "step_size", step_size, 1),
                     CheckScheduleDouble(kName, "gamma", gamma, kUnitOpenClosed)});
}

absl::Status MultiStepScheduleOptions::Validate() const {
  for (size_t i = 0; i < milestones.size(); ++i) {
    absl::Status status =
        CheckScheduleAtLeast(kName, absl::StrCat("milestones[", i, "]"), milestones[i], 0);
    if (!status.ok()) return status;
  }
  return CheckScheduleDouble(kName, "gamma", gamma, kUnitOpenClosed);
}

absl::Status ExponentialScheduleOptions::Validate() const {
  return CheckScheduleDouble(kName, "gamma", gamma, kUnitOpenClosed);
}

absl::Status CosineAnnealingScheduleOptions::Validate() const {
  return FirstError({CheckScheduleAtLeast(kName, "t_max", t_max, 1),
                     CheckScheduleDouble(kName, "eta_min", eta_min, kNonNegative)});
}

absl::Status LinearWarmupScheduleOptions::Validate() const {
  return FirstError({CheckScheduleDouble(kName, "start_factor", start_factor, kUnitClosed),
                     CheckScheduleDouble(kName, "end_factor", end_factor, kUnitClosed),
                     CheckScheduleAtLeast(kName, "total_iters", total_iters, 1)});
}

absl::Status WarmupCosineScheduleOptions::Validate() const {
  absl::Status status =
      FirstError({CheckScheduleDouble(kName, "init_factor", init_factor, kUnitClosed),
                  CheckScheduleAtLeast(kName, "warmup_steps", warmup_steps, 0),
                  CheckScheduleAtLeast(kName, "decay_steps", decay_steps, 1),
                  CheckScheduleDouble(kName, "end_factor", end_factor, kUnitClosed),
                  CheckScheduleDouble(kName, "exponent", exponent, kPositive)});
  if (!status.ok()) return status;
  // decay_steps includes the warmup; optax needs a cosine part of positive length.
  if (decay_steps <= warmup_steps) {
    return absl::InvalidArgumentError(
        OutOfRange(kName, "decay_steps", absl::StrCat(decay_steps),
                   absl::StrCat("> schedule.warmup_cosine.warmup_steps = ", warmup_steps)));
  }
  return absl::OkStatus();
}

absl::Status InverseSqrtScheduleOptions::Validate() const {
  return FirstError({CheckScheduleAtLeast(kName, "warmup_steps", warmup_steps, 0),
                     CheckScheduleAtLeast(kName, "timescale", timescale, 0)});
}

absl::Status OneCycleScheduleOptions::Validate() const {
  absl::Status status =
      FirstError({CheckScheduleDouble(kName, "max_lr", max_lr, kPositive),
                  CheckScheduleAtLeast(kName, "total_steps", total_steps, 1),
                  CheckScheduleDouble(kName, "pct_start", pct_start, kUnitClosed),
                  CheckEnum(kName, "anneal_strategy", anneal_strategy, Anneal::kCos,
                            Anneal::kLinear, "cos or linear"),
                  CheckScheduleDouble(kName, "div_factor", div_factor, kPositive),
                  CheckScheduleDouble(kName, "final_div_factor", final_div_factor, kPositive)});
  if (!status.ok()) return status;
  // The derived lrs must be usable: neither overflowing nor underflowing to 0.
  const double initial_lr = max_lr / div_factor;
  const double min_lr = initial_lr / final_div_factor;
  if (!std::isfinite(initial_lr) || !(min_lr > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "schedule.one_cycle.max_lr / div_factor / final_div_factor = ", FormatValue(max_lr), " / ",
        FormatValue(div_factor), " / ", FormatValue(final_div_factor), " = ", FormatValue(min_lr),
        " is out of range: must be finite and > 0"));
  }
  return absl::OkStatus();
}

absl::Status ReduceOnPlateauScheduleOptions::Validate() const {
  return FirstError({CheckEnum(kName, "mode", mode, Mode::kMin, Mode::kMax, "min or max"),
                     CheckScheduleDouble(kName, "factor", factor, kUnitHalfOpen),
                     CheckScheduleAtLeast(kName, "patience", patience, 0),
                     CheckScheduleDouble(kName, "threshold", threshold, kNonNegative),
                     CheckEnum(kName, "threshold_mode", threshold_mode, ThresholdMode::kRel,
                               ThresholdMode::kAbs, "rel or abs"),
                     CheckScheduleAtLeast(kName, "cooldown", cooldown, 0),
                     CheckScheduleDouble(kName, "min_lr", min_lr, kNonNegative),
                     CheckScheduleDouble(kName, "eps", eps, kNonNegative)});
}

absl::Status Validate(const ScheduleOptions& options) {
  return std::visit([](const auto& o) { return o.Validate(); }, options);
}

absl::string_view ScheduleName(const ScheduleOptions& options) {
  return std::visit([](const auto& o) { return std::decay_t<decltype(o)>::kName; }, options);
}

// ---------------------------------------------------------------------------------------------
// LrSchedule.

namespace {

absl::Status CheckBaseLr(double base_lr) {
  if (std::isfinite(base_lr) && base_lr >= 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("schedule.base_lr = ", FormatValue(base_lr),
                                                 " is out of range: must be finite and >= 0"));
}

double InitialBest(const ScheduleOptions& options) {
  const auto* plateau = std::get_if<ReduceOnPlateauScheduleOptions>(&options);
  return plateau != nullptr && plateau->mode == ReduceOnPlateauScheduleOptions::Mode::kMax ? -kInf
                                                                                           : kInf;
}

}  // namespace

LrSchedule::LrSchedule(ScheduleOptions options, double base_lr)
    : options_(std::move(options)),
      base_lr_(base_lr),
      plateau_best_(InitialBest(options_)),
      plateau_lr_(base_lr) {
  if (const auto* o = std::get_if<MultiStepScheduleOptions>(&options_)) {
    sorted_milestones_ = o->milestones;
    std::sort(sorted_milestones_.begin(), sorted_milestones_.end());
  }
}

absl::StatusOr<LrSchedule> LrSchedule::Create(ScheduleOptions options, double base_lr) {
  absl::Status status = Validate(options);
  if (!status.ok()) return status;
  status = CheckBaseLr(base_lr);
  if (!status.ok()) return status;
  return LrSchedule(std::move(options), base_lr);
}

bool LrSchedule::uses_loss() const {
  return std::holds_alternative<ReduceOnPlateauScheduleOptions>(options_);
}

double LrSchedule::Current() const {
  if (uses_loss()) return plateau_lr_;
  // Only OneCycle's linear annealing can round a tiny min_lr to a value just below 0.
  return std::max(ClosedForm(step_), 0.0);
}

double LrSchedule::ClosedForm(int64_t k) const {
  const double base = base_lr_;
  const double e = static_cast<double>(k);
  // Each case is torch's _get_closed_form_lr (or the HF / optax expression), in the same order of
  // operations, so that rounding matches where torch is not itself recursive.
  struct Visitor {
    const LrSchedule& self;
    double base;
    int64_t k;
    double e;

    double operator()(const ConstantScheduleOptions&) const { return base; }
    double operator()(const StepScheduleOptions& o) const {
      return base * std::pow(o.gamma, static_cast<double>(k / o.step_size));
    }
    double operator()(const MultiStepScheduleOptions& o) const {
      const auto& m = self.sorted_milestones_;
      const auto passed = std::upper_bound(m.begin(), m.end(), k) - m.begin();  // bisect_right
      return base * std::pow(o.gamma, static_cast<double>(passed));
    }
    double operator()(const ExponentialScheduleOptions& o) const {
      return base * std::pow(o.gamma, e);
    }
    double operator()(const CosineAnnealingScheduleOptions& o) const {
      return o.eta_min +
             (base - o.eta_min) * (1 + std::cos(kPi * e / static_cast<double>(o.t_max))) / 2;
    }
    double operator()(const LinearWarmupScheduleOptions& o) const {
      const double total = static_cast<double>(o.total_iters);
      return base * (o.start_factor + (o.end_factor - o.start_factor) *
                                          static_cast<double>(std::min(o.total_iters, k)) / total);
    }
    double operator()(const WarmupCosineScheduleOptions& o) const {
      if (k < o.warmup_steps) {
        return base *
               (o.init_factor + (1 - o.init_factor) * e / static_cast<double>(o.warmup_steps));
      }
      const int64_t decay = o.decay_steps - o.warmup_steps;
      const int64_t c = std::min(k - o.warmup_steps, decay);
      const double cosd =
          0.5 * (1 + std::cos(kPi * static_cast<double>(c) / static_cast<double>(decay)));
      return base * ((1 - o.end_factor) * std::pow(cosd, o.exponent) + o.end_factor);
    }
    double operator()(const InverseSqrtScheduleOptions& o) const {
      const int64_t warmup = o.warmup_steps;
      if (k < warmup) {
        return base * (e / static_cast<double>(std::max<int64_t>(1, warmup)));
      }
      const int64_t timescale = o.timescale != 0 ? o.timescale : (warmup != 0 ? warmup : 10000);
      const int64_t shift = timescale - warmup;
      return base *
             (1.0 / std::sqrt(static_cast<double>(k + shift) / static_cast<double>(timescale)));
    }
    double operator()(const OneCycleScheduleOptions& o) const {
      return OneCycleLr(o, std::min(k, o.total_steps - 1));
    }
    double operator()(const ReduceOnPlateauScheduleOptions&) const { return self.plateau_lr_; }
  };
  return std::visit(Visitor{*this, base, k, e}, options_);
}

bool LrSchedule::IsBetter(double loss) const {
  using Options = ReduceOnPlateauScheduleOptions;
  const auto& o = std::get<Options>(options_);
  const double best = plateau_best_;
  if (o.mode == Options::Mode::kMin) {
    if (o.threshold_mode == Options::ThresholdMode::kRel) {
      const double rel_epsilon = 1. - o.threshold;
      return loss < best * rel_epsilon;
    }
    return loss < best - o.threshold;
  }
  if (o.threshold_mode == Options::ThresholdMode::kRel) {
    const double rel_epsilon = o.threshold + 1.;
    return loss > best * rel_epsilon;
  }
  return loss > best + o.threshold;
}

void LrSchedule::Advance(std::optional<double> loss) {
  ++step_;
  const auto* o = std::get_if<ReduceOnPlateauScheduleOptions>(&options_);
  if (o == nullptr || !loss.has_value()) return;
  // torch ReduceLROnPlateau.step(metrics), line for line.
  const double current = *loss;
  if (IsBetter(current)) {
    plateau_best_ = current;
    bad_epochs_ = 0;
  } else {
    ++bad_epochs_;
  }
  if (cooldown_counter_ > 0) {
    --cooldown_counter_;
    bad_epochs_ = 0;  // ignore any bad epochs in cooldown
  }
  if (bad_epochs_ > o->patience) {
    const double old_lr = plateau_lr_;
    const double new_lr = std::max(old_lr * o->factor, o->min_lr);
    if (old_lr - new_lr > o->eps) plateau_lr_ = new_lr;
    cooldown_counter_ = o->cooldown;
    bad_epochs_ = 0;
  }
}

absl::Status LrSchedule::SetBaseLr(double base_lr) {
  absl::Status status = CheckBaseLr(base_lr);
  if (!status.ok()) return status;
  base_lr_ = base_lr;
  if (uses_loss()) plateau_lr_ = base_lr;
  return absl::OkStatus();
}

LrScheduleState LrSchedule::state() const {
  LrScheduleState state;
  state.step = step_;
  state.base_lr = base_lr_;
  state.plateau_best = plateau_best_;
  state.bad_epochs = bad_epochs_;
  state.cooldown_counter = cooldown_counter_;
  state.plateau_lr = plateau_lr_;
  return state;
}

absl::Status LrSchedule::RestoreState(const LrScheduleState& state) {
  auto invalid = [](absl::string_view field, absl::string_view value, absl::string_view range) {
    return absl::InvalidArgumentError(
        absl::StrCat("schedule state.", field, " = ", value, " is out of range: must be ", range));
  };
  if (state.step < 0) return invalid("step", absl::StrCat(state.step), ">= 0");
  if (!(std::isfinite(state.base_lr) && state.base_lr >= 0)) {
    return invalid("base_lr", FormatValue(state.base_lr), "finite and >= 0");
  }
  if (std::isnan(state.plateau_best)) return invalid("plateau_best", "nan", "not nan");
  if (state.bad_epochs < 0) return invalid("bad_epochs", absl::StrCat(state.bad_epochs), ">= 0");
  if (state.cooldown_counter < 0) {
    return invalid("cooldown_counter", absl::StrCat(state.cooldown_counter), ">= 0");
  }
  if (!(std::isfinite(state.plateau_lr) && state.plateau_lr >= 0)) {
    return invalid("plateau_lr", FormatValue(state.plateau_lr), "finite and >= 0");
  }
  step_ = state.step;
  base_lr_ = state.base_lr;
  plateau_best_ = state.plateau_best;
  bad_epochs_ = state.bad_epochs;
  cooldown_counter_ = state.cooldown_counter;
  plateau_lr_ = state.plateau_lr;
  return absl::OkStatus();
}

}  // namespace optd
