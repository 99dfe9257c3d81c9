// File: exactly_once.h
//
// ExactlyOnceTable: what a session remembers to apply each keyed step at most once. A keyed step
// carries (worker id, sequence number), and, for a worker that joined the session (JoinSession),
// the incarnation the join returned. Per worker the table keeps its incarnation, its highest
// applied sequence number and the outcomes of its most recent steps, so that a retry of one of them
// gets the same answer (marked duplicate) instead of a second application.
//
// A retry is never applied twice. When the table cannot tell whether a step was applied, it
// refuses it with FailedPrecondition instead of guessing:
//   - a sequence at or below the worker's highest that is no longer among its recent outcomes;
//   - a joined worker it no longer knows (forgotten: see below), or whose incarnation was
//     superseded by a later join (another process took the worker id): the worker must join again
//     (the status says so: NeedsRejoin, step.h);
//   - a worker that did not join and is unknown, once the table has forgotten any worker that did
//     not join: it could be a forgotten worker's retry (NeedsRejoin too).
//
// Bounded memory: at most ExactlyOnceOptions::max_workers workers (the least recently active is
// forgotten first), replay_window outcomes each, each outcome naming at most kRecordedMissing
// missing SYNC workers. MemoryBytes() estimates the total (about 2 KB per worker with the
// defaults, so about 2 MB for a session with 1024 active workers).
//
// Who uses it: Session, under its lock; it is also part of the session's durable state
// (SessionState), so it is a copyable value (Export/Import). NOT thread-safe.

#ifndef OPTD_SERVER_SESSION_EXACTLY_ONCE_H_
#define OPTD_SERVER_SESSION_EXACTLY_ONCE_H_

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/session/step.h"

namespace optd {

struct ExactlyOnceOptions {
  int max_workers = 1024;  // workers remembered per session
  int replay_window = 16;  // outcomes remembered per worker
};

class ExactlyOnceTable {
 public:
  // Missing SYNC workers an outcome keeps for its replays (a duplicate names at most these).
  static constexpr int kRecordedMissing = 8;

  // One remembered step of a worker: its sequence number and outcome (without parameters).
  struct Outcome {
    int64_t sequence = 0;
    StepOutput output;
  };
  // A worker as remembered.
  struct Worker {
    std::string id;
    int64_t incarnation = 0;  // 0: it did not join
    int64_t last_sequence = 0;
    int64_t last_active = 0;     // a counter of the table's activity, for eviction
    std::deque<Outcome> recent;  // oldest first
  };
  // The whole table as a value (for snapshots).
  struct State {
    std::vector<Worker> workers;
    int64_t last_incarnation = 0;
    int64_t activity = 0;
    bool forgot_unjoined = false;
  };

  ExactlyOnceTable() = default;
  explicit ExactlyOnceTable(ExactlyOnceOptions options) : options_(options) {}

  // Starts a new incarnation of `worker_id` (forgetting its previous one and its outcomes) and
  // returns it: a number unique within the session, larger than any before.
  int64_t Join(absl::string_view worker_id);

  // For a keyed step (sequence > 0) of `worker_id` with `incarnation` (0: not joined): the outcome
  // to answer with if it was applied and is remembered (else null: a new step), or the refusal
  // when the table cannot tell (see the file comment).
  absl::StatusOr<const Outcome*> Find(absl::string_view worker_id, int64_t incarnation,
                                      int64_t sequence) const;

  // Remembers the outcome of an applied keyed step (ignored when sequence <= 0 or no worker id).
  // REQUIRES: Find returned null for it, and nothing changed the table since.
  void Record(absl::string_view worker_id, int64_t incarnation, int64_t sequence,
              const StepOutput& output);

  int num_workers() const { return static_cast<int>(workers_.size()); }

  // An estimate of the bytes the table holds (kept as it changes: constant time).
  int64_t MemoryBytes() const { return bytes_; }

  State Export() const;
  static ExactlyOnceTable Import(State state, ExactlyOnceOptions options = ExactlyOnceOptions());

  // Makes every later Join return an incarnation above `floor`. A session restored from a
  // checkpoint calls it with a floor from the clock (IncarnationFloor): the process that wrote the
  // checkpoint may have handed out incarnations after it, and a number handed out twice would let
  // a lost step's late retry be answered with another process's outcome.
  void SkipIncarnationsTo(int64_t floor);

  // The floor for a table restored at `now`: microseconds since the Unix epoch, above every
  // incarnation an earlier process handed out since its own restore as long as it joined fewer
  // than one worker per microsecond (a join is an RPC) and the clock did not step back.
  static int64_t IncarnationFloor(absl::Time now);

 private:
  struct Entry {
    int64_t incarnation = 0;
    int64_t last_sequence = 0;
    int64_t last_active = 0;
    std::deque<Outcome> recent;
  };

  // The entry of `worker_id`, made (forgetting the least recently active worker if the table is
  // full) if there is none.
  Entry& Touch(absl::string_view worker_id);

  static int64_t OutcomeBytes(const Outcome& outcome);
  static int64_t EntryBytes(absl::string_view id, const Entry& entry);

  ExactlyOnceOptions options_;
  absl::flat_hash_map<std::string, Entry> workers_;
  int64_t bytes_ = sizeof(ExactlyOnceTable);
  int64_t last_incarnation_ = 0;
  int64_t activity_ = 0;
  bool forgot_unjoined_ = false;  // a worker that never joined was forgotten
};

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_EXACTLY_ONCE_H_
