// File: session_store.h
//
// SessionStore: the server's sessions by id, in memory. With an idle timeout, it unloads the
// sessions nothing has used for that long (a sweep on its scheduler), and remembers the most
// recent unloads to say so when a worker asks for one.
//
// With durability (SessionStoreOptions::reload and stored), a session exists while it is loaded
// or has a checkpoint: Find loads a session that is only on disk (unloaded while idle, or not
// restored at start-up, whose error it then returns), Create refuses such an id, and Delete
// accepts it (the caller removes its checkpoints).
//
// Who may call it: the service layer (and tests). Thread-safe: mu_ guards only the id -> session
// map and is held just long enough to find, insert or erase an entry; a caller copies out the
// std::shared_ptr<Session> and works on the session under the session's own lock. A session being
// stepped while it is deleted finishes that step and is freed when its last user lets go.
//
// Errors: NotFound for an unknown id, AlreadyExists for a taken id, ResourceExhausted when
// max_sessions are held (or the session's memory or parameters are over their limits),
// InvalidArgument from Session::Create and Session::Restore.

#ifndef OPTD_SERVER_SESSION_SESSION_STORE_H_
#define OPTD_SERVER_SESSION_SESSION_STORE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "base/clock.h"
#include "server/session/deadline_scheduler.h"
#include "server/session/session.h"
#include "server/session/session_state.h"

namespace optd {

struct SessionStoreOptions {
  // Most sessions held at once; one more CreateSession is ResourceExhausted.
  int max_sessions = 1024;
  // Most parameters one session may hold (--max_session_parameters); 0: no limit.
  int64_t max_session_parameters = 0;
  // Largest reply a Step or Pull may make (the server's message limit); 0: no limit.
  int64_t max_reply_bytes = 0;
  ExactlyOnceOptions exactly_once;
  // A session that nothing has stepped, pulled, joined or updated for this long is unloaded
  // (--session_idle_timeout). Zero: never.
  absl::Duration idle_timeout = absl::ZeroDuration();
  // With durability: called before a session is unloaded (it checkpoints it; an error keeps the
  // session loaded), to load a session that is not loaded when a request names it (NotFound when
  // it has no checkpoint), and to tell whether an id has a checkpoint.
  std::function<absl::Status(const Session&)> before_unload;
  std::function<absl::StatusOr<SessionState>(absl::string_view id)> reload;
  std::function<bool(absl::string_view id)> stored;
  // Told of every session reload loaded (it is as durable as the checkpoint it came from), and
  // asked to remove a deleted session's checkpoints (before Delete returns).
  std::function<void(const Session&)> reloaded;
  std::function<void(absl::string_view id)> forget;
  // With durability: writes the checkpoint of a sharded session at a version its placement names
  // (SessionEnv::on_aligned_snapshot).
  std::function<void(const Session&, SessionState)> aligned_checkpoint;
};

class SessionStore {
 public:
  // `observer`, if not null, must outlive the store and its sessions; it hears of every session
  // created and deleted, and (through the sessions) of every step.
  // `clock` (the time of SYNC barrier deadlines and of session creation) and `budget` (which
  // pays for every session's memory) must outlive the store and every reply of its sessions.
  explicit SessionStore(SessionStoreOptions options = {}, SessionObserver* observer = nullptr,
                        Clock* clock = Clock::Real(),
                        MemoryBudget* budget = MemoryBudget::Unlimited())
      : options_(options),
        observer_(observer),
        clock_(clock),
        scheduler_(clock),
        env_{clock,
             observer,
             &scheduler_,
             budget,
             options.max_reply_bytes,
             options.max_session_parameters,
             options.exactly_once,
             options.aligned_checkpoint} {
    ScheduleIdleSweep(clock->Now());
  }

  // Creates a session. An empty `id` gets a generated one ("s-" and 16 hex digits).
  absl::StatusOr<std::shared_ptr<Session>> Create(std::string id, SessionConfig config,
                                                  absl::Span<const WireTensorView> tensors);

  // Adds the session `state` describes (Session::Restore), under its own id. `as_new` (a fork):
  // the id must not be taken on disk either, as for Create.
  absl::StatusOr<std::shared_ptr<Session>> Restore(SessionState state, bool as_new = false);

  // With SessionStoreOptions::reload, a session unloaded for being idle is loaded again here.
  absl::StatusOr<std::shared_ptr<Session>> Find(absl::string_view id);

  // Puts the session `state` describes (Session::Restore) in the place of the loaded session of
  // its id, which is closed with `why` (calls at its barrier and later steps to it fail with it);
  // nothing changes if the state does not restore. NotFound if no session of that id is loaded.
  absl::StatusOr<std::shared_ptr<Session>> Replace(SessionState state, const absl::Status& why);

  // Removes the session and closes it: calls waiting at its SYNC barrier fail with Unavailable.
  // OK too for a session only on disk (SessionStoreOptions::stored); with durability its
  // checkpoints are removed (SessionStoreOptions::forget) before it returns, and no reload running
  // at the same time brings it back. InvalidArgument for an id that is not a session id.
  absl::Status Delete(absl::string_view id);

  // Whether `session` is the one the store holds under its id (not deleted, not unloaded).
  bool Holds(const Session& session) const;

  // Closes every SYNC session with `status`: calls waiting at their barriers fail with it, and so
  // do later steps (a barrier could not complete before the server stops). ASYNC and BOUNDED
  // sessions keep serving the calls in flight. For server shutdown.
  void CloseSyncSessions(const absl::Status& status);

  // Up to `limit` sessions whose ids sort after `start_after` (all when empty), in id order.
  std::vector<std::shared_ptr<Session>> List(absl::string_view start_after, int limit) const;

  int size() const;

 private:
  // OK unless `id` is taken (loaded, or on disk) or the store is full.
  absl::Status CheckNewId(const std::string& id) const;

  // Adds `session` unless its id is taken or the store is full.
  absl::StatusOr<std::shared_ptr<Session>> Insert(std::shared_ptr<Session> session);

  // Unloads the sessions idle for options_.idle_timeout (if set), then schedules the next sweep.
  void ScheduleIdleSweep(absl::Time due);  // `due`: when the previous sweep was due
  void UnloadIdle();

  // The loaded session `id`, or null.
  std::shared_ptr<Session> Loaded(absl::string_view id) const;

  // Drops `id` from the unloads remembered for messages.
  void ForgetUnload(absl::string_view id);

  // Removes session `id` and closes it with `status`; NotFound if there is none.
  absl::Status Remove(absl::string_view id, const absl::Status& status);

  const SessionStoreOptions options_;
  SessionObserver* const observer_;
  Clock* const clock_;
  mutable absl::Mutex mu_;
  // Serialises reloads with each other and with deletions (held outside mu_, across file reads).
  absl::Mutex reload_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  // Ordered, so that ListSessions pages are stable.
  std::map<std::string, std::shared_ptr<Session>, std::less<>> sessions_ ABSL_GUARDED_BY(mu_);
  // The most recently unloaded sessions (at most kRememberedUnloads), for NotFound messages.
  static constexpr int kRememberedUnloads = 1024;
  std::deque<std::pair<std::string, absl::Time>> unloaded_ ABSL_GUARDED_BY(mu_);
  // SYNC barrier deadlines of every session, and the idle sweeps. Declared last, so destroyed
  // first: its thread is joined before anything a callback touches goes away.
  DeadlineScheduler scheduler_;
  const SessionEnv env_;  // what every session is given
};

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_SESSION_STORE_H_
