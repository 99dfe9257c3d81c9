// File: range_check.h
//
// Internal to server/optim: the one way the options structs (optimizers, schedules, clipping)
// check their fields and word the errors, e.g.
//   "adam.beta1 = 1.5 is out of range: must be in [0, 1)"
//   "schedule.step.step_size = 0 is out of range: must be >= 1"
// Pure functions, thread-safe.

#ifndef OPTD_SERVER_OPTIM_RANGE_CHECK_H_
#define OPTD_SERVER_OPTIM_RANGE_CHECK_H_

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace optd {
namespace optim_internal {

inline constexpr double kInf = std::numeric_limits<double>::infinity();

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
  std::string ToString() const;
};

inline constexpr Range kNonNegative{0.0, false, kInf, true};    // >= 0
inline constexpr Range kPositive{0.0, true, kInf, true};        // > 0
inline constexpr Range kAtLeastOne{1.0, false, kInf, true};     // >= 1
inline constexpr Range kUnitClosed{0.0, false, 1.0, false};     // [0, 1]
inline constexpr Range kUnitHalfOpen{0.0, false, 1.0, true};    // [0, 1)
inline constexpr Range kUnitOpenClosed{0.0, true, 1.0, false};  // (0, 1]

// Formats `v` like %g ("1e-08", "0.9", "nan", "-inf"), adding digits only when %g would not read
// back as `v` (so 1.0000001 is not shown as "1").
std::string FormatValue(double v);

// "<prefix>.<field> = <value> is out of range: must be <range>".
std::string OutOfRange(absl::string_view prefix, absl::string_view field, absl::string_view value,
                       absl::string_view range);

// InvalidArgument unless `value` is finite and in `range`.
absl::Status CheckDouble(absl::string_view prefix, absl::string_view field, double value,
                         const Range& range);

// InvalidArgument unless `value` >= lo.
absl::Status CheckAtLeast(absl::string_view prefix, absl::string_view field, int64_t value,
                          int64_t lo);

// The first non-OK status of `statuses`, in order.
absl::Status FirstError(std::initializer_list<absl::Status> statuses);

}  // namespace optim_internal
}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_RANGE_CHECK_H_
