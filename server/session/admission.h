// File: admission.h
//
// Admission: whether a session takes a worker's step, by what the request says about itself
// (CheckStepRequest: worker id, sequence number, loss and version are well formed and present
// where the session's consistency mode needs them) and by how old its gradient is against the
// session's version (AdmitVersion: BOUNDED refuses a gradient more than S versions old, SYNC one
// not computed at the current version; a version ahead of the session is malformed).
//
// Who calls it: Session::Step (CheckStepRequest before the lock, AdmitVersion under it). Pure
// functions: thread-safe.
//
// Errors: InvalidArgument for a malformed request (reason kInvalid or kNonFinite), Aborted for a
// stale gradient (reason kStale), carrying the current version (step.h: WithCurrentVersion).

#ifndef OPTD_SERVER_SESSION_ADMISSION_H_
#define OPTD_SERVER_SESSION_ADMISSION_H_

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/session/consistency.h"
#include "server/session/session_observer.h"
#include "server/session/step.h"

namespace optd {

// Checks the fields of `input` that need no session state. On failure sets `*reason`.
absl::Status CheckStepRequest(const ConsistencyOptions& consistency, const StepInput& input,
                              RefusalReason* reason);

// The staleness of a gradient computed at `version` (0 when the request does not say), or the
// refusal when `consistency` does not take it at the session's `current` version. On failure sets
// `*reason`.
// `restored`: the session was rebuilt from a checkpoint, so a version ahead of it is one the
// server lost (Aborted, stale: pull and recompute), not a malformed request (InvalidArgument).
absl::StatusOr<int64_t> AdmitVersion(const ConsistencyOptions& consistency,
                                     std::optional<int64_t> version, int64_t current,
                                     RefusalReason* reason, bool restored = false);

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_ADMISSION_H_
