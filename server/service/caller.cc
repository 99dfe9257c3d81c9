#include "server/service/caller.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/quote.h"
#include "server/service/tls_credentials.h"
#include "server/session/tensor_spec.h"

namespace optd {

CallCredentials CredentialsOf(const grpc::CallbackServerContext& context,
                              const AccessControl& access) {
  CallCredentials credentials;
  credentials.peer = context.peer();
  if (!access.enabled()) return credentials;  // nothing to read: every caller is anonymous
  const auto& metadata = context.client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    credentials.authorization.emplace(it->second.data(), it->second.size());
  }
  if (std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
      auth != nullptr && auth->IsPeerAuthenticated()) {
    credentials.identities = PeerIdentities(*auth);
  }
  return credentials;
}

absl::StatusOr<Caller> Admit(const CallCredentials& credentials, Action action,
                             const AccessControl& access, AuditLog* audit) {
  absl::StatusOr<Principal> who =
      access.Authenticate(credentials.authorization, credentials.identities);
  if (!who.ok()) {
    if (audit != nullptr) {
      audit->Write({"auth.unauthenticated", nullptr, credentials.peer, ActionName(action), "", "",
                    who.status()});
    }
    return who.status();
  }
  Caller caller{*std::move(who), credentials.peer};
  if (absl::Status s = AccessControl::Authorize(caller.who, action); !s.ok()) {
    AuditCall(audit, "auth.denied", caller, action, "", s);
    return s;
  }
  return caller;
}

absl::StatusOr<std::string> StoredSessionId(const Principal& who, absl::string_view id) {
  const bool names_tenant = id.find(kTenantSeparator) != absl::string_view::npos;
  if (!names_tenant || who.tenant.empty()) return QualifiedSessionId(who.tenant, id);
  if (who.role == Role::kAdmin) {
    // ":id" is a session of no tenant (created before the server had an access file).
    return std::string(absl::StartsWith(id, ":") ? id.substr(1) : id);
  }
  if (TenantOfSessionId(id) == who.tenant) return std::string(id);
  return absl::InvalidArgumentError(
      absl::StrCat("session_id ", Quote(id),
                   " names a tenant (tenant:id): only an admin may name another tenant's "
                   "session; name your own as the id alone"));
}

std::string VisibleSessionId(const Principal& who, absl::string_view stored) {
  const absl::string_view tenant = TenantOfSessionId(stored);
  if (tenant == who.tenant) return std::string(LocalSessionId(stored));
  return tenant.empty() ? absl::StrCat(":", stored) : std::string(stored);
}

void AuditCall(AuditLog* audit, absl::string_view event, const Caller& caller, Action action,
               absl::string_view id, const absl::Status& outcome) {
  if (audit == nullptr) return;
  audit->Write({event, &caller.who, caller.peer, ActionName(action), id, "", outcome});
}

}  // namespace optd
