#include "server/optim/range_check.h"

#include <cmath>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace optd {
namespace optim_internal {

std::string Range::ToString() const {
  if (hi == kInf) return absl::StrCat(lo_open ? "> " : ">= ", FormatValue(lo));
  return absl::StrCat("in ", lo_open ? "(" : "[", FormatValue(lo), ", ", FormatValue(hi),
                      hi_open ? ")" : "]");
}

std::string FormatValue(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  for (int precision = 6; precision < 17; ++precision) {
    std::string s = absl::StrFormat("%.*g", precision, v);
    if (std::strtod(s.c_str(), nullptr) == v) return s;
  }
  return absl::StrFormat("%.17g", v);
}

std::string OutOfRange(absl::string_view prefix, absl::string_view field, absl::string_view value,
                       absl::string_view range) {
  return absl::StrCat(prefix, ".", field, " = ", value, " is out of range: must be ", range);
}

absl::Status CheckDouble(absl::string_view prefix, absl::string_view field, double value,
                         const Range& range) {
  const bool finite = std::isfinite(value);
  if (finite && range.Contains(value)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      OutOfRange(prefix, field, FormatValue(value),
                 absl::StrCat(finite ? "" : "finite and ", range.ToString())));
}

absl::Status CheckAtLeast(absl::string_view prefix, absl::string_view field, int64_t value,
                          int64_t lo) {
  if (value >= lo) return absl::OkStatus();
  return absl::InvalidArgumentError(
      OutOfRange(prefix, field, absl::StrCat(value), absl::StrCat(">= ", lo)));
}

absl::Status FirstError(std::initializer_list<absl::Status> statuses) {
  for (const absl::Status& status : statuses) {
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

}  // namespace optim_internal
}  // namespace optd
