#include "server/session/session_observer.h"

namespace optd {

absl::string_view RefusalReasonName(RefusalReason reason) {
  switch (reason) {
    case RefusalReason::kInvalid:
      return "invalid";
    case RefusalReason::kNonFinite:
      return "non_finite";
    case RefusalReason::kStale:
      return "stale";
    case RefusalReason::kDuplicate:
      return "duplicate";
    case RefusalReason::kBarrierTimeout:
      return "barrier_timeout";
  }
  return "unknown";
}

}  // namespace optd
