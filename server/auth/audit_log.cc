#include "server/auth/audit_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace optd {

absl::StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(const std::string& path) {
  if (path.empty() || path == "-") return std::unique_ptr<AuditLog>(new AuditLog(stderr, false));
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  std::FILE* out = fd >= 0 ? ::fdopen(fd, "a") : nullptr;
  if (out == nullptr) {
    const int error = errno;
    if (fd >= 0) ::close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open the audit log ", path, ": ", std::strerror(error)));
  }
  return std::unique_ptr<AuditLog>(new AuditLog(out, true));
}

AuditLog::~AuditLog() {
  if (owned_) std::fclose(out_);
}

void AuditLog::Write(const AuditEvent& event) {
  nlohmann::json line = {
      {"time", absl::FormatTime("%Y-%m-%d%ET%H:%M:%E6SZ", absl::Now(), absl::UTCTimeZone())},
      {"event", std::string(event.event)},
  };
  if (event.who != nullptr) {
    line["principal"] = event.who->name;
    if (!event.who->tenant.empty()) line["tenant"] = event.who->tenant;
    line["role"] = std::string(RoleName(event.who->role));
  }
  if (!event.peer.empty()) line["peer"] = std::string(event.peer);
  if (!event.method.empty()) line["method"] = std::string(event.method);
  if (!event.session.empty()) line["session"] = std::string(event.session);
  if (!event.tenant.empty()) line["session_tenant"] = std::string(event.tenant);
  line["outcome"] = absl::StatusCodeToString(event.outcome.code());
  if (!event.outcome.ok()) line["message"] = std::string(event.outcome.message());
  // Replace invalid UTF-8 (a session id is validated, but a refused one may be anything).
  const std::string text =
      line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  absl::MutexLock lock(&mu_);
  ++lines_;
  if (std::fwrite(text.data(), 1, text.size(), out_) != text.size() || std::fflush(out_) != 0) {
    ++failures_;
  }
}

int64_t AuditLog::lines() const {
  absl::MutexLock lock(&mu_);
  return lines_;
}

int64_t AuditLog::failures() const {
  absl::MutexLock lock(&mu_);
  return failures_;
}

}  // namespace optd
