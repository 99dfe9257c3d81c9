// File: session_observer.h
//
// SessionObserver: how the session layer reports what happens to sessions without knowing who
// listens (server/metrics implements it for Prometheus). The session layer calls the observer after
// the fact, outside every lock, from whichever thread did the work; an implementation must be
// thread-safe and quick (no I/O, no blocking), and must not call back into the session layer.
//
// Events carry the session id and the optimizer name so an observer can label per session.

#ifndef OPTD_SERVER_SESSION_SESSION_OBSERVER_H_
#define OPTD_SERVER_SESSION_SESSION_OBSERVER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace optd {

// Why a step was refused; stable names, used as metric label values.
enum class RefusalReason {
  kInvalid,         // malformed request: unknown tensor, wrong shape or bytes, bad hyperparameter
  kNonFinite,       // a NaN or Inf gradient element
  kStale,           // computed at a version too old for the session's consistency mode
  kDuplicate,       // a retried (worker, sequence) already applied: answered from the first outcome
  kBarrierTimeout,  // a SYNC barrier expired without its quorum
};

absl::string_view RefusalReasonName(RefusalReason reason);

// One applied optimizer step (for SYNC sessions: one per barrier, with all its workers).
struct StepEvent {
  absl::string_view session_id;
  absl::string_view optimizer;
  int64_t version = 0;         // after the step
  int workers = 1;             // gradients combined into this step
  double gradient_norm = 0;    // L2 over all tensors, as received (before clipping)
  double update_norm = -1;     // L2 of the parameter change; -1 when not measured
  double parameter_norm = -1;  // L2 of the parameters after the step; -1 when not measured
  double learning_rate = 0;    // used by this step
  std::optional<double> loss;  // reported by the worker(s), averaged for SYNC
  int64_t optimizer_state_bytes = 0;
  // Everything the session holds in memory after the step (SessionInfo::memory's total).
  int64_t memory_bytes = 0;
  // Parameters the step left NaN or infinite (from finite gradients).
  int64_t non_finite_parameters = 0;
  // Parameter bytes copied before the step because replies still held the buffers (copy on
  // write, see wire_tensor.h); 0 in a worker loop, where a reply is sent before the next step.
  int64_t parameter_bytes_copied = 0;
  // The optimizer's estimates after the step (Optimizer::Estimates: Prodigy's "d", DoG's "eta",
  // ...); empty for the optimizers that keep none.
  std::vector<std::pair<std::string, double>> estimates;
};

// One request handled by a session, applied or not.
struct RequestEvent {
  absl::string_view session_id;
  int64_t bytes_received = 0;  // tensor payload bytes in the request
  int64_t bytes_sent = 0;      // tensor payload bytes in the reply
  int64_t staleness = -1;  // session version - the version the gradient was computed at; -1 unknown
};

class SessionObserver {
 public:
  virtual ~SessionObserver() = default;
  // Whether the next step of `session_id`, which holds `num_parameters` parameters, should measure
  // its update and parameter norms (StepEvent), which costs that step a copy of the parameters it
  // updates. The observer owns the sampling policy. Called before the step takes the session's
  // lock, so it may be called for a step that is then refused. Default: never.
  virtual bool WantsStepNorms(absl::string_view session_id, int64_t num_parameters) {
    return false;
  }
  virtual void OnSessionCreated(absl::string_view session_id, absl::string_view optimizer) {}
  virtual void OnSessionDeleted(absl::string_view session_id) {}
  // The session was unloaded for being idle (--session_idle_timeout); OnSessionDeleted came first.
  virtual void OnSessionUnloaded(absl::string_view session_id) {}
  virtual void OnStep(const StepEvent& event) {}
  virtual void OnRequest(const RequestEvent& event) {}
  virtual void OnRefused(absl::string_view session_id, RefusalReason reason) {}
  // A SYNC barrier completed (or expired): how long the first gradient waited and how many of the
  // expected workers were missing.
  virtual void OnBarrier(absl::string_view session_id, double wait_seconds, int missing_workers) {}
};

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_SESSION_OBSERVER_H_
