#include "client/cpp/retry.h"

#include <algorithm>
#include <cmath>

#include "absl/random/distributions.h"
#include "absl/strings/str_cat.h"

namespace optd {
namespace client {

RetryPolicy RetryPolicy::None() {
  RetryPolicy policy;
  policy.max_attempts = 1;
  return policy;
}

absl::Status RetryPolicy::Validate() const {
  if (max_attempts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("RetryPolicy.max_attempts = ", max_attempts, "; must be >= 1"));
  }
  if (initial_backoff < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RetryPolicy.initial_backoff = ", absl::FormatDuration(initial_backoff), "; must be >= 0"));
  }
  if (max_backoff < initial_backoff || max_backoff == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RetryPolicy.max_backoff = ", absl::FormatDuration(max_backoff),
        "; must be finite and >= initial_backoff (", absl::FormatDuration(initial_backoff), ")"));
  }
  if (!(multiplier >= 1) || !std::isfinite(multiplier)) {
    return absl::InvalidArgumentError(
        absl::StrCat("RetryPolicy.multiplier = ", multiplier, "; must be finite and >= 1"));
  }
  if (!(jitter >= 0 && jitter <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("RetryPolicy.jitter = ", jitter, "; must be in [0, 1]"));
  }
  if (retry_codes.empty()) {
    return absl::InvalidArgumentError(
        "RetryPolicy.retry_codes is empty; give at least one code (or set max_attempts = 1 to "
        "never retry)");
  }
  return absl::OkStatus();
}

bool RetryPolicy::Retries(absl::StatusCode code) const {
  return std::find(retry_codes.begin(), retry_codes.end(), code) != retry_codes.end();
}

absl::Duration RetryPolicy::NominalBackoff(int retry) const {
  absl::Duration wait = initial_backoff;
  for (int i = 1; i < retry && wait < max_backoff; ++i) wait *= multiplier;
  return std::min(wait, max_backoff);
}

absl::Duration RetryPolicy::Backoff(int retry, absl::BitGenRef gen) const {
  const double factor =
      jitter > 0 ? absl::Uniform(absl::IntervalClosed, gen, 1 - jitter, 1 + jitter) : 1.0;
  return NominalBackoff(retry) * factor;
}

absl::Duration RetryPolicy::TotalBackoff() const {
  absl::Duration total;
  for (int retry = 1; retry < max_attempts; ++retry) total += NominalBackoff(retry);
  return total;
}

}  // namespace client
}  // namespace optd
