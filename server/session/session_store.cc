#include "server/session/session_store.h"

#include <algorithm>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"

namespace optd {
namespace {

std::string GenerateId() {
  thread_local absl::BitGen gen;
  return absl::StrFormat("s-%016x", absl::Uniform<uint64_t>(gen));
}

}  // namespace

absl::StatusOr<std::shared_ptr<Session>> SessionStore::Create(
    std::string id, SessionConfig config, absl::Span<const WireTensorView> tensors) {
  if (id.empty()) id = GenerateId();
  // Fail fast before decoding what may be a large request.
  if (absl::Status s = CheckNewId(id); !s.ok()) return s;
  absl::StatusOr<std::shared_ptr<Session>> session =
      Session::Create(id, std::move(config), tensors, env_);
  if (!session.ok()) return session.status();
  return Insert(*std::move(session));
}

absl::Status SessionStore::CheckNewId(const std::string& id) const {
  {
    absl::MutexLock lock(&mu_);
    if (sessions_.count(id) > 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("session ", ShownSessionId(id), " already exists"));
    }
    if (static_cast<int>(sessions_.size()) >= options_.max_sessions) {
      return absl::ResourceExhaustedError(absl::StrCat("the server holds ", sessions_.size(),
                                                       " sessions, its maximum (--max_sessions)"));
    }
  }
  if (options_.stored && options_.stored(id)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "session ", ShownSessionId(id),
        " already exists: it has checkpoints in --checkpoint_dir (it was unloaded while idle, or "
        "could not be restored at start-up; a request naming it loads it). Delete it first to "
        "reuse its id"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Session>> SessionStore::Restore(SessionState state, bool as_new) {
  if (as_new) {
    if (absl::Status s = CheckNewId(state.id); !s.ok()) return s;
  }
  absl::StatusOr<std::shared_ptr<Session>> session = Session::Restore(std::move(state), env_);
  if (!session.ok()) return session.status();
  return Insert(*std::move(session));
}

absl::StatusOr<std::shared_ptr<Session>> SessionStore::Replace(SessionState state,
                                                               const absl::Status& why) {
  absl::MutexLock reloading(&reload_mu_);  // not while a reload or a deletion runs
  absl::StatusOr<std::shared_ptr<Session>> session = Session::Restore(std::move(state), env_);
  if (!session.ok()) return session.status();
  std::shared_ptr<Session> replaced;  // closed and freed after the lock is released
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find((*session)->id());
    if (it == sessions_.end()) {
      return absl::NotFoundError(
          absl::StrCat("session ", ShownSessionId((*session)->id()), " not found"));
    }
    replaced = std::exchange(it->second, *session);
  }
  replaced->Close(why);
  return session;
}

absl::StatusOr<std::shared_ptr<Session>> SessionStore::Insert(std::shared_ptr<Session> session) {
  {
    absl::MutexLock lock(&mu_);
    if (static_cast<int>(sessions_.size()) >= options_.max_sessions) {
      return absl::ResourceExhaustedError(absl::StrCat("the server holds ", sessions_.size(),
                                                       " sessions, its maximum (--max_sessions)"));
    }
    if (!sessions_.emplace(session->id(), session).second) {
      return absl::AlreadyExistsError(absl::StrCat("session ", session->id(), " already exists"));
    }
  }
  if (observer_ != nullptr) {
    const std::string_view name = OptimizerName(session->Info().config.optimizer);
    observer_->OnSessionCreated(session->id(), absl::string_view(name.data(), name.size()));
  }
  return session;
}

std::shared_ptr<Session> SessionStore::Loaded(absl::string_view id) const {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  return it != sessions_.end() ? it->second : nullptr;
}

absl::StatusOr<std::shared_ptr<Session>> SessionStore::Find(absl::string_view id) {
  if (std::shared_ptr<Session> loaded = Loaded(id)) return loaded;
  if (options_.reload) {
    // Never a path: the id names a folder.
    if (absl::Status s = ValidateSessionId(id); !s.ok()) return s;
    absl::MutexLock reloading(&reload_mu_);
    if (std::shared_ptr<Session> loaded = Loaded(id)) return loaded;  // another call loaded it
    absl::StatusOr<SessionState> state = options_.reload(id);
    if (state.ok()) {
      if (state->id != id) {
        return absl::DataLossError(absl::StrCat("the checkpoint of session ", ShownSessionId(id),
                                                " holds session ", ShownSessionId(state->id)));
      }
      absl::StatusOr<std::shared_ptr<Session>> session = Restore(*std::move(state));
      if (!session.ok()) return session.status();
      if (options_.reloaded) options_.reloaded(**session);
      ForgetUnload(id);
      return session;
    }
    if (state.status().code() != absl::StatusCode::kNotFound) return state.status();
  }
  absl::MutexLock lock(&mu_);
  for (auto u = unloaded_.rbegin(); u != unloaded_.rend(); ++u) {
    if (u->first != id) continue;
    return absl::NotFoundError(absl::StrCat(
        "session ", ShownSessionId(id), " not found: it was unloaded at ",
        absl::FormatTime(u->second, absl::UTCTimeZone()), " after ",
        absl::FormatDuration(options_.idle_timeout), " without use (--session_idle_timeout)"));
  }
  return absl::NotFoundError(absl::StrCat("session ", ShownSessionId(id), " not found"));
}

absl::Status SessionStore::Delete(absl::string_view id) {
  if (absl::Status s = ValidateSessionId(id); !s.ok()) return s;
  absl::MutexLock reloading(&reload_mu_);  // a reload in flight finishes first, then is deleted
  absl::Status removed = Remove(
      id, absl::UnavailableError(absl::StrCat("session ", ShownSessionId(id), " was deleted")));
  if (removed.code() == absl::StatusCode::kNotFound && options_.stored && options_.stored(id)) {
    removed = absl::OkStatus();  // only on disk
  }
  if (!removed.ok()) return removed;
  if (options_.forget) options_.forget(id);
  ForgetUnload(id);
  return removed;
}

bool SessionStore::Holds(const Session& session) const {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(session.id());
  return it != sessions_.end() && it->second.get() == &session;
}

void SessionStore::ForgetUnload(absl::string_view id) {
  absl::MutexLock lock(&mu_);
  for (auto u = unloaded_.begin(); u != unloaded_.end();) {
    u = u->first == id ? unloaded_.erase(u) : u + 1;
  }
}

absl::Status SessionStore::Remove(absl::string_view id, const absl::Status& status) {
  std::shared_ptr<Session> doomed;  // freed after the lock is released
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(id);
    if (it == sessions_.end()) {
      return absl::NotFoundError(absl::StrCat("session ", ShownSessionId(id), " not found"));
    }
    doomed = std::move(it->second);
    sessions_.erase(it);
  }
  doomed->Close(status);
  if (observer_ != nullptr) observer_->OnSessionDeleted(doomed->id());
  return absl::OkStatus();
}

void SessionStore::ScheduleIdleSweep(absl::Time due) {
  if (options_.idle_timeout <= absl::ZeroDuration()) return;
  // Often enough that a session is unloaded at most a quarter of the timeout late. The next
  // sweep is due one period after this one was (at once if that has passed): timed from the
  // clock's reading after the sweep instead, a clock that jumped meanwhile (a suspended machine,
  // a test's fake clock) could put it beyond every later deadline.
  const absl::Duration every =
      std::clamp(options_.idle_timeout / 4, absl::Seconds(1), absl::Minutes(1));
  const absl::Time next = std::max(due + every, clock_->Now());
  scheduler_.Schedule(next, [this, next] {
    UnloadIdle();
    ScheduleIdleSweep(next);
  });
}

void SessionStore::UnloadIdle() {
  const absl::Time now = clock_->Now();
  std::vector<std::string> idle;
  for (const std::shared_ptr<Session>& s : List("", std::numeric_limits<int>::max())) {
    if (now - s->last_used() >= options_.idle_timeout && !s->busy()) idle.push_back(s->id());
  }
  for (const std::string& id : idle) {
    std::shared_ptr<Session> session;
    {
      absl::MutexLock lock(&mu_);
      auto it = sessions_.find(id);
      if (it == sessions_.end()) continue;
      session = it->second;
    }
    const absl::Status gone = absl::UnavailableError(absl::StrCat(
        "session ", id, " is being unloaded after ", absl::FormatDuration(options_.idle_timeout),
        " without use (--session_idle_timeout); retry: a request loads it again"));
    if (options_.before_unload) {
      // Frozen first: a step answered after the checkpoint would be lost with the session.
      if (!session->Freeze(gone)) continue;
      if (!options_.before_unload(*session).ok()) {  // stays loaded
        session->Thaw(gone);
        continue;
      }
    }
    if (!Remove(id, gone).ok()) continue;
    {
      absl::MutexLock lock(&mu_);
      unloaded_.emplace_back(id, now);
      if (static_cast<int>(unloaded_.size()) > kRememberedUnloads) unloaded_.pop_front();
    }
    if (observer_ != nullptr) observer_->OnSessionUnloaded(id);
  }
}

void SessionStore::CloseSyncSessions(const absl::Status& status) {
  for (const std::shared_ptr<Session>& s : List("", std::numeric_limits<int>::max())) {
    if (s->Info().config.consistency.mode == ConsistencyOptions::Mode::kSync) s->Close(status);
  }
}

std::vector<std::shared_ptr<Session>> SessionStore::List(absl::string_view start_after,
                                                         int limit) const {
  std::vector<std::shared_ptr<Session>> out;
  absl::MutexLock lock(&mu_);
  auto it = start_after.empty() ? sessions_.begin() : sessions_.upper_bound(start_after);
  for (; it != sessions_.end() && static_cast<int>(out.size()) < limit; ++it) {
    out.push_back(it->second);
  }
  return out;
}

int SessionStore::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(sessions_.size());
}

}  // namespace optd
