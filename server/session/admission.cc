#include "server/session/admission.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/quote.h"

namespace optd {

absl::Status CheckStepRequest(const ConsistencyOptions& consistency, const StepInput& input,
                              RefusalReason* reason) {
  using Mode = ConsistencyOptions::Mode;
  *reason = RefusalReason::kInvalid;
  const bool sync = consistency.mode == Mode::kSync;
  if (!input.worker_id.empty()) {
    if (absl::Status s = ValidateWorkerId("worker_id", input.worker_id); !s.ok()) return s;
  } else if (input.sequence != 0 || sync) {
    return absl::InvalidArgumentError(absl::StrCat(
        "worker_id is required ", sync ? "in a SYNC session" : "with a sequence number",
        " (sequence = ", input.sequence, ")"));
  }
  if (input.sequence < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence = ", input.sequence, " is out of range: must be >= 0"));
  }
  if (input.loss.has_value() && !std::isfinite(*input.loss)) {
    *reason = RefusalReason::kNonFinite;
    return absl::InvalidArgumentError(
        absl::StrCat("loss = ", *input.loss, " is out of range: must be finite"));
  }
  if (input.version.has_value() && *input.version < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("version = ", *input.version, " is out of range: must be >= 0"));
  }
  if (!input.version.has_value() && consistency.mode != Mode::kAsync) {
    return absl::InvalidArgumentError(
        absl::StrCat("version is required in a ", ModeName(consistency.mode),
                     " session: send the version the gradient was computed at"));
  }
  if (sync && !consistency.worker_ids.empty() &&
      std::find(consistency.worker_ids.begin(), consistency.worker_ids.end(), input.worker_id) ==
          consistency.worker_ids.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "worker_id ", Quote(input.worker_id), " is not one of the session's SYNC workers (",
        absl::StrJoin(consistency.worker_ids, ", "), ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> AdmitVersion(const ConsistencyOptions& consistency,
                                     std::optional<int64_t> version, int64_t current,
                                     RefusalReason* reason, bool restored) {
  using Mode = ConsistencyOptions::Mode;
  *reason = RefusalReason::kInvalid;
  if (!version.has_value()) return 0;
  if (*version > current && restored) {
    *reason = RefusalReason::kStale;
    return WithCurrentVersion(
        absl::AbortedError(absl::StrCat(
            "gradient computed at version ", *version, ", but the session is at version ", current,
            ": it was restored from a checkpoint and the steps after it were lost. Pull and "
            "recompute")),
        current);
  }
  if (*version > current) {
    return absl::InvalidArgumentError(absl::StrCat("version = ", *version,
                                                   " is ahead of the session, which is at version ",
                                                   current, "; must be in [0, ", current, "]"));
  }
  const int64_t staleness = current - *version;
  if (consistency.mode == Mode::kBounded && staleness > consistency.max_staleness) {
    *reason = RefusalReason::kStale;
    return WithCurrentVersion(
        absl::AbortedError(absl::StrCat(
            "gradient computed at version ", *version, " is ", staleness,
            " versions old; this BOUNDED session accepts at most ", consistency.max_staleness,
            ". The session is at version ", current, ": pull and recompute")),
        current);
  }
  if (consistency.mode == Mode::kSync && staleness != 0) {
    *reason = RefusalReason::kStale;
    return WithCurrentVersion(
        absl::AbortedError(absl::StrCat("gradient computed at version ", *version,
                                        " cannot join the SYNC barrier of version ", current,
                                        ": pull and recompute")),
        current);
  }
  return staleness;
}

}  // namespace optd
