#include "server/persist/checkpointer.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <system_error>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "base/quote.h"

namespace optd {
namespace {

namespace fs = std::filesystem;

constexpr char kFolderPrefix[] = "session-";
constexpr char kSuffix[] = ".ckpt";
constexpr char kLockFile[] = ".optd.lock";  // holds the pid of the optd using the folder

// The checkpoint folders this process has locked (flock), by device and inode.
struct Locked {
  absl::Mutex mu;
  std::set<std::pair<dev_t, ino_t>> held ABSL_GUARDED_BY(mu);
};
Locked& LockedFolders() {
  static Locked* const locked = new Locked;
  return *locked;
}

// How much less CPU the writing thread asks for than the threads serving steps (a nice value: at
// 10 it gets about a tenth of a core that steps also want, all of an idle one).
constexpr int kWriterNice = 10;

// Runs `write` on a thread of its own at nice kWriterNice and returns its status. Writing a
// checkpoint is one thread's CPU work (checksums, copies into the page cache) for seconds on a
// large session: at the same priority it takes a core from the steps of every other session. The
// snapshot is taken before, at normal priority: it holds the session's lock.
absl::Status WriteAtLowPriority(const std::function<absl::Status()>& write) {
  absl::Status status;
  std::thread writer([&] {
    // Linux: PRIO_PROCESS with a thread id sets that thread's nice value alone. A failure (a
    // seccomp filter) leaves it at the normal priority.
    ::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), kWriterNice);
    status = write();
  });
  writer.join();
  return status;
}

std::string ErrorName(const absl::Status& status) {
  return absl::AsciiStrToLower(absl::StatusCodeToString(status.code()));
}

void Log(const std::string& line) { std::fprintf(stderr, "optd: %s\n", line.c_str()); }

}  // namespace

absl::string_view CheckpointReasonName(CheckpointReason reason) {
  switch (reason) {
    case CheckpointReason::kInterval:
      return "interval";
    case CheckpointReason::kRequest:
      return "request";
    case CheckpointReason::kShutdown:
      return "shutdown";
    case CheckpointReason::kIdle:
      return "idle";
    case CheckpointReason::kCreate:
      return "create";
    case CheckpointReason::kAligned:
      return "aligned";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<Checkpointer>> Checkpointer::Open(
    CheckpointerOptions options, SessionStore* store, const ConfigCodec* codec,
    std::string server_incarnation, Clock* clock, CheckpointObserver* observer) {
  if (options.keep < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint_keep = ", options.keep, " is out of range: must be >= 1"));
  }
  if (options.interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint_interval = ", absl::FormatDuration(options.interval),
                     " is out of range: must be >= 0 (0: only on "
                     "request)"));
  }
  std::error_code error;
  fs::create_directories(options.dir, error);
  if (error || !fs::is_directory(options.dir, error)) {
    return absl::FailedPreconditionError(
        absl::StrCat("--checkpoint_dir ", options.dir, " is not a folder optd can create or use",
                     error ? absl::StrCat(": ", error.message()) : std::string()));
  }
  if (::access(options.dir.c_str(), R_OK | W_OK | X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("--checkpoint_dir ", options.dir,
                                                      " is not readable and writable by optd (",
                                                      std::strerror(errno), ")"));
  }
  // Listing it must work too: an unreadable folder is a clear error now, not an empty server.
  fs::directory_iterator probe(options.dir, error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot list --checkpoint_dir ", options.dir, ": ", error.message()));
  }
  // One optd per folder: two would restore, step and delete the same sessions behind each
  // other's backs. The lock is on the folder itself (flock: released by the kernel when the
  // process ends, however it ends; removing a file cannot undo it).
  const int lock_fd = ::open(options.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  struct stat folder = {};
  if (lock_fd < 0 || ::fstat(lock_fd, &folder) != 0) {
    const int error = errno;
    if (lock_fd >= 0) ::close(lock_fd);
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open --checkpoint_dir ", options.dir, ": ", std::strerror(error)));
  }
  const std::string pid_path = absl::StrCat(options.dir, "/", kLockFile);
  bool owns_lock = false;
  {
    absl::MutexLock lock(&LockedFolders().mu);
    auto& held = LockedFolders().held;
    const std::pair<dev_t, ino_t> key{folder.st_dev, folder.st_ino};
    // This process holds it already: a Checkpointer abandoned without being destroyed (tests
    // simulate a crash so) gives way to the new one.
    owns_lock = held.count(key) == 0;
    if (owns_lock) {
      if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
        const int error = errno;
        ::close(lock_fd);
        std::string holder;
        if (std::ifstream in(pid_path); in) std::getline(in, holder);
        return absl::FailedPreconditionError(
            absl::StrCat("--checkpoint_dir ", options.dir, " is in use by another optd process",
                         holder.empty() ? "" : absl::StrCat(" (pid ", holder.substr(0, 16), ")"),
                         error == EWOULDBLOCK ? "" : absl::StrCat(": ", std::strerror(error)),
                         "; each optd needs a folder of its own"));
      }
      held.insert(key);
    }
  }
  std::ofstream(pid_path, std::ios::trunc) << ::getpid() << "\n";  // for that message only
  return std::unique_ptr<Checkpointer>(new Checkpointer(std::move(options), store, codec,
                                                        std::move(server_incarnation), clock,
                                                        observer, lock_fd, owns_lock));
}

Checkpointer::Checkpointer(CheckpointerOptions options, SessionStore* store,
                           const ConfigCodec* codec, std::string server_incarnation, Clock* clock,
                           CheckpointObserver* observer, int lock_fd, bool owns_lock)
    : options_(std::move(options)),
      store_(store),
      codec_(codec),
      server_incarnation_(std::move(server_incarnation)),
      clock_(clock),
      observer_(observer),
      lock_fd_(lock_fd),
      owns_lock_(owns_lock) {}

Checkpointer::~Checkpointer() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  if (owns_lock_) {
    struct stat folder = {};
    if (::fstat(lock_fd_, &folder) == 0) {
      absl::MutexLock lock(&LockedFolders().mu);
      LockedFolders().held.erase({folder.st_dev, folder.st_ino});
    }
  }
  ::close(lock_fd_);  // releases the folder's lock if this descriptor holds it
}

std::string Checkpointer::FolderOf(absl::string_view id) const {
  return absl::StrCat(options_.dir, "/", kFolderPrefix, id);
}

std::vector<std::pair<int64_t, std::string>> Checkpointer::Files(const std::string& folder,
                                                                 bool remove_partial) const {
  std::vector<std::pair<int64_t, std::string>> files;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(folder, error)) {
    const std::string name = entry.path().filename().string();
    absl::string_view stem = name;
    if (absl::StrContains(name, ".tmp-")) {  // a write in progress, or one a crash interrupted
      if (remove_partial) fs::remove(entry.path(), error);
      continue;
    }
    if (!absl::ConsumeSuffix(&stem, kSuffix)) continue;
    int64_t version = 0;
    if (absl::SimpleAtoi(stem, &version)) files.emplace_back(version, entry.path().string());
  }
  std::sort(files.rbegin(), files.rend());
  return files;
}

absl::StatusOr<int> Checkpointer::Restore() {
  std::error_code error;
  int restored = 0;
  fs::directory_iterator folders(options_.dir, error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot list --checkpoint_dir ", options_.dir, ": ", error.message()));
  }
  for (const fs::directory_entry& folder : folders) {
    const std::string name = folder.path().filename().string();
    if (!folder.is_directory(error) || !absl::StartsWith(name, kFolderPrefix)) continue;
    const std::string id = name.substr(sizeof(kFolderPrefix) - 1);
    bool loaded = false;
    for (const auto& [version, path] : Files(folder.path().string(), /*remove_partial=*/true)) {
      absl::StatusOr<SessionState> state = ReadFileOf(id, path);
      if (!state.ok()) {
        Log(absl::StrCat("checkpoint ", path, " cannot be restored (", state.status().ToString(),
                         "); trying an older one"));
        if (observer_ != nullptr) observer_->OnCheckpointSkipped(id);
        continue;
      }
      absl::StatusOr<std::shared_ptr<Session>> session = store_->Restore(*std::move(state));
      if (session.status().code() == absl::StatusCode::kResourceExhausted) {
        // Over the memory budget (or --max_sessions): an older checkpoint would not fit either.
        Log(absl::StrCat("session ", id, " cannot be loaded (", session.status().ToString(),
                         "); it stays in ", options_.dir,
                         ": a request naming it tries again, DeleteSession removes it"));
        break;
      }
      if (!session.ok()) {
        Log(absl::StrCat("checkpoint ", path, " cannot be restored (", session.status().ToString(),
                         "); trying an older one"));
        if (observer_ != nullptr) observer_->OnCheckpointSkipped(id);
        continue;
      }
      Adopt(**session);
      Log(absl::StrCat("restored session ", id, " at version ", version, " from ", path));
      loaded = true;
      ++restored;
      break;
    }
    if (!loaded) Log(absl::StrCat("no checkpoint of session ", id, " could be restored"));
  }
  return restored;
}

absl::StatusOr<CheckpointResult> Checkpointer::Checkpoint(const Session& session,
                                                          CheckpointReason reason) {
  absl::MutexLock write(&write_mu_);
  // Deleted (and its folder removed) while this call waited: writing it would bring it back.
  if (!store_->Holds(session)) {
    return absl::NotFoundError(absl::StrCat("session ", session.id(), " was deleted"));
  }
  return WriteLocked(session, session.Snapshot(), reason);  // the snapshot: under its lock
}

absl::StatusOr<CheckpointResult> Checkpointer::Write(const Session& session, SessionState state,
                                                     CheckpointReason reason) {
  absl::MutexLock write(&write_mu_);
  if (!store_->Holds(session)) {
    return absl::NotFoundError(absl::StrCat("session ", session.id(), " was deleted"));
  }
  return WriteLocked(session, state, reason);
}

absl::StatusOr<CheckpointResult> Checkpointer::WriteLocked(const Session& session,
                                                           const SessionState& state,
                                                           CheckpointReason reason) {
  const absl::Time start = clock_->Now();
  const std::string folder = FolderOf(state.id);
  const std::string path =
      absl::StrFormat("%s/%020d%s", folder, static_cast<long long>(state.version), kSuffix);
  std::error_code error;
  fs::create_directories(folder, error);
  CheckpointMeta meta;
  const auto write_file = [&] {
    return WriteCheckpointFile(path, state, *codec_, server_incarnation_, clock_->Now(), &meta);
  };
  // Background checkpoints (interval, idle) yield the CPU to steps; one a caller waits for (a
  // request, a new session, the shutdown's last one) does not: starved by busy steps at nice 10,
  // the shutdown checkpoint could outlast the process's exit deadline and be lost.
  const bool background =
      reason == CheckpointReason::kInterval || reason == CheckpointReason::kIdle;
  absl::Status written =
      error ? absl::InternalError(absl::StrCat("cannot create ", folder, ": ", error.message()))
            : (background ? WriteAtLowPriority(write_file) : write_file());
  if (!written.ok()) {
    Log(absl::StrCat("checkpoint of session ", state.id, " (", CheckpointReasonName(reason),
                     ") failed: ", written.ToString(), "; older checkpoints are intact"));
    if (observer_ != nullptr) observer_->OnCheckpointFailed(state.id, ErrorName(written));
    return written;
  }
  {
    absl::MutexLock lock(&mu_);
    Durable& durable = durable_[state.id];
    // An aligned snapshot written after a later checkpoint of the same session is not newer.
    if (durable.session != &session || state.revision >= durable.revision) {
      durable = {state.version, state.revision, &session};
    }
  }
  Prune(folder,
        state.config.placement.has_value() ? state.config.placement->checkpoint_every_versions : 0);
  const absl::Time end = clock_->Now();
  if (observer_ != nullptr) observer_->OnCheckpointWritten(state.id, meta.bytes, end - start, end);
  return CheckpointResult{state.version, path, meta.bytes};
}

void Checkpointer::Prune(const std::string& folder, int64_t aligned_every) {
  const auto files = Files(folder);
  std::error_code error;
  int aligned_kept = 0;
  for (size_t i = static_cast<size_t>(options_.keep); i < files.size(); ++i) {
    if (aligned_every > 0 && files[i].first % aligned_every == 0 && aligned_kept < options_.keep) {
      ++aligned_kept;
      continue;
    }
    fs::remove(files[i].second, error);
  }
}

std::vector<int64_t> Checkpointer::Versions(absl::string_view id) const {
  std::vector<int64_t> versions;
  absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> files = FilesOf(id);
  if (files.ok()) {
    for (const auto& file : *files) versions.push_back(file.first);
  }
  return versions;
}

absl::StatusOr<SessionState> Checkpointer::ReadVersion(absl::string_view id,
                                                       int64_t version) const {
  absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> files = FilesOf(id);
  if (!files.ok()) return files.status();
  std::vector<int64_t> versions;
  for (const auto& [v, path] : *files) {
    if (v == version) return ReadFileOf(id, path);
    versions.push_back(v);
  }
  return absl::NotFoundError(absl::StrCat("restore_version = ", version, ": session ", id,
                                          " has no checkpoint of that version here (it has ",
                                          absl::StrJoin(versions, ", "), ")"));
}

void Checkpointer::ForgetAfter(const Session& session, int64_t version) {
  absl::MutexLock write(&write_mu_);  // after a write in flight; none of the old session follows
  absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> files = FilesOf(session.id());
  std::error_code error;
  if (files.ok()) {
    for (const auto& [v, path] : *files) {
      if (v > version) fs::remove(path, error);
    }
  }
  Adopt(session);
}

void Checkpointer::CheckpointAll(CheckpointReason reason) {
  for (const std::shared_ptr<Session>& s : store_->List("", std::numeric_limits<int>::max())) {
    {
      absl::MutexLock lock(&mu_);
      auto it = durable_.find(s->id());
      if (it != durable_.end() && it->second.session == s.get() &&
          it->second.revision == s->revision()) {
        continue;  // unchanged since its checkpoint
      }
    }
    (void)Checkpoint(*s, reason);
  }
}

void Checkpointer::Forget(absl::string_view id) {
  if (!ValidateSessionId(id).ok()) return;  // never a path: nothing outside the folder goes
  {
    absl::MutexLock write(&write_mu_);
    std::error_code error;
    fs::remove_all(FolderOf(id), error);
  }
  absl::MutexLock lock(&mu_);
  durable_.erase(id);
}

absl::StatusOr<SessionState> Checkpointer::Read(const std::string& path) const {
  std::error_code error;
  const fs::path dir = fs::canonical(options_.dir, error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read --checkpoint_dir ", options_.dir, ": ", error.message()));
  }
  // Symbolic links and ".." resolved first: the file itself must be inside the folder.
  const fs::path file = fs::canonical(dir / fs::path(path), error);
  if (error) {
    return absl::NotFoundError(absl::StrCat("from_checkpoint = ", Quote(path),
                                            ": no such checkpoint (", error.message(), ")"));
  }
  const bool inside =
      std::mismatch(dir.begin(), dir.end(), file.begin(), file.end()).first == dir.end();
  if (!inside || file.extension() != kSuffix || !fs::is_regular_file(file, error)) {
    return absl::PermissionDeniedError(
        absl::StrCat("from_checkpoint = ", Quote(path),
                     " is not a checkpoint file in --checkpoint_dir ", options_.dir,
                     ": a session can start only from optd's own checkpoints (session-<id>/"
                     "<version>",
                     kSuffix, ", as CheckpointResponse.path gives)"));
  }
  return ReadCheckpointFile(file.string(), *codec_);
}

absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> Checkpointer::FilesOf(
    absl::string_view id) const {
  if (absl::Status s = ValidateSessionId(id); !s.ok()) return s;  // never a path
  auto files = Files(FolderOf(id));
  if (files.empty()) {
    return absl::NotFoundError(
        absl::StrCat("session ", id, " has no checkpoint in ", options_.dir));
  }
  return files;
}

absl::StatusOr<SessionState> Checkpointer::ReadFileOf(absl::string_view id,
                                                      const std::string& path) const {
  absl::StatusOr<SessionState> state = ReadCheckpointFile(path, *codec_);
  if (state.ok() && state->id != id) {
    return absl::DataLossError(absl::StrCat("checkpoint ", path, " holds session ",
                                            ShownSessionId(state->id), ", not ", id,
                                            " (a copied folder?)"));
  }
  return state;
}

absl::StatusOr<std::string> Checkpointer::NewestFile(absl::string_view id) const {
  absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> files = FilesOf(id);
  if (!files.ok()) return files.status();
  return files->front().second;
}

absl::StatusOr<SessionState> Checkpointer::ReadNewest(absl::string_view id) const {
  absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> files = FilesOf(id);
  if (!files.ok()) return files.status();
  absl::Status newest_error;
  for (const auto& [version, path] : *files) {
    absl::StatusOr<SessionState> state = ReadFileOf(id, path);
    if (state.ok()) return state;
    Log(absl::StrCat("checkpoint ", path, " cannot be read (", state.status().ToString(),
                     "); trying an older one"));
    if (observer_ != nullptr) observer_->OnCheckpointSkipped(id);
    if (newest_error.ok()) newest_error = state.status();
  }
  return newest_error;
}

void Checkpointer::Adopt(const Session& session) {
  const int64_t version = session.Info().version;
  const int64_t revision = session.revision();
  absl::MutexLock lock(&mu_);
  durable_[session.id()] = {version, revision, &session};
}

int64_t Checkpointer::DurableVersion(absl::string_view id) const {
  absl::MutexLock lock(&mu_);
  auto it = durable_.find(id);
  return it == durable_.end() ? -1 : it->second.version;
}

void Checkpointer::Start() {
  if (options_.interval <= absl::ZeroDuration() || thread_.joinable()) return;
  thread_ = std::thread([this] { Run(); });
}

void Checkpointer::Run() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      if (clock_->AwaitWithDeadline(&mu_, absl::Condition(&stop),
                                    clock_->Now() + options_.interval)) {
        return;
      }
    }
    CheckpointAll(CheckpointReason::kInterval);
  }
}

}  // namespace optd
