// File: schedule.h
//
// Learning-rate schedules of optd: one options struct per schedule, with torch 1.13's defaults
// written in place (reference/optimizers.md section 3), ScheduleOptions as the closed set of them,
// and LrSchedule, the per-session state that turns a base lr and a step count into the lr of the
// next update. Pure math: C++17 and abseil only, no protobuf, no gRPC.
//
// Step-index convention (torch, optax and Hugging Face agree): the update with 0-based index k (k
// = number of updates already applied, k = 0 for the first) uses lr(k). In torch terms that is the
// `group['lr']` an `optimizer.step()` sees when the loop is `optimizer.step(); scheduler.step()`;
// after k scheduler steps torch's `last_epoch` is k. So warmup from 0 makes the first update a
// no-op (lr(0) = 0), as in torch and optax.
//
// Exactness: the torch schedulers are implemented by their closed forms
// (`_get_closed_form_lr` in torch 1.13), which agree with torch's chainable recursive values to
// about 1e-13 relative over 1000 steps (the recursion accumulates rounding; schedule_test.cc checks
// 1e-12 against values recorded from torch). OneCycle, ReduceOnPlateau and the LambdaLR-style
// InverseSqrt evaluate exactly torch's / Hugging Face's expressions, in the same order.
//
// Validate() returns OK or InvalidArgument with a message of the form
//   "schedule.step.gamma = 1.5 is out of range: must be in (0, 1]"
// i.e. the field (prefixed with "schedule." and the schedule's name), the value and the valid
// range. Every double must also be finite. Options are thread-compatible plain data.

#ifndef OPTD_SERVER_OPTIM_SCHEDULE_H_
#define OPTD_SERVER_OPTIM_SCHEDULE_H_

#include <cstdint>
#include <limits>
#include <optional>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace optd {

// lr(k) = base for every k (no scheduler).
struct ConstantScheduleOptions {
  static constexpr absl::string_view kName = "constant";
  absl::Status Validate() const;
};

// torch.optim.lr_scheduler.StepLR: lr(k) = base * gamma^floor(k / step_size).
struct StepScheduleOptions {
  static constexpr absl::string_view kName = "step";
  int64_t step_size = 0;  // >= 1. Required: torch has no default (0 fails validation).
  double gamma = 0.1;     // (0, 1]
  absl::Status Validate() const;
};

// torch MultiStepLR: lr(k) = base * gamma^(number of milestones m with m <= k). A milestone listed
// n times counts n times (torch keeps them in a Counter); the order does not matter.
struct MultiStepScheduleOptions {
  static constexpr absl::string_view kName = "multi_step";
  std::vector<int64_t> milestones;  // each >= 0; may be empty (then lr = base)
  double gamma = 0.1;               // (0, 1]
  absl::Status Validate() const;
};

// torch ExponentialLR: lr(k) = base * gamma^k.
struct ExponentialScheduleOptions {
  static constexpr absl::string_view kName = "exponential";
  double gamma = 0.0;  // (0, 1]. Required: torch has no default (0 fails validation).
  absl::Status Validate() const;
};

// torch CosineAnnealingLR: lr(k) = eta_min + (base - eta_min) * (1 + cos(pi * k / t_max)) / 2.
// There is no restart and no clamp: past t_max the cosine rises again, periodic with period
// 2 * t_max (lr(t_max) = eta_min, lr(2 * t_max) = base), exactly as torch's recursive form does.
struct CosineAnnealingScheduleOptions {
  static constexpr absl::string_view kName = "cosine_annealing";
  int64_t t_max = 0;     // >= 1. Required: torch has no default (0 fails validation).
  double eta_min = 0.0;  // >= 0, an absolute lr (not a factor of base); may exceed base
  absl::Status Validate() const;
};

// torch LinearLR (the usual linear warmup):
//   lr(k) = base * (start_factor + (end_factor - start_factor) * min(k, total_iters) /
//   total_iters).
// start_factor = 0 (warmup from 0) is accepted, as torch 1.13's validation does; note that torch
// 1.13's recursive step then raises ZeroDivisionError at k = 1 (torch >= 2.0 refuses it), so this
// case has no torch values to compare with: the closed form above is what the service computes.
struct LinearWarmupScheduleOptions {
  static constexpr absl::string_view kName = "linear_warmup";
  double start_factor = 1.0 / 3.0;  // [0, 1]
  double end_factor = 1.0;          // [0, 1]
  int64_t total_iters = 5;          // >= 1
  absl::Status Validate() const;
};

// optax warmup_cosine_decay_schedule, expressed relative to the base lr, which is the peak
// (optax's peak_value = base, init_value = init_factor * base, end_value = end_factor * base):
//   k < W:  lr = base * (init_factor + (1 - init_factor) * k / W)
//   k >= W: c = min(k - W, D - W), cosd = (1 + cos(pi * c / (D - W))) / 2,
//           lr = base * ((1 - end_factor) * cosd^exponent + end_factor)
// with W = warmup_steps and D = decay_steps, which INCLUDES the warmup (optax's convention, not
// Hugging Face's). lr(W) = base, and lr = end_factor * base for every k >= D.
struct WarmupCosineScheduleOptions {
  static constexpr absl::string_view kName = "warmup_cosine";
  double init_factor = 0.0;  // [0, 1]: lr(0) = init_factor * base
  int64_t warmup_steps = 0;  // >= 0; 0: no warmup, the cosine starts at k = 0
  int64_t decay_steps = 0;   // > warmup_steps. Required (0 fails validation).
  double end_factor = 0.0;   // [0, 1]: the final lr is end_factor * base
  double exponent = 1.0;     // > 0: the cosine factor is raised to this power
  absl::Status Validate() const;
};

// Hugging Face get_inverse_sqrt_schedule (a LambdaLR), with W = warmup_steps and T = timescale:
//   k < W:  lr = base * k / max(1, W)
//   k >= W: lr = base / sqrt((k + T - W) / T)
struct InverseSqrtScheduleOptions {
  static constexpr absl::string_view kName = "inverse_sqrt";
  int64_t warmup_steps = 0;  // >= 0
  int64_t timescale = 0;     // >= 0; 0: warmup_steps, or 10000 if warmup_steps is 0 (as HF)
  absl::Status Validate() const;
};

// torch OneCycleLR with total_steps given. It OVERWRITES the lr: the base lr (the optimizer's lr,
// and SetBaseLr) is ignored. initial_lr = max_lr / div_factor, min_lr = initial_lr /
// final_div_factor; two phases initial -> max_lr (ending at step pct_start * total_steps - 1) ->
// min_lr (ending at total_steps - 1), or with three_phase initial -> max -> initial (ending at
// 2 * pct_start * total_steps - 2) -> min_lr.
//
// Differences from torch, all where torch has no usable value:
// * Past the end (k >= total_steps) the lr stays at lr(total_steps - 1) = min_lr. torch computes
//   lr(total_steps) by extrapolating the last phase (below min_lr, negative with linear annealing)
//   and raises ValueError at the next scheduler step; a training step must not fail here.
// * A phase of zero length (e.g. pct_start * total_steps = 1, where torch raises
//   ZeroDivisionError) takes its end value at its end step.
// * Momentum cycling (cycle_momentum, base_momentum, max_momentum) is not implemented: only the lr
//   is scheduled. It corresponds to torch's cycle_momentum=False.
struct OneCycleScheduleOptions {
  static constexpr absl::string_view kName = "one_cycle";
  enum class Anneal { kCos, kLinear };
  double max_lr = 0.0;      // > 0. Required: torch has no default (0 fails validation).
  int64_t total_steps = 0;  // >= 1. Required (0 fails validation).
  double pct_start = 0.3;   // [0, 1]
  Anneal anneal_strategy = Anneal::kCos;
  double div_factor = 25.0;       // > 0
  double final_div_factor = 1e4;  // > 0
  bool three_phase = false;
  absl::Status Validate() const;  // also requires max_lr / div_factor / final_div_factor > 0
};

// torch ReduceLROnPlateau, driven by the loss reported with each update (LrSchedule::Advance).
// lr(0) = base; after each reported loss, exactly torch's step(metric):
//   if is_better(loss, best): best = loss, bad = 0  else: bad += 1
//   if cooldown_counter > 0: cooldown_counter -= 1, bad = 0
//   if bad > patience: new = max(lr * factor, min_lr); if lr - new > eps: lr = new
//                      cooldown_counter = cooldown, bad = 0
// with is_better (min, rel): a < best * (1 - threshold); (min, abs): a < best - threshold;
// (max, rel): a > best * (1 + threshold); (max, abs): a > best + threshold; best starts at +inf
// (min) or -inf (max). A NaN loss is never better, so it counts as a bad step (as in torch).
struct ReduceOnPlateauScheduleOptions {
  static constexpr absl::string_view kName = "reduce_on_plateau";
  enum class Mode { kMin, kMax };
  enum class ThresholdMode { kRel, kAbs };
  Mode mode = Mode::kMin;
  double factor = 0.1;      // [0, 1)
  int64_t patience = 10;    // >= 0
  double threshold = 1e-4;  // >= 0
  ThresholdMode threshold_mode = ThresholdMode::kRel;
  int64_t cooldown = 0;  // >= 0
  double min_lr = 0.0;   // >= 0
  double eps = 1e-8;     // >= 0
  absl::Status Validate() const;
};

using ScheduleOptions = std::variant<ConstantScheduleOptions, StepScheduleOptions,
                                     MultiStepScheduleOptions, ExponentialScheduleOptions,
                                     CosineAnnealingScheduleOptions, LinearWarmupScheduleOptions,
                                     WarmupCosineScheduleOptions, InverseSqrtScheduleOptions,
                                     OneCycleScheduleOptions, ReduceOnPlateauScheduleOptions>;

// Validates whichever options `options` holds.
absl::Status Validate(const ScheduleOptions& options);

// The schedule's short name ("step", "one_cycle", ...), for messages and metric labels.
absl::string_view ScheduleName(const ScheduleOptions& options);

// Everything an LrSchedule needs, besides its options, to continue where it stopped: part of a
// session's durable state (server/session/session_state.h). The plateau fields are meaningful only for ReduceOnPlateau (other schedules carry
// them along unused).
struct LrScheduleState {
  int64_t step = 0;      // updates applied so far: the next update has index k = step
  double base_lr = 0.0;  // the base lr in force (the options' lr, or the last SetBaseLr)
  double plateau_best = std::numeric_limits<double>::infinity();  // -inf in max mode
  int64_t bad_epochs = 0;                                         // torch num_bad_epochs
  int64_t cooldown_counter = 0;                                   // torch cooldown_counter
  double plateau_lr = 0.0;  // the current lr of ReduceOnPlateau
};

// The learning-rate schedule of one session. Copyable value type; NOT thread-safe: the session
// calls it under its lock, like its Optimizer. Typical use, per applied update:
//   const double lr = schedule.Current();
//   optimizer.Step(tensors, lr);
//   schedule.Advance(loss);  // loss: std::nullopt if the client reported none
class LrSchedule {
 public:
  // Returns InvalidArgument if `options` fail validation or `base_lr` is not finite and >= 0.
  // `base_lr` is the optimizer's lr (OneCycle ignores it, but it is still validated and kept).
  static absl::StatusOr<LrSchedule> Create(ScheduleOptions options, double base_lr);

  // The lr for the next update, whose 0-based index is k = steps(). Always finite and >= 0.
  double Current() const;

  // Records that one update was applied. `loss` is the loss the client reported with it, if any.
  // Only ReduceOnPlateau uses it: a step without a loss is not counted by the plateau logic at all
  // (best, bad_epochs and cooldown stay as they are, as if torch's step(metric) were not called),
  // although steps() still advances. Other schedules ignore `loss`. The loss is used as given;
  // the caller is expected to refuse non-finite losses (torch would count NaN as a bad step).
  void Advance(std::optional<double> loss = std::nullopt);

  // Changes the base lr at run time, from the next update on. For the closed-form schedules the
  // new base replaces the old one in the formula at the current step index: the next lr is
  // lr(k) computed with base = `base_lr`, i.e. the schedule's multiplier at k is kept (as if
  // torch's scheduler.base_lrs had been set; for the multiplicative schedules this equals setting
  // group['lr'] = base_lr * multiplier(k) under torch's chainable step). For ReduceOnPlateau the
  // current lr becomes `base_lr` itself (torch: writing group['lr']), later reductions start from
  // it, and best, bad_epochs and cooldown are kept. OneCycle ignores the base, so its lr does not
  // change. Returns InvalidArgument, and changes nothing, unless `base_lr` is finite and >= 0.
  absl::Status SetBaseLr(double base_lr);

  // The number of updates applied (Advance calls) since creation or the restored state.
  int64_t steps() const { return step_; }

  double base_lr() const { return base_lr_; }
  const ScheduleOptions& options() const { return options_; }

  // True for ReduceOnPlateau: the schedule needs losses reported with the steps.
  bool uses_loss() const;

  // The mutable state, for the session's durable state; RestoreState(state()) is a no-op.
  LrScheduleState state() const;

  // Restores a state taken by state() from a schedule with the same options. Returns
  // InvalidArgument, and changes nothing, if step, bad_epochs or cooldown_counter is negative,
  // base_lr or plateau_lr is not finite and >= 0, or plateau_best is NaN.
  absl::Status RestoreState(const LrScheduleState& state);

 private:
  LrSchedule(ScheduleOptions options, double base_lr);

  // lr(k) of the closed-form schedules (every schedule but ReduceOnPlateau) with base_lr_.
  double ClosedForm(int64_t k) const;
  bool IsBetter(double loss) const;

  ScheduleOptions options_;
  std::vector<int64_t> sorted_milestones_;  // MultiStep only
  double base_lr_;
  int64_t step_ = 0;
  // ReduceOnPlateau only.
  double plateau_best_;
  int64_t bad_epochs_ = 0;
  int64_t cooldown_counter_ = 0;
  double plateau_lr_;
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_SCHEDULE_H_
