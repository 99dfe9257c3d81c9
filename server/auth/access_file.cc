#include "server/auth/access_file.h"

#include <cmath>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/quote.h"

namespace optd {
namespace {

constexpr size_t kMaxTenantLength = 64;
constexpr size_t kMaxNameLength = 128;

bool IsNameChar(char c) { return absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-'; }

absl::Status CheckName(absl::string_view what, absl::string_view value, size_t max) {
  bool ok = !value.empty() && value.size() <= max;
  for (char c : value) ok &= IsNameChar(c);
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, " ", Quote(value), " must be 1 to ", max,
                                                 " characters of [A-Za-z0-9._-]"));
}

absl::StatusOr<Role> ParseRole(absl::string_view text) {
  if (text == "admin") return Role::kAdmin;
  if (text == "writer") return Role::kWriter;
  if (text == "reader") return Role::kReader;
  return absl::InvalidArgumentError(
      absl::StrCat("role ", Quote(text), " is not admin, writer or reader"));
}

absl::StatusOr<Grant> ParseGrant(absl::string_view tenant, absl::string_view role) {
  if (absl::Status s = CheckName("tenant", tenant, kMaxTenantLength); !s.ok()) return s;
  absl::StatusOr<Role> parsed = ParseRole(role);
  if (!parsed.ok()) return parsed.status();
  return Grant{std::string(tenant), *parsed, ""};
}

}  // namespace

absl::StatusOr<TokenHash> ParseTokenHash(absl::string_view hex) {
  TokenHash hash;
  bool ok = hex.size() == 64;
  for (size_t i = 0; ok && i < hash.size(); ++i) {
    int byte = 0;
    for (char c : hex.substr(2 * i, 2)) {
      const char l = absl::ascii_tolower(c);
      const int v = (l >= '0' && l <= '9') ? l - '0' : (l >= 'a' && l <= 'f') ? l - 'a' + 10 : -1;
      ok &= v >= 0;
      byte = byte * 16 + v;
    }
    hash[i] = static_cast<uint8_t>(byte);
  }
  if (ok) return hash;
  return absl::InvalidArgumentError(
      absl::StrCat("expected a SHA-256 in 64 hex digits (sha256sum prints it); got ", Quote(hex)));
}

namespace {

absl::StatusOr<int64_t> ParseBytes(absl::string_view text) {
  int64_t unit = 1;
  absl::string_view digits = text;
  if (!digits.empty()) {
    switch (absl::ascii_toupper(digits.back())) {
      case 'K':
        unit = int64_t{1} << 10;
        break;
      case 'M':
        unit = int64_t{1} << 20;
        break;
      case 'G':
        unit = int64_t{1} << 30;
        break;
      case 'T':
        unit = int64_t{1} << 40;
        break;
      default:
        break;
    }
    if (unit != 1) digits.remove_suffix(1);
  }
  int64_t n = 0;
  if (!absl::SimpleAtoi(digits, &n) || n < 0 || n > (int64_t{1} << 62) / unit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parameter_bytes = ", Quote(text), " must be an integer >= 0 (K, M, G, T: 1024^1..4)"));
  }
  return n * unit;
}

absl::Status ParseQuota(const std::vector<absl::string_view>& fields, AccessFile* file) {
  if (fields.size() < 2) return absl::InvalidArgumentError("quota needs a tenant");
  if (absl::Status s = CheckName("tenant", fields[1], kMaxTenantLength); !s.ok()) return s;
  TenantQuota& quota = file->quotas[std::string(fields[1])];
  for (size_t i = 2; i < fields.size(); ++i) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(fields[i], '=');
    if (kv.first == "sessions") {
      if (!absl::SimpleAtoi(kv.second, &quota.sessions) || quota.sessions < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("sessions = ", Quote(kv.second), " must be an integer >= 0"));
      }
    } else if (kv.first == "parameter_bytes") {
      absl::StatusOr<int64_t> bytes = ParseBytes(kv.second);
      if (!bytes.ok()) return bytes.status();
      quota.parameter_bytes = *bytes;
    } else if (kv.first == "steps_per_second") {
      if (!absl::SimpleAtod(kv.second, &quota.steps_per_second) ||
          !std::isfinite(quota.steps_per_second) || quota.steps_per_second <= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("steps_per_second = ", Quote(kv.second), " must be a number > 0"));
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown quota ", Quote(fields[i]),
                       "; known: sessions=N, parameter_bytes=N, steps_per_second=R"));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseLine(absl::string_view line, AccessFile* file) {
  const std::vector<absl::string_view> fields =
      absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
  if (fields.empty()) return absl::OkStatus();
  if (fields[0] == "quota") return ParseQuota(fields, file);
  if (absl::StartsWith(fields[0], "cert:")) {
    if (fields.size() != 3) {
      return absl::InvalidArgumentError("a cert line is: cert:<identity> <tenant> <role>");
    }
    const absl::string_view identity = absl::StripPrefix(fields[0], "cert:");
    if (identity.empty()) return absl::InvalidArgumentError("cert: needs an identity");
    absl::StatusOr<Grant> grant = ParseGrant(fields[1], fields[2]);
    if (!grant.ok()) return grant.status();
    grant->name = std::string(fields[0]);
    if (!file->certificates.emplace(std::string(identity), *std::move(grant)).second) {
      return absl::InvalidArgumentError(absl::StrCat(Quote(fields[0]), " is listed twice"));
    }
    return absl::OkStatus();
  }
  if (fields.size() != 3 && fields.size() != 4) {
    return absl::InvalidArgumentError(
        "a token line is: <sha256 hex of the token> <tenant> <role> [<name>]");
  }
  absl::StatusOr<TokenHash> hash = ParseTokenHash(fields[0]);
  if (!hash.ok()) return hash.status();
  absl::StatusOr<Grant> grant = ParseGrant(fields[1], fields[2]);
  if (!grant.ok()) return grant.status();
  if (fields.size() == 4) {
    if (absl::Status s = CheckName("name", fields[3], kMaxNameLength); !s.ok()) return s;
    grant->name = std::string(fields[3]);
  } else {
    grant->name = absl::StrCat("token:", absl::AsciiStrToLower(fields[0].substr(0, 8)));
  }
  for (const auto& [other, unused] : file->tokens) {
    if (other == *hash) {
      return absl::InvalidArgumentError("the same token hash is listed twice");
    }
  }
  file->tokens.emplace_back(*hash, *std::move(grant));
  return absl::OkStatus();
}

}  // namespace

absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kAdmin:
      return "admin";
    case Role::kWriter:
      return "writer";
    case Role::kReader:
      return "reader";
  }
  return "?";
}

absl::StatusOr<AccessFile> ParseAccessFile(absl::string_view text) {
  AccessFile file;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++number;
    const size_t hash = line.find('#');
    if (hash != absl::string_view::npos) line = line.substr(0, hash);
    if (absl::Status s = ParseLine(line, &file); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("line ", number, ": ", s.message()));
    }
  }
  return file;
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read ", path, " (missing or not readable)"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::StatusOr<AccessFile> ReadAccessFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadTextFile(path);
  if (!text.ok()) return text.status();
  absl::StatusOr<AccessFile> file = ParseAccessFile(*text);
  if (!file.ok())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", file.status().message()));
  return file;
}

}  // namespace optd
