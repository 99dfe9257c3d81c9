// File: checkpointer.h
//
// Checkpointer: durability of a SessionStore's sessions in a directory (--checkpoint_dir). Each
// session has a folder "session-<id>" of checkpoint files named by version
// ("00000000000000000042.ckpt", checkpoint_file.h); the newest `keep` are kept.
//
//   - Restore() loads, at start-up, every session it finds: the newest checkpoint that reads back
//     whole (a torn or corrupt newest one is logged, counted, and the previous one used).
//   - Checkpoint(session) writes one now and returns when it is durable (the Checkpoint RPC).
//   - Start() runs a thread that checkpoints every session whose version moved, every `interval`.
//   - CheckpointAll() writes every session (graceful shutdown).
//   - Forget(id) removes a deleted session's folder, so a restart does not bring it back.
//   - Read(path) reads one of its checkpoint files (CreateSession from a checkpoint: a fork).
//
// One optd per folder: Open locks the folder itself (flock, released when the process ends,
// however it ends) and fails if another process holds it, naming that process's pid (which it
// writes to DIR/.optd.lock).
//
// A checkpoint is a consistent cut: Session::Snapshot copies the state at one version under the
// session's lock (parameters are shared, not copied); the file is written outside every lock, so
// steps wait only for that copy, by a thread at nice 10, so that a long write takes CPU from the
// steps of other sessions only when a core is idle. Failures (full disk, unwritable folder, a file
// removed under optd) leave older checkpoints intact, are logged and reported, and training goes
// on.
//
// Who uses it: OptdServer and main.cc. Thread-safe: mu_ serialises writes (one checkpoint at a
// time) and guards the versions written; the observer hears of every write and failure.

#ifndef OPTD_SERVER_PERSIST_CHECKPOINTER_H_
#define OPTD_SERVER_PERSIST_CHECKPOINTER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "server/persist/checkpoint_file.h"
#include "server/session/session_store.h"

namespace optd {

struct CheckpointerOptions {
  std::string dir;                             // must exist or be creatable, and writable
  absl::Duration interval = absl::Minutes(5);  // 0: no periodic checkpoints
  int keep = 3;                                // checkpoints kept per session, >= 1
};

// Why a checkpoint was written, for logs and metrics.
// Why a checkpoint is written: kCreate is a new session's first (CreateSession, forks included),
// so that a crash never loses a session whose creation was answered.
// kAligned: a sharded session reached a version its placement checkpoints
// (Placement::checkpoint_every_versions).
enum class CheckpointReason { kInterval, kRequest, kShutdown, kIdle, kCreate, kAligned };
absl::string_view CheckpointReasonName(CheckpointReason reason);

// Hears of checkpoints (server/metrics implements it). Called outside every lock; thread-safe.
class CheckpointObserver {
 public:
  virtual ~CheckpointObserver() = default;
  virtual void OnCheckpointWritten(absl::string_view session_id, int64_t bytes, absl::Duration took,
                                   absl::Time when) {}
  // `error` is the status's code name, in snake case ("resource_exhausted", "permission_denied").
  virtual void OnCheckpointFailed(absl::string_view session_id, absl::string_view error) {}
  // A checkpoint could not be read back at restore time and an older one (or none) was used.
  virtual void OnCheckpointSkipped(absl::string_view session_id) {}
};

struct CheckpointResult {
  int64_t version = 0;
  std::string path;
  int64_t bytes = 0;
};

class Checkpointer {
 public:
  // Checks that `options.dir` can be used (creating it if missing): FailedPrecondition naming the
  // folder and the reason otherwise (optd then refuses to start). `store`, `codec`, `clock` and
  // `observer` (may be null) must outlive the checkpointer.
  static absl::StatusOr<std::unique_ptr<Checkpointer>> Open(
      CheckpointerOptions options, SessionStore* store, const ConfigCodec* codec,
      std::string server_incarnation, Clock* clock, CheckpointObserver* observer);
  ~Checkpointer();  // stops the periodic thread

  // Loads every session of the folder into the store; returns how many. Sessions that cannot be
  // read at all are logged and skipped (never a silent empty server: the log names them).
  absl::StatusOr<int> Restore();

  absl::StatusOr<CheckpointResult> Checkpoint(const Session& session, CheckpointReason reason);

  // Writes `state`, a snapshot of `session` taken by the caller (a step reaching an aligned
  // version), as Checkpoint would.
  absl::StatusOr<CheckpointResult> Write(const Session& session, SessionState state,
                                         CheckpointReason reason);

  // The versions of session `id`'s checkpoints, newest first (empty if it has none).
  std::vector<int64_t> Versions(absl::string_view id) const;

  // The state of session `id` from its checkpoint at exactly `version` (for
  // UpdateSessionRequest.restore_version). NotFound naming the versions there are; the file's
  // error if it does not read back.
  absl::StatusOr<SessionState> ReadVersion(absl::string_view id, int64_t version) const;

  // Removes session `id`'s checkpoints of versions after `version` (a history the session went
  // back from: a restart must not restore it), and records `session`, just restored from the
  // checkpoint at `version`, as durable. Call it after the store holds `session`, so that no step
  // of the session it replaced can write a checkpoint afterwards.
  void ForgetAfter(const Session& session, int64_t version);

  // Checkpoints every session of the store whose version moved since its last checkpoint.
  void CheckpointAll(CheckpointReason reason);

  // Removes the checkpoints of session `id` (deleted).
  void Forget(absl::string_view id);

  // Reads the checkpoint at `path`: a ".ckpt" file inside this folder, absolute or relative to it
  // ("session-a/00000000000000000042.ckpt"). Anything else is PermissionDenied (a client names
  // the path: optd reads no other file of its machine for it), a missing file NotFound.
  absl::StatusOr<SessionState> Read(const std::string& path) const;

  // The newest checkpoint file of session `id`; NotFound if it has none.
  absl::StatusOr<std::string> NewestFile(absl::string_view id) const;

  // The state of session `id` from its newest checkpoint that reads back whole and holds that
  // session (older ones when the newer are damaged, as at start-up). InvalidArgument for an id
  // that is not a session id, NotFound when it has no checkpoint, else the newest file's error.
  absl::StatusOr<SessionState> ReadNewest(absl::string_view id) const;

  // Records that `session` was just loaded from its newest checkpoint (a reload of an unloaded
  // session): it is durable as it is, until it changes.
  void Adopt(const Session& session);

  // The newest checkpointed version of session `id`, or -1.
  int64_t DurableVersion(absl::string_view id) const;

  // Starts the periodic thread (options.interval > 0).
  void Start();

  const std::string& dir() const { return options_.dir; }

 private:
  Checkpointer(CheckpointerOptions options, SessionStore* store, const ConfigCodec* codec,
               std::string server_incarnation, Clock* clock, CheckpointObserver* observer,
               int lock_fd, bool owns_lock);

  std::string FolderOf(absl::string_view id) const;
  // The checkpoint files of a session's folder, newest first.
  // Files() of session `id`'s folder: InvalidArgument for an id that is not a session id,
  // NotFound when it has none.
  absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> FilesOf(absl::string_view id) const;

  // Reads the checkpoint at `path` of session `id`'s folder: DataLoss if it holds another session.
  absl::StatusOr<SessionState> ReadFileOf(absl::string_view id, const std::string& path) const;

  // With `remove_partial` (start-up only, when nothing writes), also deletes the temporary files
  // of writes a crash interrupted.
  std::vector<std::pair<int64_t, std::string>> Files(const std::string& folder,
                                                     bool remove_partial = false) const;
  // Keeps the newest options_.keep files, and as many more of versions that are multiples of
  // `aligned_every` (> 0: a sharded session's aligned checkpoints).
  void Prune(const std::string& folder, int64_t aligned_every);
  absl::StatusOr<CheckpointResult> WriteLocked(const Session& session, const SessionState& state,
                                               CheckpointReason reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  void Run();

  const CheckpointerOptions options_;
  SessionStore* const store_;
  const ConfigCodec* const codec_;
  const std::string server_incarnation_;
  Clock* const clock_;
  CheckpointObserver* const observer_;

  absl::Mutex write_mu_;  // one checkpoint written at a time
  mutable absl::Mutex mu_;
  // What each session's newest checkpoint holds: its version and Session::revision() (0 for a
  // session restored from it).
  struct Durable {
    int64_t version = -1;
    int64_t revision = 0;
    const Session* session = nullptr;  // the object whose revision it is (only compared)
  };
  absl::flat_hash_map<std::string, Durable> durable_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
  // The folder, opened and locked for the checkpointer's life (or for the process's, when it
  // took over a lock the process already held): a second optd on it is refused at start-up.
  const int lock_fd_;
  const bool owns_lock_;  // this descriptor holds the flock (not another Checkpointer's)
};

}  // namespace optd

#endif  // OPTD_SERVER_PERSIST_CHECKPOINTER_H_
