// File: audit_log.h
//
// AuditLog: one JSON line per security-relevant event (--audit_log): every authentication
// failure, every permission refusal, and every session create, delete and checkpoint (whether it
// succeeded or not). A line holds the time (RFC 3339, UTC), the event, the principal's name, its
// tenant and role, the peer's address, the session, the outcome (a gRPC code name) and, for
// failures, the message. No token, key or certificate is ever written: principals are names from
// the access file ("token:1a2b3c4d", a token's name, "cert:alice").
//
//   {"time":"2026-12-03T08:00:00.123456Z","event":"session.create","principal":"alice",
//    "tenant":"acme","role":"writer","peer":"ipv4:127.0.0.1:50312","session":"run-1",
//    "outcome":"OK"}
//
// Who uses it: the service (server/service). Thread-safe: mu_ serialises lines, each written
// whole and flushed. Write failures (a full disk) are counted in failures(), never fatal.

#ifndef OPTD_SERVER_AUTH_AUDIT_LOG_H_
#define OPTD_SERVER_AUTH_AUDIT_LOG_H_

#include <cstdio>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/auth/access_control.h"

namespace optd {

struct AuditEvent {
  absl::string_view event;         // "auth.unauthenticated", "auth.denied", "session.create", ...
  const Principal* who = nullptr;  // null: not authenticated
  absl::string_view peer;
  absl::string_view method;   // the RPC
  absl::string_view session;  // as the caller named it; may be empty
  absl::string_view tenant;   // the session's tenant, when it is not the caller's (an admin)
  absl::Status outcome;
};

class AuditLog {
 public:
  // "-" (or empty): standard error. Otherwise the file, appended to (created 0600).
  static absl::StatusOr<std::unique_ptr<AuditLog>> Open(const std::string& path);
  ~AuditLog();

  void Write(const AuditEvent& event);

  int64_t lines() const;
  int64_t failures() const;

 private:
  explicit AuditLog(std::FILE* out, bool owned) : out_(out), owned_(owned) {}

  mutable absl::Mutex mu_;
  std::FILE* const out_;
  const bool owned_;
  int64_t lines_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t failures_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace optd

#endif  // OPTD_SERVER_AUTH_AUDIT_LOG_H_
