// File: exactly_once.h
//
// ExactlyOnceTable: what a session remembers to apply each (worker id, sequence number) at most
// once. Per worker: its highest applied sequence number and the outcomes of its most recent
// steps, so a retry of one of them gets the same answer (marked duplicate) instead of a second
// application. A sequence number at or below the worker's highest that is no longer among its
// recent outcomes cannot be answered and is refused.
//
// Bounded memory: at most Options::max_workers workers (the least recently active is forgotten
// first) and Options::replay_window outcomes each.
//
// Who uses it: Session, under its lock; it is also part of the session's durable state
// (SessionState), so it is a copyable value. NOT thread-safe.

#ifndef OPTD_SERVER_SESSION_EXACTLY_ONCE_H_
#define OPTD_SERVER_SESSION_EXACTLY_ONCE_H_

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "server/session/step.h"

namespace optd {

struct ExactlyOnceOptions {
  int max_workers = 1024;  // workers remembered per session
  int replay_window = 16;  // outcomes remembered per worker
};

class ExactlyOnceTable {
 public:
  using Options = ExactlyOnceOptions;

  // One remembered step of a worker: its sequence number and outcome (without parameters).
  struct Outcome {
    int64_t sequence = 0;
    StepOutput output;
  };
  // A worker as remembered, for snapshots.
  struct Worker {
    std::string id;
    int64_t last_sequence = 0;
    int64_t last_active = 0;     // the session version when it was last recorded
    std::deque<Outcome> recent;  // oldest first
  };

  ExactlyOnceTable() = default;
  explicit ExactlyOnceTable(ExactlyOnceOptions options) : options_(options) {}

  // For a keyed request (sequence > 0): the outcome to answer with if (worker_id, sequence) was
  // applied and is remembered (else null), or FailedPrecondition if it is at or below the
  // worker's highest sequence and no longer remembered.
  absl::StatusOr<const Outcome*> Find(absl::string_view worker_id, int64_t sequence) const;

  // Remembers the outcome of an applied keyed step (ignored when sequence <= 0 or no worker id);
  // `version` is the session's version after it.
  void Record(absl::string_view worker_id, int64_t sequence, const StepOutput& output,
              int64_t version);

  int num_workers() const { return static_cast<int>(workers_.size()); }

  // Every worker remembered (in no particular order), and a table rebuilt from them.
  std::vector<Worker> Export() const;
  static ExactlyOnceTable Import(std::vector<Worker> workers,
                                 ExactlyOnceOptions options = ExactlyOnceOptions());

 private:
  struct Entry {
    int64_t last_sequence = 0;
    int64_t last_active = 0;
    std::deque<Outcome> recent;
  };

  Options options_;
  absl::flat_hash_map<std::string, Entry> workers_;
};

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_EXACTLY_ONCE_H_
