// Validate() of the learning-rate-free and recent optimizers' options (optimizer_options.h),
// with the ranges of reference/optimizers-lr-free.md: upstream's checks plus the degenerate values
// the service refuses. Messages as in optimizer_options.cc.

#include <cmath>
#include <initializer_list>
#include <optional>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "server/optim/optimizer_options.h"
#include "server/optim/range_check.h"

namespace optd {
namespace {

using optim_internal::CheckAtLeast;
using optim_internal::CheckDouble;
using optim_internal::FormatValue;
using optim_internal::kAtLeastOne;
using optim_internal::kNonNegative;
using optim_internal::kPositive;
using optim_internal::kUnitHalfOpen;
using optim_internal::OutOfRange;
using optim_internal::Range;

constexpr Range kUnitOpen{0.0, true, 1.0, true};  // (0, 1)

struct Field {
  const char* name;
  double value;
  Range range;
};

absl::Status CheckFields(std::string_view optimizer, std::initializer_list<Field> fields) {
  for (const Field& f : fields) {
    absl::Status s = CheckDouble(absl::string_view(optimizer.data(), optimizer.size()), f.name,
                                 f.value, f.range);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// growth_rate: >= 1, or +inf (no bound on the growth of d).
absl::Status CheckGrowthRate(std::string_view optimizer, double growth_rate) {
  if (growth_rate >= 1.0) return absl::OkStatus();  // NaN fails too
  return absl::InvalidArgumentError(
      OutOfRange(absl::string_view(optimizer.data(), optimizer.size()), "growth_rate",
                 FormatValue(growth_rate), ">= 1 (or inf)"));
}

// An optional field: unset is fine.
absl::Status CheckOptional(std::string_view optimizer, const char* name,
                           const std::optional<double>& value, const Range& range) {
  if (!value.has_value()) return absl::OkStatus();
  return CheckFields(optimizer, {{name, *value, range}});
}

// p *= 1 - lr * wd must not flip the sign of p.
absl::Status CheckDecay(std::string_view optimizer, const char* lr_name, double lr,
                        const char* wd_name, double wd) {
  if (lr * wd <= 1.0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s.%s * %s.%s = %s * %s = %s is out of range: must be <= 1", optimizer, lr_name, optimizer,
      wd_name, FormatValue(lr), FormatValue(wd), FormatValue(lr * wd)));
}

template <typename T>
absl::Status CheckDog(const T& o) {
  if (absl::Status s = CheckFields(T::kName, {{"lr", o.lr, kPositive},
                                              {"weight_decay", o.weight_decay, kNonNegative},
                                              {"eps", o.eps, kPositive},
                                              {"averager_gamma", o.averager_gamma, kNonNegative}});
      !s.ok()) {
    return s;
  }
  if (o.init_eta.has_value()) return CheckOptional(T::kName, "init_eta", o.init_eta, kPositive);
  return CheckFields(T::kName, {{"reps_rel", o.reps_rel, kPositive}});
}

}  // namespace

absl::Status ProdigyOptions::Validate() const {
  if (absl::Status s = CheckFields(kName, {{"lr", lr, kPositive},
                                           {"beta1", beta1, kUnitHalfOpen},
                                           {"beta2", beta2, kUnitHalfOpen},
                                           {"eps", eps, kPositive},
                                           {"weight_decay", weight_decay, kNonNegative},
                                           {"d0", d0, kPositive},
                                           {"d_coef", d_coef, kPositive}});
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckOptional(kName, "beta3", beta3, kUnitHalfOpen); !s.ok()) return s;
  if (absl::Status s = CheckGrowthRate(kName, growth_rate); !s.ok()) return s;
  return CheckAtLeast(absl::string_view(kName.data(), kName.size()), "slice_p", slice_p, 1);
}

absl::Status DAdaptAdamOptions::Validate() const {
  if (absl::Status s = CheckFields(kName, {{"lr", lr, kPositive},
                                           {"beta1", beta1, kUnitHalfOpen},
                                           {"beta2", beta2, kUnitHalfOpen},
                                           {"eps", eps, kPositive},
                                           {"weight_decay", weight_decay, kNonNegative},
                                           {"d0", d0, kPositive},
                                           {"layer_scale", layer_scale, kPositive}});
      !s.ok()) {
    return s;
  }
  return CheckGrowthRate(kName, growth_rate);
}

absl::Status DAdaptSgdOptions::Validate() const {
  if (absl::Status s = CheckFields(kName, {{"lr", lr, kPositive},
                                           {"momentum", momentum, kUnitHalfOpen},
                                           {"weight_decay", weight_decay, kNonNegative},
                                           {"d0", d0, kPositive}});
      !s.ok()) {
    return s;
  }
  return CheckGrowthRate(kName, growth_rate);
}

absl::Status DogOptions::Validate() const { return CheckDog(*this); }
absl::Status LdogOptions::Validate() const { return CheckDog(*this); }

absl::Status ScheduleFreeAdamWOptions::Validate() const {
  if (absl::Status s = CheckFields(kName, {{"lr", lr, kNonNegative},
                                           {"beta1", beta1, kUnitOpen},
                                           {"beta2", beta2, kUnitHalfOpen},
                                           {"eps", eps, kPositive},
                                           {"weight_decay", weight_decay, kNonNegative},
                                           {"r", r, kNonNegative},
                                           {"weight_lr_power", weight_lr_power, kNonNegative},
                                           {"inner_momentum", inner_momentum, kUnitHalfOpen}});
      !s.ok()) {
    return s;
  }
  return CheckAtLeast(absl::string_view(kName.data(), kName.size()), "warmup_steps", warmup_steps,
                      0);
}

absl::Status ScheduleFreeSgdOptions::Validate() const {
  if (absl::Status s = CheckFields(kName, {{"lr", lr, kNonNegative},
                                           {"momentum", momentum, kUnitOpen},
                                           {"weight_decay", weight_decay, kNonNegative},
                                           {"r", r, kNonNegative},
                                           {"weight_lr_power", weight_lr_power, kNonNegative}});
      !s.ok()) {
    return s;
  }
  return CheckAtLeast(absl::string_view(kName.data(), kName.size()), "warmup_steps", warmup_steps,
                      0);
}

absl::Status AdafactorOptions::Validate() const {
  if (absl::Status s = CheckFields(kName, {{"lr", lr, kNonNegative},
                                           {"eps2", eps2, kNonNegative},
                                           {"d", d, kAtLeastOne},
                                           {"weight_decay", weight_decay, kNonNegative}});
      !s.ok()) {
    return s;
  }
  if (!(beta2_decay <= 0.0) || !std::isfinite(beta2_decay)) {
    return absl::InvalidArgumentError(
        OutOfRange("adafactor", "beta2_decay", FormatValue(beta2_decay),
                   std::isfinite(beta2_decay) ? "<= 0" : "finite and <= 0"));
  }
  if (absl::Status s = CheckOptional(kName, "eps1", eps1, kNonNegative); !s.ok()) return s;
  return CheckDecay(kName, "lr", lr, "weight_decay", weight_decay);
}

absl::Status MuonOptions::Validate() const {
  if (absl::Status s = CheckFields(kName, {{"lr", lr, kNonNegative},
                                           {"momentum", momentum, kUnitHalfOpen},
                                           {"weight_decay", weight_decay, kNonNegative},
                                           {"adam_lr", adam_lr, kNonNegative},
                                           {"adam_beta1", adam_beta1, kUnitHalfOpen},
                                           {"adam_beta2", adam_beta2, kUnitHalfOpen},
                                           {"adam_eps", adam_eps, kPositive},
                                           {"adam_weight_decay", adam_weight_decay, kNonNegative}});
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          CheckAtLeast(absl::string_view(kName.data(), kName.size()), "ns_steps", ns_steps, 1);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckDecay(kName, "lr", lr, "weight_decay", weight_decay); !s.ok()) {
    return s;
  }
  return CheckDecay(kName, "adam_lr", adam_lr, "adam_weight_decay", adam_weight_decay);
}

}  // namespace optd
