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

namespace optd {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// A closed, open or half-open interval; hi = +inf means unbounded above.
struct Range {
  double lo;
  bool lo_open;
  double hi;
  bool hi_open;

  bool Contains(double v) const {
    const bool above_lo = lo_open ? v > lo : v >= lo;
    const bool below_hi = hi_open ? v < hi : v <= hi;
    return above_lo && below_hi;
  }

  // ">= 0", "> 0", "in [0, 1)".
  std::string ToString() const {
    if (hi == kInf) return absl::StrFormat("%s %g", lo_open ? ">" : ">=", lo);
    return absl::StrFormat("in %c%g, %g%c", lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']');
  }
};

constexpr Range kNonNegative{0.0, false, kInf, true};
constexpr Range kPositive{0.0, true, kInf, true};
constexpr Range kUnitHalfOpen{0.0, false, 1.0, true};  // [0, 1)
constexpr Range kUnitClosed{0.0, false, 1.0, false};   // [0, 1]

// Formats `v` like %g ("1e-08", "0.9", "nan", "-inf"), adding digits only when %g would not read
// back as `v` (so 1.0000001 is not shown as "1").
std::string FormatValue(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  for (int precision = 6; precision < 17; ++precision) {
    std::string s = absl::StrFormat("%.*g", precision, v);
    if (std::strtod(s.c_str(), nullptr) == v) return s;
  }
  return absl::StrFormat("%.17g", v);
}

struct Field {
  const char* name;
  double value;
  Range range;
};

// Returns InvalidArgument for the first field that is not finite or not in its range, e.g.
// "adam.beta1 = 1.5 is out of range: must be in [0, 1)".
absl::Status CheckFields(std::string_view optimizer, std::initializer_list<Field> fields) {
  for (const Field& f : fields) {
    const bool finite = std::isfinite(f.value);
    if (finite && f.range.Contains(f.value)) continue;
    return absl::InvalidArgumentError(
        absl::StrFormat("%s.%s = %s is out of range: must be %s%s", optimizer, f.name,
                        FormatValue(f.value), finite ? "" : "finite and ", f.range.ToString()));
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
