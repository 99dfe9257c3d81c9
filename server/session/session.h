// File: session.h
//
// Session: one model's named float32 parameters, the optimizer that updates them, and a version
// that each applied step increments; many workers' gradients become steps as the session's
// consistency mode says: ASYNC (apply on arrival), SYNC (a barrier of K workers per version, with
// a deadline), BOUNDED (refuse gradients more than S versions old), each (worker id, sequence
// number) applied at most once. A Session is a holder of named parts, each in its own file:
//
//   tensor_spec.h        the tensors' names and shapes, fixed at creation
//   gradient.h           decoding and validating a request's gradients
//   admission.h          whether a request may step the session (well formed; not too stale)
//   exactly_once.h       the outcomes remembered so a retry is answered, not applied again
//   sync_barrier.h       the SYNC barrier of the current version
//   parameter_buffers.h  the parameters, shared with replies (copy on write)
//   session_state.h      all of the above that must survive, as one value (Snapshot/Restore)
//
// Who may call it: SessionStore creates and restores sessions (always owned by a
// std::shared_ptr); the service layer calls Step, Pull, Update and Info on a session it got from
// the store.
//
// Thread safety: all methods are thread-safe. The id, tensors and consistency options are
// immutable after creation and read without a lock; everything else is guarded by mu_. A Step
// decodes and validates its gradients before taking mu_, holds mu_ for the bookkeeping, the
// optimizer update and the sharing of the reply's parameters, and calls its callback and the
// observer only after releasing it. A step is atomic: other callers see all of it or none of it.
//
// Errors, through the step callback (nothing is changed by a request that fails):
//   InvalidArgument     malformed request (the message names the field, a short prefix of the
//                       value, and the valid range)
//   Aborted             stale gradient (SYNC: not the current version; BOUNDED: older than S), or a
//                       SYNC barrier that expired short of its quorum; the status carries the
//                       current version (CurrentVersionOf, step.h)
//   FailedPrecondition  a keyed step the session cannot tell apart from a retry of an applied one
//                       (exactly_once.h); NeedsRejoin (step.h) when the worker must join again
//   ResourceExhausted   the reply would exceed SessionEnv::max_reply_bytes, or the memory budget
//                       cannot pay for the step (a barrier's gradients, a decoded gradient, a copy)
//   Unavailable         the session was closed (deleted, or the server is stopping) mid-barrier

#ifndef OPTD_SERVER_SESSION_SESSION_H_
#define OPTD_SERVER_SESSION_SESSION_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/clock.h"
#include "server/optim/clip.h"
#include "server/optim/optimizer.h"
#include "server/optim/schedule.h"
#include "server/session/consistency.h"
#include "server/session/deadline_scheduler.h"
#include "server/session/exactly_once.h"
#include "server/session/gradient.h"
#include "server/session/memory_budget.h"
#include "server/session/parameter_buffers.h"
#include "server/session/session_config.h"
#include "server/session/session_observer.h"
#include "server/session/session_state.h"
#include "server/session/step.h"
#include "server/session/sync_barrier.h"
#include "server/session/tensor_spec.h"
#include "wire/wire_tensor.h"

namespace optd {

// What a session holds in memory, in bytes (see optd.v1.MemoryUse).
struct SessionMemory {
  int64_t parameter_bytes = 0;
  int64_t optimizer_state_bytes = 0;  // allocated so far
  int64_t reserved_state_bytes = 0;   // reserved for first steps, not yet allocated
  int64_t reply_bytes = 0;            // older parameter buffers replies still hold
  int64_t barrier_bytes = 0;          // the gradients the open SYNC barrier keeps
  int64_t exactly_once_bytes = 0;     // an estimate
  int64_t total() const {
    return parameter_bytes + optimizer_state_bytes + reserved_state_bytes + reply_bytes +
           barrier_bytes + exactly_once_bytes;
  }
};

// A snapshot of a session's description, for GetSession and ListSessions.
struct SessionInfo {
  std::string id;
  SessionConfig config;
  std::vector<TensorSpec> tensors;
  int64_t version = 0;
  double learning_rate = 0;  // what the next step will use
  int64_t num_parameters = 0;
  int64_t parameter_bytes = 0;
  int64_t optimizer_state_bytes = 0;
  int64_t state_bytes_per_parameter = 0;
  absl::Time create_time;
  SessionMemory memory;
  // The optimizer's estimates (Optimizer::Estimates), as the next step will use them.
  std::vector<std::pair<std::string, double>> estimates;
};

// A worker's join (Session::Join).
struct JoinOutput {
  int64_t worker_incarnation = 0;
  int64_t version = 0;
};

// Rows of one tensor to read (Pull).
struct RowSelection {
  absl::string_view name;
  absl::Span<const int64_t> rows;
};

struct PullOutput {
  int64_t version = 0;
  std::vector<WireTensor> tensors;
  ParameterPoint point = ParameterPoint::kTraining;
  // With include_optimizer_state: the state of the tensors pulled, in the order pulled (an entry
  // for each, empty for a tensor without state), at the same version, and those tensors.
  std::optional<OptimizerState> optimizer_state;
  std::vector<TensorSpec> tensor_names;
  // Pays for the encoded bytes of the reply (see StepOutput::encoding). May be null.
  std::shared_ptr<MemoryReservation> encoding;
};

// What a session needs from the server around it. Each pointer must outlive the session.
class Session;

struct SessionEnv {
  Clock* clock = Clock::Real();
  SessionObserver* observer = nullptr;     // may be null; told of every step and refusal
  DeadlineScheduler* scheduler = nullptr;  // SYNC barrier deadlines; needed by SYNC sessions
  // Pays for parameters, optimizer state, barrier sums, decoded gradients and copies of shared
  // parameters; also the replies' buffers, which may outlive the session.
  MemoryBudget* budget = MemoryBudget::Unlimited();
  // The largest reply a Step or Pull may make, in bytes (the server's message limit): a request
  // whose reply could be larger is refused before anything is done. 0: no limit.
  int64_t max_reply_bytes = 0;
  // The most parameters (elements of all tensors) a session may hold; 0: no limit.
  int64_t max_parameters = 0;
  ExactlyOnceOptions exactly_once;
  // Called (outside the session's lock, before the step is answered) with the session's state at
  // each version that is a multiple of its placement's checkpoint_every_versions; null: never.
  std::function<void(const Session&, SessionState)> on_aligned_snapshot;
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  // Creates a session holding `tensors` (decoded to float32) and the optimizer `config` names.
  // Returns InvalidArgument for an invalid id, config, or tensor (no tensors, empty or repeated or
  // badly formed name, rank > kMaxTensorRank, a dimension < 1, wrong byte length, a non-finite
  // initial value).
  static absl::StatusOr<std::shared_ptr<Session>> Create(std::string id, SessionConfig config,
                                                         absl::Span<const WireTensorView> tensors,
                                                         const SessionEnv& env = {});

  // Rebuilds the session `state` describes (a Snapshot(), possibly read back from a checkpoint).
  // Returns InvalidArgument, naming what, if any part of it is invalid or inconsistent with the
  // rest (parameters or optimizer state that do not fit the tensors, a non-finite value, ...).
  static absl::StatusOr<std::shared_ptr<Session>> Restore(SessionState state,
                                                          const SessionEnv& env = {});

  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const std::string& id() const { return id_; }
  const std::vector<TensorSpec>& tensors() const { return specs_.all(); }

  // Submits one worker's gradient. `input.gradients` must name every tensor exactly once, with the
  // tensor's shape, and hold only finite values. `done` is called exactly once with the outcome:
  // before Step returns in ASYNC and BOUNDED sessions, and for SYNC sessions when the barrier
  // completes or expires, from the thread that completes it (another Step, or the scheduler).
  void Step(const StepInput& input, StepCallback done);

  // The same, waiting for the outcome (for tests and in-process callers; a SYNC step blocks the
  // caller until its barrier completes).
  absl::StatusOr<StepOutput> StepAndWait(const StepInput& input);

  // Starts a new incarnation of worker `worker_id` (exactly_once.h): its keyed steps carry the
  // returned incarnation and sequence numbers from 1. InvalidArgument for a bad worker id;
  // the session's closing status once it is closed.
  absl::StatusOr<JoinOutput> Join(absl::string_view worker_id);

  // Changes hyperparameters for the next step, keeping the optimizer state. Returns
  // InvalidArgument (naming the field) and changes nothing if any part is invalid.
  absl::Status Update(const SessionUpdate& update);

  // Fails every call waiting at a SYNC barrier with `status` and refuses later steps with it.
  // Called when the session is deleted or the server stops.
  void Close(const absl::Status& status);

  // For unloading an idle session: unless calls wait at its SYNC barrier (then false), refuses
  // every later step, update and join with `status` (as Close does), so that a checkpoint taken
  // now is its final state. Thaw() takes that back (the checkpoint failed: it stays loaded).
  bool Freeze(const absl::Status& status);
  void Thaw(const absl::Status& status);  // only if `status` is still what refuses (not Close's)

  // Counts every change a checkpoint holds: applied steps, updates, joins. A checkpointer compares
  // it to tell whether a session moved since its last checkpoint (its version alone does not
  // move for an UpdateSession).
  int64_t revision() const;

  // Returns the named tensors (all, in creation order, when `names` is empty) as `dtype`; for the
  // tensors in `rows`, only the rows chosen there (row-sparse, in the order given).
  // InvalidArgument for an unknown or repeated name, or a row out of range.
  // With `include_optimizer_state`, also the optimizer state of those tensors (not with rows).
  // With `point` kEvaluation, the optimizer's evaluation point (whole tensors: not with rows;
  // FailedPrecondition for an optimizer that keeps none).
  absl::StatusOr<PullOutput> Pull(absl::Span<const absl::string_view> names, WireDType dtype,
                                  absl::Span<const RowSelection> rows = {},
                                  bool include_optimizer_state = false,
                                  ParameterPoint point = ParameterPoint::kTraining) const;

  SessionInfo Info() const;

  // The session's durable state at its current version (see session_state.h).
  SessionState Snapshot() const;

  // When a worker last stepped, pulled, joined or updated the session (or its creation): what
  // the idle timeout of SessionStore measures. GetSession and ListSessions do not count.
  absl::Time last_used() const { return absl::FromUnixNanos(last_used_ns_.load()); }

  // True while calls wait at the session's SYNC barrier.
  bool busy() const;

 private:
  // Bytes of a reply's fields besides its tensors and missing workers: room for every key and
  // varint (Step and Pull replies).
  static constexpr int64_t kReplyFieldsBound = 256;

  // What a step (or an expired barrier) leaves to do once mu_ is released: the calls to answer
  // and what to tell the observer.
  struct Reports;

  Session(std::string id, TensorSpecs specs, ParameterBuffers parameters,
          MemoryReservation state_reservation, std::unique_ptr<Optimizer> optimizer,
          LrSchedule schedule, SessionConfig config, absl::Time create_time, const SessionEnv& env);

  // Checks env.max_parameters and reserves the parameters and the whole optimizer state of a
  // session of `specs` running `optimizer` from env.budget; with the parameters' bytes in
  // *parameter_bytes.
  static absl::StatusOr<MemoryReservation> ReserveMemory(const std::string& id,
                                                         const TensorSpecs& specs,
                                                         const Optimizer& optimizer,
                                                         const SessionEnv& env,
                                                         int64_t* parameter_bytes);

  // ResourceExhausted if a reply of `mode` and `dtype` (kTouched: the rows in `touched`; SYNC:
  // every row, as the rows are not known until the barrier completes) could exceed
  // max_reply_bytes_.
  absl::Status CheckReplySize(ReturnMode mode, WireDType dtype,
                              absl::Span<const std::optional<std::vector<int64_t>>> touched) const;

  // Reserves the bytes a reply of `mode` and `dtype` allocates when it is encoded (BF16/F16 whole
  // tensors, gathered rows; F32 whole tensors share the parameters and need none); null when
  // there are none. touched as for CheckReplySize.
  absl::StatusOr<std::shared_ptr<MemoryReservation>> ReserveEncoding(
      ReturnMode mode, WireDType dtype,
      absl::Span<const std::optional<std::vector<int64_t>>> touched,
      ParameterPoint point = ParameterPoint::kTraining) const;
  // InvalidArgument or FailedPrecondition unless a reply at `point` can be built (see StepInput).
  absl::Status CheckPoint(ReturnMode mode, ParameterPoint point) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // The part of Step under mu_: exactly-once, admission, then apply or join the barrier.
  void StepLocked(const StepInput& input, std::vector<Gradient> gradients, bool measure,
                  StepCallback done, Reports* reports) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // ASYNC and BOUNDED: applies `gradients` now and answers.
  void ApplyNowLocked(const StepInput& input, std::vector<Gradient> gradients, int64_t staleness,
                      bool measure, std::shared_ptr<MemoryReservation> encoding, StepCallback done,
                      Reports* reports) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // SYNC: adds the contribution to the barrier, completing it if it is full.
  void JoinBarrierLocked(const StepInput& input, std::vector<Gradient> gradients, bool measure,
                         std::shared_ptr<MemoryReservation> encoding, StepCallback done,
                         Reports* reports) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Clips `grads`, runs the optimizer with the schedule's learning rate (measuring its norms if
  // `measure`), advances the schedule (with `loss`), increments the version and fills the common
  // fields of `*out` and `*event`. Changes nothing when it fails.
  absl::Status ApplyLocked(std::vector<Gradient>& grads, std::optional<double> loss, bool measure,
                           StepOutput* out, StepEvent* event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Applies the barrier's reduced gradient, answers its waiters into `reports`.
  void CompleteBarrierLocked(bool measure, Reports* reports) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Scheduler callback: expires barrier `barrier_id` if it is still open.
  void ExpireBarrier(int64_t barrier_id);

  // Fills out->parameters as `mode` asks; touched[k] are the rows to return for kTouched (nullopt
  // or past the end: the whole tensor).
  void ShareParameters(ReturnMode mode, WireDType dtype,
                       absl::Span<const std::optional<std::vector<int64_t>>> touched,
                       StepOutput* out, ParameterPoint point = ParameterPoint::kTraining) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // A whole tensor's evaluation point (computed now, encoded as `dtype` when written).
  WireTensor EvaluationTensorOf(int index, WireDType dtype) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // A whole tensor (shared, encoded as `dtype` when written) or some of its rows (encoded now).
  WireTensor TensorOf(int index, WireDType dtype) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  WireTensor RowsOf(int index, absl::Span<const int64_t> rows, WireDType dtype) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // Whether this step should measure its update and parameter norms (the observer decides).
  bool WantsNorms() const;

  // What the session holds in memory now.
  SessionMemory MemoryLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // The config in force.
  SessionConfig ConfigLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  SessionState SnapshotLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Puts SnapshotLocked() in `reports` when the version just reached is one the placement
  // checkpoints (Placement::checkpoint_every_versions).
  void SnapshotIfAlignedLocked(Reports* reports) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // Replaces the optimizer state (SessionUpdate::optimizer_state), matching arrays by name.
  absl::Status ImportStateLocked(const OptimizerState& state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The optimizer's state bytes per parameter, read without the lock (for size bounds only: it
  // changes only through UpdateSession).
  int64_t StateBytesPerElementUnlocked() const ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return optimizer_->StateBytesPerElement();
  }

  // Records a use now (last_used).
  void Touch() const { last_used_ns_.store(absl::ToUnixNanos(clock_->Now())); }

  // Answers the calls in `reports` and tells the observer; no lock may be held.
  void Report(Reports reports);

  // Constant after construction.
  const std::string id_;
  const TensorSpecs specs_;
  const ConsistencyOptions consistency_;
  const std::optional<Placement> placement_;  // set on a shard of a sharded session
  const absl::Time create_time_;
  Clock* const clock_;
  SessionObserver* const observer_;  // may be null; thread-safe itself
  const std::function<void(const Session&, SessionState)> on_aligned_;  // may be empty
  DeadlineScheduler* const scheduler_;  // may be null unless SYNC; thread-safe itself
  MemoryBudget* const budget_;          // thread-safe itself
  const int64_t max_reply_bytes_;
  mutable std::atomic<int64_t> last_used_ns_;

  mutable absl::Mutex mu_;
  // The optimizer state the session may grow to (StateBytesPerElement per parameter), reserved
  // at creation (and by UpdateSession) so that a first step never fails for memory.
  MemoryReservation state_reservation_ ABSL_GUARDED_BY(mu_);
  ParameterBuffers parameters_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Optimizer> optimizer_ ABSL_GUARDED_BY(mu_);
  LrSchedule schedule_ ABSL_GUARDED_BY(mu_);
  ClipOptions clipping_ ABSL_GUARDED_BY(mu_);
  int64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t revision_ ABSL_GUARDED_BY(mu_) = 0;   // see revision()
  bool restored_ ABSL_GUARDED_BY(mu_) = false;  // rebuilt from a SessionState
  absl::Status closed_ ABSL_GUARDED_BY(mu_);    // not OK once Close was called
  ExactlyOnceTable exactly_once_ ABSL_GUARDED_BY(mu_);
  SyncBarrier barrier_ ABSL_GUARDED_BY(mu_);
};

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_SESSION_H_
