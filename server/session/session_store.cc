#include "server/session/session_store.h"

#include <limits>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace optd {
namespace {

std::string GenerateId() {
  thread_local absl::BitGen gen;
  return absl::StrFormat("s-%016x", absl::Uniform<uint64_t>(gen));
}

}  // namespace

absl::StatusOr<std::shared_ptr<Session>> SessionStore::Create(
    std::string id, SessionConfig config, absl::Span<const WireTensorView> tensors) {
  const bool generated = id.empty();
  if (generated) id = GenerateId();
  {
    // Fail fast before decoding what may be a large request.
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
  absl::StatusOr<std::shared_ptr<Session>> session =
      Session::Create(id, std::move(config), tensors, env_);
  if (!session.ok()) return session.status();
  return Insert(*std::move(session));
}

absl::StatusOr<std::shared_ptr<Session>> SessionStore::Restore(SessionState state) {
  absl::StatusOr<std::shared_ptr<Session>> session = Session::Restore(std::move(state), env_);
  if (!session.ok()) return session.status();
  return Insert(*std::move(session));
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

absl::StatusOr<std::shared_ptr<Session>> SessionStore::Find(absl::string_view id) const {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) {
    return absl::NotFoundError(absl::StrCat("session ", ShownSessionId(id), " not found"));
  }
  return it->second;
}

absl::Status SessionStore::Delete(absl::string_view id) {
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
  doomed->Close(
      absl::UnavailableError(absl::StrCat("session ", ShownSessionId(id), " was deleted")));
  if (observer_ != nullptr) observer_->OnSessionDeleted(doomed->id());
  return absl::OkStatus();
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
