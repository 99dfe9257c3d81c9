// File: basic_auth.h
//
// BasicAuthUsers: the users of HTTP basic authentication for the /metrics endpoint
// (--metrics_auth_file). A text file, one user per line, `#` comments and blank lines ignored:
//
//   <user> <sha256 hex of the password>
//
// (`printf %s "$PASSWORD" | sha256sum` prints the hash). The file holds no password; Check hashes
// the one offered and compares it with every user's in constant time. Read once, at start-up.
//
// Who uses it: server/metrics (the exporter's auth callback). Thread-safe after Read (const).
// Errors: those of reading the file, and InvalidArgument naming the line.

#ifndef OPTD_SERVER_AUTH_BASIC_AUTH_H_
#define OPTD_SERVER_AUTH_BASIC_AUTH_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/auth/access_file.h"

namespace optd {

// SHA-256 of `text`.
TokenHash Sha256(absl::string_view text);

// Whether `a` and `b` are equal, in time independent of where they differ.
bool SameHash(const TokenHash& a, const TokenHash& b);

class BasicAuthUsers {
 public:
  static absl::StatusOr<BasicAuthUsers> Parse(absl::string_view text);
  static absl::StatusOr<BasicAuthUsers> Read(const std::string& path);

  // Whether `user` is listed with `password`.
  bool Check(absl::string_view user, absl::string_view password) const;

  size_t size() const { return users_.size(); }

 private:
  std::vector<std::pair<std::string, TokenHash>> users_;
};

}  // namespace optd

#endif  // OPTD_SERVER_AUTH_BASIC_AUTH_H_
