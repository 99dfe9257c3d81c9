// File: session.h
//
// Session: one model's named float32 parameters, the optimizer that updates them, a version that
// each applied step increments, and the consistency machinery that turns many workers' gradients
// into steps: ASYNC (apply on arrival), SYNC (a barrier of K workers per version, with a deadline),
// BOUNDED (refuse gradients more than S versions old), and exactly-once application of retried
// requests keyed by (worker id, sequence number).
//
// Who may call it: SessionStore creates sessions (always owned by a std::shared_ptr); the service
// layer calls Step, Pull and Info on a session it got from the store.
//
// Thread safety: all methods are thread-safe. The id, tensor names and shapes are immutable after
// Create and read without a lock; everything else is guarded by mu_. A Step decodes and validates
// its gradients before taking mu_, holds mu_ for the bookkeeping, the optimizer update and the
// encoding of the reply, and calls its callback and the observer only after releasing it. A step
// is atomic: other callers see all of it or none of it.
//
// Errors, through the step callback (nothing is changed by a request that fails):
//   InvalidArgument     malformed request (the message names the field, the value, the range)
//   Aborted             stale gradient (SYNC: not the current version; BOUNDED: older than S), or a
//                       SYNC barrier that expired short of its quorum; the status carries the
//                       current version (CurrentVersionOf)
//   FailedPrecondition  a sequence number below the worker's last one that is no longer remembered
//   Unavailable         the session was closed (deleted, or the server is stopping) mid-barrier

#ifndef OPTD_SERVER_SESSION_SESSION_H_
#define OPTD_SERVER_SESSION_SESSION_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "server/optim/clip.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"
#include "server/optim/schedule.h"
#include "server/session/consistency.h"
#include "server/session/deadline_scheduler.h"
#include "server/session/session_observer.h"
#include "server/session/wire_tensor.h"

namespace optd {

// How a session optimizes.
struct SessionConfig {
  OptimizerOptions optimizer = AdamOptions{};
  ScheduleOptions schedule;  // constant by default
  ClipOptions clipping;      // off by default
  ConsistencyOptions consistency;
};

// What UpdateSession may change; an unset member changes nothing.
struct SessionUpdate {
  // Edits the options in force (called under the session's lock, so concurrent updates of
  // different fields do not lose each other); must keep the optimizer kind and validate.
  std::function<absl::Status(OptimizerOptions*)> optimizer;
  std::optional<ScheduleOptions> schedule;
  std::optional<ClipOptions> clipping;
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  int64_t num_elements = 0;
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
};

// Which parameters a step's reply carries.
enum class ReturnMode {
  kAll,      // every tensor
  kNone,     // none
  kTouched,  // tensors with a dense gradient whole; with a row-sparse one, the touched rows
};

// A gradient decoded for one tensor: dense, or row-sparse with sorted unique rows (duplicates
// summed). Its values (dense: every element; sparse: rows.size() * row size) are owned, or, for a
// dense gradient, borrowed from the request's bytes (F32, no copy) or from a buffer it decoded into
// (Allocate) until something must write them or keep them past the request (a SYNC barrier):
// Own() copies them then.
struct Gradient {
  bool sparse = false;
  std::vector<int64_t> rows;  // sparse only
  // SquaredNorm(values()) when it is known: measured while decoding a dense gradient (the pass
  // that checks it is finite), forgotten by Own(), whose caller may write the values.
  std::optional<double> squares;

  absl::Span<const float> values() const {
    return borrowed_ ? borrowed_values_ : absl::MakeConstSpan(owned_);
  }
  // The values as a vector of their own (a borrowed view is copied first).
  std::vector<float>& Own() {
    squares.reset();
    if (borrowed_) {
      owned_.assign(borrowed_values_.begin(), borrowed_values_.end());
      borrowed_ = false;
      buffer_.reset();
    }
    return owned_;
  }
  // Borrows `values`, which must outlive every use of this Gradient.
  void Borrow(absl::Span<const float> values) {
    borrowed_values_ = values;
    borrowed_ = true;
  }
  // A buffer of `n` values for the caller to fill (a decoded BF16 or F16 gradient), held as a
  // borrowed view is: no zero-fill first, as a vector would do.
  absl::Span<float> Allocate(size_t n) {
    buffer_.reset(new float[n]);
    Borrow(absl::MakeConstSpan(buffer_.get(), n));
    return absl::MakeSpan(buffer_.get(), n);
  }

 private:
  std::unique_ptr<float[]> buffer_;  // what Allocate() lent, if anything
  std::vector<float> owned_;
  absl::Span<const float> borrowed_values_;
  bool borrowed_ = false;
};

// One worker's request. Borrows the gradients' bytes: they must stay valid until Step returns
// (Step copies what a SYNC barrier keeps).
struct StepInput {
  std::string worker_id;
  // One per session tensor, any order.
  absl::Span<const WireTensorView> gradients;
  std::optional<double> loss;
  ReturnMode return_mode = ReturnMode::kAll;
  WireDType return_dtype = WireDType::kF32;
  // Idempotency key with worker_id; 0 means none.
  int64_t sequence = 0;
  // The version the gradient was computed at.
  std::optional<int64_t> version;
};

struct StepOutput {
  int64_t version = 0;
  double gradient_norm = 0;
  double learning_rate = 0;
  bool duplicate = false;
  // The version of `parameters` (later than `version` for a duplicate answered after more steps).
  int64_t parameters_version = 0;
  int workers = 1;
  std::vector<std::string> missing_workers;
  int64_t staleness = 0;
  // In creation order, as StepInput::return_mode asked.
  std::vector<WireTensor> parameters;
};

using StepCallback = absl::AnyInvocable<void(absl::StatusOr<StepOutput>)>;

// The session version carried by an Aborted status from Step, or -1.
int64_t CurrentVersionOf(const absl::Status& status);

struct PullOutput {
  int64_t version = 0;
  std::vector<WireTensor> tensors;
};

// Limits on what a session may hold.
inline constexpr int kMaxSessionIdLength = 128;
inline constexpr int kMaxTensorNameLength = 256;
inline constexpr int kMaxTensorRank = 8;
inline constexpr int kMaxTensorsPerSession = 4096;
// Exactly-once table: per session, the most recent outcomes of at most kMaxTrackedWorkers workers
// (the least recently active is forgotten first), kReplayWindow outcomes each.
inline constexpr int kMaxTrackedWorkers = 1024;
inline constexpr int kReplayWindow = 16;
// With an observer, the update and parameter norms of a step (StepEvent) cost the optimizer a copy
// and an extra pass over the parameters. Sessions of up to kNormsEveryStepElements parameters
// measure them at every step; larger ones at most once per kNormsInterval (other steps report
// them as not measured, so the metrics keep the last measured values).
inline constexpr int64_t kNormsEveryStepElements = 256 * 1024;
inline constexpr absl::Duration kNormsInterval = absl::Milliseconds(250);

class Session : public std::enable_shared_from_this<Session> {
 public:
  // Creates a session holding `tensors` (decoded to float32) and the optimizer `config` names.
  // Returns InvalidArgument for an invalid id, config, or tensor (no tensors, empty or repeated or
  // badly formed name, rank > kMaxTensorRank, a dimension < 1, wrong byte length, a non-finite
  // initial value). `observer`, if not null, must outlive the session; it is told of every step and
  // refusal.
  // `scheduler` (needed by SYNC sessions; may be null otherwise) must outlive the session.
  static absl::StatusOr<std::shared_ptr<Session>> Create(std::string id, SessionConfig config,
                                                         absl::Span<const WireTensorView> tensors,
                                                         absl::Time now,
                                                         SessionObserver* observer = nullptr,
                                                         DeadlineScheduler* scheduler = nullptr);

  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const std::string& id() const { return id_; }
  const std::vector<TensorSpec>& tensors() const { return specs_; }

  // Submits one worker's gradient. `input.gradients` must name every tensor exactly once, with the
  // tensor's shape, and hold only finite values. `done` is called exactly once with the outcome:
  // before Step returns in ASYNC and BOUNDED sessions, and for SYNC sessions when the barrier
  // completes or expires, from the thread that completes it (another Step, or the scheduler).
  void Step(const StepInput& input, StepCallback done);

  // The same, waiting for the outcome (for tests and in-process callers; a SYNC step blocks the
  // caller until its barrier completes).
  absl::StatusOr<StepOutput> StepAndWait(const StepInput& input);

  // Changes hyperparameters for the next step, keeping the optimizer state. Returns
  // InvalidArgument (naming the field) and changes nothing if any part is invalid.
  absl::Status Update(const SessionUpdate& update);

  // Fails every call waiting at a SYNC barrier with `status` and refuses later steps with it.
  // Called when the session is deleted or the server stops.
  void Close(const absl::Status& status);

  // Returns the named tensors (all, in creation order, when `names` is empty) as `dtype`; for the
  // tensors in `rows`, only the rows chosen there (row-sparse, in the order given).
  // InvalidArgument for an unknown or repeated name, or a row out of range.
  absl::StatusOr<PullOutput> Pull(absl::Span<const absl::string_view> names, WireDType dtype,
                                  absl::Span<const RowSelection> rows = {}) const;

  SessionInfo Info() const;

 private:
  Session(std::string id, std::vector<TensorSpec> specs, std::vector<std::vector<float>> values,
          std::unique_ptr<Optimizer> optimizer, LrSchedule schedule, ClipOptions clipping,
          ConsistencyOptions consistency, absl::Time create_time, SessionObserver* observer,
          DeadlineScheduler* scheduler);

  // One worker's recent outcomes, for exactly-once replies.
  struct Outcome {
    int64_t sequence = 0;
    StepOutput output;  // without parameters
  };
  struct WorkerRecord {
    int64_t last_sequence = 0;
    int64_t last_active = 0;     // version_ when last seen, for eviction
    std::deque<Outcome> recent;  // at most kReplayWindow, oldest first
  };
  // A call waiting at the SYNC barrier.
  struct Waiter {
    std::string worker_id;
    int64_t sequence = 0;
    ReturnMode return_mode = ReturnMode::kAll;
    WireDType return_dtype = WireDType::kF32;
    bool duplicate = false;  // a retry attached to a pending contribution
    int64_t bytes_received = 0;
    StepCallback done;
  };
  // The SYNC barrier of the current version.
  struct Barrier {
    int64_t id = 0;  // changes every time a barrier completes or expires
    absl::Time opened;
    std::vector<std::string> contributors;  // in arrival order
    std::vector<std::vector<float>> sum;    // per tensor, sum of the contributed gradients
    // Per tensor: whether a contribution was dense, and the rows the sparse ones touched.
    std::vector<bool> dense;
    std::vector<std::vector<int64_t>> touched;
    std::vector<double> losses;
    std::vector<Waiter> waiters;
  };
  // A finished request to answer (and report) after mu_ is released.
  struct Completion {
    StepCallback done;
    absl::StatusOr<StepOutput> result;
    int64_t bytes_received = 0;
    int64_t staleness = -1;
  };
  // A completed or expired barrier, to report after mu_ is released.
  struct BarrierReport {
    double wait_seconds = 0;
    int missing_workers = 0;
  };

  // Decodes and validates the gradients of `input` into `grads` (one per tensor, creation order).
  // On failure sets `*reason`.
  absl::Status DecodeGradients(const StepInput& input, std::vector<Gradient>* grads,
                               RefusalReason* reason) const;

  // Elements per row of tensor `index` (its size over its first dimension).
  int64_t RowSize(int index) const;

  // The dense form of `g` for tensor `index`.
  std::vector<float> Densify(int index, Gradient&& g) const;

  // Checks the request's worker id, sequence and version against the session's state. Returns OK
  // to go on, or the refusal (with *reason set). Sets *duplicate_of if the request repeats an
  // applied step (then returns OK and the caller replies with that outcome).
  absl::Status Admit(const StepInput& input, const Outcome** duplicate_of, int64_t* staleness,
                     RefusalReason* reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Scales `grads` by `scale`, clips them, runs the optimizer with the schedule's learning rate,
  // advances the schedule (with `loss`), increments the version and fills the common fields of
  // `*out` and `*event`. out->gradient_norm must already hold the norm before clipping.
  absl::Status ApplyLocked(std::vector<Gradient>& grads, float scale, std::optional<double> loss,
                           StepOutput* out, StepEvent* event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Remembers the outcome of (worker, sequence) for retries.
  void RecordOutcome(const std::string& worker_id, int64_t sequence, const StepOutput& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Fills out->parameters as `mode` asks; `touched` (per tensor, null for a dense gradient) are
  // the rows to return for kTouched.
  void EncodeParameters(ReturnMode mode, WireDType dtype,
                        const std::vector<const std::vector<int64_t>*>& touched,
                        StepOutput* out) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // Applies the barrier's gradients (those present), answers its waiters into `completions`, and
  // opens the next barrier.
  void CompleteBarrierLocked(std::vector<Completion>* completions, StepEvent* event,
                             BarrierReport* report) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Fails every waiter of the barrier with `status` and opens the next barrier.
  void FailBarrierLocked(const absl::Status& status, std::vector<Completion>* completions)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Scheduler callback: expires barrier `barrier_id` if it is still open.
  void ExpireBarrier(int64_t barrier_id);

  // The workers a SYNC barrier expects and has not heard from.
  std::vector<std::string> MissingWorkersLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // Answers `completions` and tells the observer about them; no lock may be held.
  void Report(std::vector<Completion> completions, const StepEvent* event,
              const BarrierReport* barrier, std::optional<RefusalReason> refusal);

  // Index of the tensor named `name`, or -1.
  int FindTensor(absl::string_view name) const;

  // A whole tensor as `dtype`; F32 shares values_[index] (no copy).
  WireTensor EncodeTensor(int index, WireDType dtype) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // values_[index], to be written: first made this session's alone (copied if a reply shares it,
  // adding the bytes copied to *copied_bytes).
  std::vector<float>& WritableValues(int index, int64_t* copied_bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  WireTensor EncodeRows(int index, absl::Span<const int64_t> rows, WireDType dtype) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  const std::string id_;
  const std::vector<TensorSpec> specs_;
  const ConsistencyOptions consistency_;
  const absl::Time create_time_;
  SessionObserver* const observer_;     // may be null; thread-safe itself
  DeadlineScheduler* const scheduler_;  // may be null unless SYNC; thread-safe itself

  mutable absl::Mutex mu_;
  // The parameters, one buffer per tensor. A buffer may also be held by replies (SharedFloats):
  // WritableValues copies it before the session writes it, so a shared buffer is never written.
  std::vector<std::shared_ptr<std::vector<float>>> values_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Optimizer> optimizer_ ABSL_GUARDED_BY(mu_);
  LrSchedule schedule_ ABSL_GUARDED_BY(mu_);
  ClipOptions clipping_ ABSL_GUARDED_BY(mu_);
  int64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status closed_ ABSL_GUARDED_BY(mu_);  // not OK once Close was called
  absl::flat_hash_map<std::string, WorkerRecord> workers_ ABSL_GUARDED_BY(mu_);
  Barrier barrier_ ABSL_GUARDED_BY(mu_);
  // SYNC: every worker id that ever contributed (to name missing workers without worker_ids).
  std::vector<std::string> known_workers_ ABSL_GUARDED_BY(mu_);
  // When the step norms were last measured (kNormsInterval).
  absl::Time norms_measured_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

// Returns InvalidArgument unless `id` is 1-kMaxSessionIdLength characters of [A-Za-z0-9._-].
absl::Status ValidateSessionId(absl::string_view id);

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_SESSION_H_
