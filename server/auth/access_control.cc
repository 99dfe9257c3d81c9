#include "server/auth/access_control.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/auth/basic_auth.h"

namespace optd {
namespace {

bool SameFile(const struct stat& a, const struct stat& b) {
  return a.st_ino == b.st_ino && a.st_dev == b.st_dev && a.st_size == b.st_size &&
         a.st_mtim.tv_sec == b.st_mtim.tv_sec && a.st_mtim.tv_nsec == b.st_mtim.tv_nsec;
}

constexpr absl::string_view kNoToken =
    "no bearer token: this server requires 'authorization: Bearer <token>' metadata on every "
    "call (or a client certificate its access file lists)";

}  // namespace

absl::string_view ActionName(Action action) {
  switch (action) {
    case Action::kCreateSession:
      return "CreateSession";
    case Action::kGetSession:
      return "GetSession";
    case Action::kListSessions:
      return "ListSessions";
    case Action::kUpdateSession:
      return "UpdateSession";
    case Action::kDeleteSession:
      return "DeleteSession";
    case Action::kPull:
      return "Pull";
    case Action::kJoinSession:
      return "JoinSession";
    case Action::kStep:
      return "Step";
    case Action::kCheckpoint:
      return "Checkpoint";
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<AccessControl>> AccessControl::Open(AccessControlOptions options,
                                                                   Clock* clock) {
  std::unique_ptr<AccessControl> access(new AccessControl(std::move(options), clock));
  if (!access->enabled()) return access;
  if (absl::Status s = access->Reload(); !s.ok()) return s;
  if (access->options_.reload_interval > absl::ZeroDuration()) {
    access->watcher_ = std::thread([raw = access.get()] { raw->Watch(); });
  }
  return access;
}

AccessControl::~AccessControl() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (watcher_.joinable()) watcher_.join();
}

void AccessControl::Watch() {
  absl::MutexLock lock(&mu_);
  while (!mu_.AwaitWithTimeout(absl::Condition(&stopping_), options_.reload_interval)) {
    struct stat now {};
    if (::stat(options_.tokens_file.c_str(), &now) != 0 || SameFile(now, seen_)) continue;
    mu_.Unlock();
    const absl::Status reloaded = Reload();
    if (reloaded.ok()) {
      std::fprintf(stderr, "optd: reloaded %s\n", options_.tokens_file.c_str());
    } else {
      std::fprintf(stderr, "optd: %s; the previous access file stays in force\n",
                   std::string(reloaded.message()).c_str());
    }
    mu_.Lock();
  }
}

absl::Status AccessControl::Reload() {
  if (!enabled()) return absl::FailedPreconditionError("there is no --auth_tokens_file to re-read");
  struct stat before {};
  ::stat(options_.tokens_file.c_str(), &before);
  absl::StatusOr<AccessFile> file = ReadAccessFile(options_.tokens_file);
  absl::MutexLock lock(&mu_);
  seen_ = before;  // a file that failed is not read again until it changes
  if (!file.ok()) return file.status();
  file_ = std::make_shared<const AccessFile>(*std::move(file));
  ++generation_;
  return absl::OkStatus();
}

int64_t AccessControl::generation() const {
  absl::MutexLock lock(&mu_);
  return generation_;
}

absl::StatusOr<Principal> AccessControl::Authenticate(
    std::optional<absl::string_view> authorization,
    absl::Span<const std::string> identities) const {
  if (!enabled()) return Principal{};
  std::shared_ptr<const AccessFile> file;
  {
    absl::MutexLock lock(&mu_);
    file = file_;
  }
  if (authorization.has_value()) {
    absl::string_view value = absl::StripAsciiWhitespace(*authorization);
    if (absl::EqualsIgnoreCase(value, "bearer")) return absl::UnauthenticatedError(kNoToken);
    if (value.size() < 7 || !absl::EqualsIgnoreCase(value.substr(0, 7), "bearer ")) {
      return absl::UnauthenticatedError(
          "the authorization metadata must be 'Bearer <token>' (it holds something else)");
    }
    const absl::string_view token = absl::StripLeadingAsciiWhitespace(value.substr(7));
    if (token.empty()) return absl::UnauthenticatedError(kNoToken);
    const TokenHash hash = Sha256(token);
    // Every entry is compared, whatever matched: the time taken does not depend on which did.
    const Grant* found = nullptr;
    for (const auto& [known, grant] : file->tokens) {
      const bool same = SameHash(known, hash);
      found = same ? &grant : found;
    }
    if (found == nullptr) {
      return absl::UnauthenticatedError(
          "the bearer token is not one this server accepts (unknown, or removed from its access "
          "file)");
    }
    return Principal{found->tenant, found->role, found->name, true};
  }
  for (const std::string& identity : identities) {
    auto it = file->certificates.find(identity);
    if (it != file->certificates.end()) {
      return Principal{it->second.tenant, it->second.role, it->second.name, true};
    }
  }
  if (!identities.empty()) {
    return absl::UnauthenticatedError(absl::StrCat(kNoToken, "; the client certificate (",
                                                   identities.front(), ") is not listed"));
  }
  return absl::UnauthenticatedError(kNoToken);
}

absl::Status AccessControl::Authorize(const Principal& who, Action action) {
  if (who.role != Role::kReader) return absl::OkStatus();
  switch (action) {
    case Action::kGetSession:
    case Action::kListSessions:
    case Action::kPull:
      return absl::OkStatus();
    default:
      return absl::PermissionDeniedError(absl::StrCat(
          "role reader of tenant ", who.tenant, " may not call ", ActionName(action),
          ": a reader may call GetSession, ListSessions and Pull"));
  }
}

TenantQuota AccessControl::QuotaOf(absl::string_view tenant) const {
  absl::MutexLock lock(&mu_);
  if (file_ == nullptr) return {};
  auto it = file_->quotas.find(tenant);
  return it == file_->quotas.end() ? TenantQuota{} : it->second;
}

absl::Status AccessControl::CheckSessionQuota(const Principal& who, int64_t sessions, int64_t bytes,
                                              int64_t new_bytes) const {
  const TenantQuota quota = QuotaOf(who.tenant);
  if (quota.sessions > 0 && sessions + 1 > quota.sessions) {
    return absl::ResourceExhaustedError(absl::StrCat("quota sessions of tenant ", who.tenant,
                                                     " reached: ", sessions,
                                                     " sessions in use, limit ", quota.sessions));
  }
  if (quota.parameter_bytes > 0 && bytes + new_bytes > quota.parameter_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "quota parameter_bytes of tenant ", who.tenant, " exceeded: ", bytes, " bytes in use + ",
        new_bytes, " for this session (parameters and optimizer state) > limit ",
        quota.parameter_bytes));
  }
  return absl::OkStatus();
}

absl::Status AccessControl::AdmitStep(const Principal& who) {
  const TenantQuota quota = QuotaOf(who.tenant);
  if (quota.steps_per_second <= 0) return absl::OkStatus();
  const double capacity = std::max(1.0, quota.steps_per_second);
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&rate_mu_);
  auto [it, inserted] = buckets_.try_emplace(who.tenant, Bucket{capacity, now, now, 0});
  Bucket& bucket = it->second;
  if (now - bucket.window_start >= absl::Seconds(1)) {
    bucket.window_start = now;
    bucket.window_steps = 0;
  }
  bucket.tokens = std::min(capacity, bucket.tokens + absl::ToDoubleSeconds(now - bucket.refilled) *
                                                         quota.steps_per_second);
  bucket.refilled = now;
  if (bucket.tokens < 1) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "quota steps_per_second of tenant %s reached: %d steps in the last second, limit %g per "
        "second (bursts up to %g); nothing was applied, retry later",
        who.tenant, bucket.window_steps, quota.steps_per_second, capacity));
  }
  bucket.tokens -= 1;
  ++bucket.window_steps;
  return absl::OkStatus();
}

}  // namespace optd
