// File: caller.h
//
// The edge of authentication and tenancy: who a call comes from and which sessions it names.
//
//   - CredentialsOf(context): what the call presents (its `authorization` metadata, the verified
//     identities of its client certificate, its peer address). A stream keeps them, to
//     authenticate again when the access file changed (AccessControl::generation).
//   - Admit(credentials, action, ...): the Principal, after AccessControl authenticated it and
//     found that its role allows `action`; a refusal is written to the audit log.
//   - StoredSessionId(who, id): the id the store keys the session by. A tenant's session "run-1"
//     is "acme:run-1" (tensor_spec.h); a caller names only its own tenant's sessions, and only an
//     admin (or anyone, on a server without authentication) may name "tenant:id", and an admin
//     names a session of no tenant (created before the server had an access file) ":id".
//   - VisibleSessionId(who, stored): the id as that caller names it in replies.
//
// Who uses it: OptimizerServiceImpl. Stateless functions.
// Errors: Unauthenticated and PermissionDenied from AccessControl; InvalidArgument for a session id
// that names another tenant without being an admin's.

#ifndef OPTD_SERVER_SERVICE_CALLER_H_
#define OPTD_SERVER_SERVICE_CALLER_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/server_context.h"
#include "server/auth/access_control.h"
#include "server/auth/audit_log.h"

namespace optd {

struct CallCredentials {
  std::optional<std::string> authorization;
  std::vector<std::string> identities;
  std::string peer;
};

// A call's caller once admitted.
struct Caller {
  Principal who;
  std::string peer;
};

CallCredentials CredentialsOf(const grpc::CallbackServerContext& context,
                              const AccessControl& access);

absl::StatusOr<Caller> Admit(const CallCredentials& credentials, Action action,
                             const AccessControl& access, AuditLog* audit);

absl::StatusOr<std::string> StoredSessionId(const Principal& who, absl::string_view id);

std::string VisibleSessionId(const Principal& who, absl::string_view stored);

// Writes one audit line of `caller`'s `action` on session `id` (as the caller named it).
void AuditCall(AuditLog* audit, absl::string_view event, const Caller& caller, Action action,
               absl::string_view id, const absl::Status& outcome);

}  // namespace optd

#endif  // OPTD_SERVER_SERVICE_CALLER_H_
