#include "server/optim/optimizer_options.h"

#include <cmath>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <string>
#include <type_traits>
#include <variant>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "server/optim/range_check.h"

namespace optd {
namespace {

using optim_internal::FormatValue;
using optim_internal::kInf;
using optim_internal::kNonNegative;
using optim_internal::kPositive;
using optim_internal::kUnitClosed;
using optim_internal::kUnitHalfOpen;
using optim_internal::Range;

struct Field {
  const char* name;
  double value;
  Range range;
};

// Returns InvalidArgument for the first field that is not finite or not in its range, e.g.
// "adam.beta1 = 1.5 is out of range: must be in [0, 1)".
absl::Status CheckFields(std::string_view optimizer, std::initializer_list<Field> fields) {
  for (const Field& f : fields) {
    absl::Status s = optim_internal::CheckDouble(
        absl::string_view(optimizer.data(), optimizer.size()), f.name, f.value, f.range);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// Adam and AdamW share their fields and ranges.
template <typename T>
absl::Status CheckAdamFields(const T& o) {
  return CheckFields(T::kName, {{"lr", o.lr, kNonNegative},
                                {"beta1", o.beta1, kUnitHalfOpen},
                                {"beta2", o.beta2, kUnitHalfOpen},
                                {"eps", o.eps, kPositive},
                                {"weight_decay", o.weight_decay, kNonNegative}});
}

}  // namespace

absl::Status SgdOptions::Validate() const {
  absl::Status status = CheckFields(kName, {{"lr", lr, kNonNegative},
                                            {"momentum", momentum, kUnitHalfOpen},
                                            {"dampening", dampening, kUnitClosed},
                                            {"weight_decay", weight_decay, kNonNegative}});
  if (!status.ok()) return status;
  if (nesterov && (momentum <= 0.0 || dampening != 0.0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "sgd.nesterov = true requires sgd.momentum > 0 and sgd.dampening = 0 (got momentum = %s, "
        "dampening = %s)",
        FormatValue(momentum), FormatValue(dampening)));
  }
  return absl::OkStatus();
}

absl::Status AdamOptions::Validate() const { return CheckAdamFields(*this); }

absl::Status AdamWOptions::Validate() const {
  absl::Status status = CheckAdamFields(*this);
  if (!status.ok()) return status;
  // p *= 1 - lr * weight_decay must not flip the sign of p.
  if (lr * weight_decay > 1.0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "adamw.lr * adamw.weight_decay = %s * %s = %s is out of range: must be <= 1",
        FormatValue(lr), FormatValue(weight_decay), FormatValue(lr * weight_decay)));
  }
  return absl::OkStatus();
}

absl::Status AdagradOptions::Validate() const {
  absl::Status status =
      CheckFields(kName, {{"lr", lr, kNonNegative},
                          {"lr_decay", lr_decay, kNonNegative},
                          {"weight_decay", weight_decay, kNonNegative},
                          {"initial_accumulator_value", initial_accumulator_value, kNonNegative},
                          {"eps", eps, kNonNegative}});
  if (!status.ok()) return status;
  // A zero gradient element would give 0 / (sqrt(0) + 0) = NaN.
  if (eps == 0.0 && initial_accumulator_value == 0.0) {
    return absl::InvalidArgumentError(
        "adagrad.eps = 0 is out of range: must be > 0 when adagrad.initial_accumulator_value = 0");
  }
  return absl::OkStatus();
}

absl::Status NormalizedGdOptions::Validate() const {
  return CheckFields(kName, {{"lr", lr, kNonNegative}, {"eps", eps, kNonNegative}});
}

absl::Status AdadeltaOptions::Validate() const {
  return CheckFields(kName, {{"lr", lr, kNonNegative},
                             {"rho", rho, kUnitHalfOpen},
                             {"eps", eps, kPositive},
                             {"weight_decay", weight_decay, kNonNegative}});
}

absl::Status RmspropOptions::Validate() const {
  return CheckFields(kName, {{"lr", lr, kNonNegative},
                             {"alpha", alpha, kUnitClosed},
                             {"eps", eps, kNonNegative},
                             {"weight_decay", weight_decay, kNonNegative},
                             {"momentum", momentum, kUnitHalfOpen}});
}

absl::Status NadamOptions::Validate() const {
  return CheckFields(kName, {{"lr", lr, kNonNegative},
                             {"beta1", beta1, kUnitHalfOpen},
                             {"beta2", beta2, kUnitHalfOpen},
                             {"eps", eps, kPositive},
                             {"weight_decay", weight_decay, kNonNegative},
                             {"momentum_decay", momentum_decay, kNonNegative}});
}

absl::Status RadamOptions::Validate() const {
  return CheckFields(kName, {{"lr", lr, kNonNegative},
                             {"beta1", beta1, kUnitHalfOpen},
                             {"beta2", beta2, kUnitHalfOpen},
                             {"eps", eps, kNonNegative},
                             {"weight_decay", weight_decay, kNonNegative}});
}

absl::Status LionOptions::Validate() const {
  return CheckFields(kName, {{"lr", lr, kPositive},
                             {"beta1", beta1, kUnitClosed},
                             {"beta2", beta2, kUnitClosed},
                             {"weight_decay", weight_decay, kNonNegative}});
}

absl::Status LambOptions::Validate() const {
  return CheckFields(kName, {{"lr", lr, kNonNegative},
                             {"beta1", beta1, kUnitHalfOpen},
                             {"beta2", beta2, kUnitHalfOpen},
                             {"eps", eps, kPositive},
                             {"weight_decay", weight_decay, kNonNegative}});
}

absl::Status LarsOptions::Validate() const {
  return CheckFields(kName, {{"lr", lr, kNonNegative},
                             {"momentum", momentum, kUnitHalfOpen},
                             {"weight_decay", weight_decay, kNonNegative},
                             {"trust_coefficient", trust_coefficient, kPositive},
                             {"eps", eps, kNonNegative}});
}

absl::Status Validate(const OptimizerOptions& options) {
  return std::visit([](const auto& o) { return o.Validate(); }, options);
}

std::string_view OptimizerName(const OptimizerOptions& options) {
  return std::visit([](const auto& o) { return std::decay_t<decltype(o)>::kName; }, options);
}

double BaseLearningRate(const OptimizerOptions& options) {
  return std::visit([](const auto& o) { return o.lr; }, options);
}

}  // namespace optd
