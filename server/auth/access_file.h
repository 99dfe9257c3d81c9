// File: access_file.h
//
// The access file (--auth_tokens_file): who may call optd, as which tenant, in which role, and
// each tenant's quotas. A text file, one entry per line, `#` starts a comment, blank lines ignored:
//
//   <sha256 hex of a token> <tenant> <role> [<name>]    a bearer token (64 hex digits)
//   cert:<identity> <tenant> <role>                       an mTLS client certificate whose identity
//                                                         (a DNS subjectAltName, or the subject's
//                                                         CN when it has none) is <identity>
//   quota <tenant> [sessions=N] [parameter_bytes=N] [steps_per_second=R]
//
// Roles: admin (every call, on every tenant's sessions), writer (every call on its own tenant's
// sessions), reader (GetSession, ListSessions and Pull of its own tenant's sessions). Tenants are
// 1 to 64 characters of [A-Za-z0-9._-]. A token's <name> (optional) names it in the audit log;
// without one the log shows "token:" and the first 8 hex digits of its hash. Quota values are
// integers >= 0 (parameter_bytes takes K, M, G, T suffixes of 1024) or, for steps_per_second, a
// number > 0; a quota not given is unlimited. The file never holds a token itself, only its hash.
//
// Who uses it: AccessControl (access_control.h). Pure functions, thread-compatible values.
// Errors: InvalidArgument naming the line ("line 3: role "owner" is not admin, writer or reader").

#ifndef OPTD_SERVER_AUTH_ACCESS_FILE_H_
#define OPTD_SERVER_AUTH_ACCESS_FILE_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace optd {

enum class Role { kReader, kWriter, kAdmin };

absl::string_view RoleName(Role role);

// What a token or certificate grants.
struct Grant {
  std::string tenant;
  Role role = Role::kReader;
  std::string name;  // who, for the audit log ("token:1a2b3c4d", the token's <name>, "cert:alice")
};

// A tenant's limits; 0 (the default) is unlimited.
struct TenantQuota {
  int64_t sessions = 0;
  int64_t parameter_bytes = 0;  // parameters + optimizer state of all its sessions
  double steps_per_second = 0;
};

using TokenHash = std::array<uint8_t, 32>;  // SHA-256

struct AccessFile {
  std::vector<std::pair<TokenHash, Grant>> tokens;
  absl::flat_hash_map<std::string, Grant> certificates;  // by identity
  absl::flat_hash_map<std::string, TenantQuota> quotas;  // by tenant
};

// The whole text of the file at `path` (NotFound naming it when it cannot be read).
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

// A SHA-256 written as 64 hex digits (either case).
absl::StatusOr<TokenHash> ParseTokenHash(absl::string_view hex);

// Parses the text of an access file.
absl::StatusOr<AccessFile> ParseAccessFile(absl::string_view text);

// Reads and parses the file at `path` (NotFound / PermissionDenied / InvalidArgument, each
// naming the path).
absl::StatusOr<AccessFile> ReadAccessFile(const std::string& path);

}  // namespace optd

#endif  // OPTD_SERVER_AUTH_ACCESS_FILE_H_
