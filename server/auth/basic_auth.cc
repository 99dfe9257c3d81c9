#include "server/auth/basic_auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/quote.h"

namespace optd {

TokenHash Sha256(absl::string_view text) {
  TokenHash hash{};
  unsigned int length = 0;
  EVP_Digest(text.data(), text.size(), hash.data(), &length, EVP_sha256(), nullptr);
  return hash;
}

bool SameHash(const TokenHash& a, const TokenHash& b) {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

absl::StatusOr<BasicAuthUsers> BasicAuthUsers::Parse(absl::string_view text) {
  BasicAuthUsers users;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++number;
    if (size_t hash = line.find('#'); hash != absl::string_view::npos) line = line.substr(0, hash);
    const std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.empty()) continue;
    absl::StatusOr<TokenHash> parsed = fields.size() == 2
                                           ? ParseTokenHash(fields[1])
                                           : absl::InvalidArgumentError(
                                                 "a line is: <user> <sha256 hex of the "
                                                 "password>");
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", number, ": ", parsed.status().message()));
    }
    if (fields[0].find(':') != absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", number, ": user ", Quote(fields[0]), " may not contain ':'"));
    }
    users.users_.emplace_back(std::string(fields[0]), *parsed);
  }
  if (users.users_.empty()) {
    return absl::InvalidArgumentError("lists no user: nobody could read /metrics");
  }
  return users;
}

absl::StatusOr<BasicAuthUsers> BasicAuthUsers::Read(const std::string& path) {
  absl::StatusOr<std::string> text = ReadTextFile(path);
  if (!text.ok()) return text.status();
  absl::StatusOr<BasicAuthUsers> users = Parse(*text);
  if (!users.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", users.status().message()));
  }
  return users;
}

bool BasicAuthUsers::Check(absl::string_view user, absl::string_view password) const {
  const TokenHash offered = Sha256(password);
  bool found = false;
  for (const auto& [name, hash] : users_) {
    found |= (name == user) & SameHash(hash, offered);
  }
  return found;
}

}  // namespace optd
