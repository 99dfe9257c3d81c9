#include "client/cpp/credentials.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace optd {
namespace client {
namespace {

// Marks a status as a failed TLS handshake (IsTlsFailure).
constexpr char kTlsFailurePayload[] = "optd.dev/tls_failure";

// The contents of the PEM file `path` given as option `option`.
absl::StatusOr<std::string> ReadPem(absl::string_view option, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(option, " = '", path, "': cannot read it (missing or not readable)"));
  }
  std::ostringstream data;
  data << in.rdbuf();
  if (!absl::StrContains(data.str(), "-----BEGIN")) {
    return absl::InvalidArgumentError(
        absl::StrCat(option, " = '", path, "' is not a PEM file (no -----BEGIN line)"));
  }
  return data.str();
}

struct BioDeleter {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Deleter {
  void operator()(X509* x509) const { X509_free(x509); }
};
struct PkeyDeleter {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};

std::unique_ptr<X509, X509Deleter> ParseCert(const std::string& pem) {
  std::unique_ptr<BIO, BioDeleter> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (bio == nullptr) return nullptr;
  return std::unique_ptr<X509, X509Deleter>(
      PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
}

std::string Name(const X509_NAME* name) {
  std::unique_ptr<BIO, BioDeleter> bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_ONELINE) < 0) return "?";
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, size);
}

std::string Time(const ASN1_TIME* time) {
  std::unique_ptr<BIO, BioDeleter> bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || ASN1_TIME_print(bio.get(), time) != 1) return "?";
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, size);
}

// "subject ..., issued by ..., valid A to B" of the certificate file `path`, and what is wrong
// with it as seen from here (expired, not yet valid), or "" for both when it cannot be read.
std::pair<std::string, std::string> CertSummary(const std::string& path) {
  absl::StatusOr<std::string> pem = ReadPem("tls_cert", path);
  if (!pem.ok()) return {"", ""};
  std::unique_ptr<X509, X509Deleter> cert = ParseCert(*pem);
  if (cert == nullptr) return {"", ""};
  const ASN1_TIME* not_before = X509_get0_notBefore(cert.get());
  const ASN1_TIME* not_after = X509_get0_notAfter(cert.get());
  std::string summary = absl::StrCat("subject ", Name(X509_get_subject_name(cert.get())),
                                     ", issued by ", Name(X509_get_issuer_name(cert.get())),
                                     ", valid ", Time(not_before), " to ", Time(not_after));
  std::string problem;
  if (X509_cmp_current_time(not_after) < 0) {
    problem = absl::StrCat("it EXPIRED on ", Time(not_after));
  } else if (X509_cmp_current_time(not_before) > 0) {
    problem = absl::StrCat("it is NOT VALID YET (from ", Time(not_before), ")");
  }
  return {std::move(summary), std::move(problem)};
}

// OK if the private key in `key_pem` goes with the certificate in `cert_pem`.
absl::Status CheckKeyPair(const std::string& cert_pem, const std::string& key_pem,
                          absl::string_view names) {
  std::unique_ptr<X509, X509Deleter> cert = ParseCert(cert_pem);
  if (cert == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(names, ": no certificate in tls_cert"));
  }
  std::unique_ptr<BIO, BioDeleter> bio(
      BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())));
  std::unique_ptr<EVP_PKEY, PkeyDeleter> key(
      bio == nullptr ? nullptr : PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(names, ": tls_key holds no (unencrypted) private key"));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(names, ": the key does not go with the certificate"));
  }
  return absl::OkStatus();
}

absl::Status Replace(const absl::Status& status, std::string message) {
  absl::Status out(status.code(), message);
  status.ForEachPayload(
      [&out](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

}  // namespace

absl::StatusOr<std::pair<std::string, std::string>> ResolveToken(
    const std::optional<std::string>& token) {
  std::string source = "ClientOptions::token, --token";
  std::string value;
  if (token.has_value()) {
    value = *token;
  } else {
    const char* env = std::getenv(kTokenEnv);
    value = env == nullptr ? "" : env;
    source = absl::StrCat("$", kTokenEnv);
  }
  value = std::string(absl::StripAsciiWhitespace(value));
  if (value.empty()) return std::make_pair(std::string(), std::string());
  for (const char c : value) {
    if (c < 0x21 || c > 0x7e) {  // never echo the token
      return absl::InvalidArgumentError(
          absl::StrCat("the token from ", source,
                       " holds a character that cannot be sent as gRPC metadata (only printable "
                       "ASCII without spaces)"));
    }
  }
  return std::make_pair(std::move(value), std::move(source));
}

absl::StatusOr<Security> Security::Make(std::string address, const SecurityOptions& options,
                                        bool custom_credentials) {
  Security security(std::move(address));
  security.tls_ = options.tls || !options.tls_ca.empty() || !options.tls_cert.empty() ||
                  !options.tls_key.empty();
  security.custom_credentials_ = custom_credentials;
  if (custom_credentials && security.tls_) {
    return absl::InvalidArgumentError(
        "give either ClientOptions.credentials or tls/tls_ca/tls_cert/tls_key, not both");
  }
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "tls_cert and tls_key go together: give both (the client certificate and its private "
        "key) or neither");
  }
  if (!options.tls_server_name.empty() && !security.tls_ && !custom_credentials) {
    return absl::InvalidArgumentError("tls_server_name needs TLS (tls_ca, tls_cert or tls)");
  }
  if (security.tls_) {
    grpc::SslCredentialsOptions ssl;
    if (!options.tls_ca.empty()) {
      absl::StatusOr<std::string> ca = ReadPem("tls_ca", options.tls_ca);
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *std::move(ca);
      security.ca_name_ = absl::StrCat("tls_ca=", options.tls_ca);
    }
    if (!options.tls_cert.empty()) {
      absl::StatusOr<std::string> cert = ReadPem("tls_cert", options.tls_cert);
      if (!cert.ok()) return cert.status();
      absl::StatusOr<std::string> key = ReadPem("tls_key", options.tls_key);
      if (!key.ok()) return key.status();
      absl::Status pair = CheckKeyPair(
          *cert, *key,
          absl::StrCat("tls_cert=", options.tls_cert, " and tls_key=", options.tls_key));
      if (!pair.ok()) return pair;
      ssl.pem_cert_chain = *std::move(cert);
      ssl.pem_private_key = *std::move(key);
      security.cert_path_ = options.tls_cert;
    }
    security.credentials_ = grpc::SslCredentials(ssl);
  }
  security.server_name_ = options.tls_server_name;
  absl::StatusOr<std::pair<std::string, std::string>> token = ResolveToken(options.token);
  if (!token.ok()) return token.status();
  security.token_ = std::move(token->first);
  security.token_source_ = std::move(token->second);
  return security;
}

Security Security::ForChannel(std::string address, bool tls) {
  Security security(std::move(address));
  security.tls_ = tls;
  return security;
}

absl::Status Security::Explain(const absl::Status& status, absl::string_view method) const {
  switch (status.code()) {
    case absl::StatusCode::kUnauthenticated: {
      std::string sent;
      if (!token_.empty()) {
        sent = absl::StrCat("a token was sent (from ", token_source_,
                            ") and the server did not accept it: check that it is current and "
                            "listed in the server's --auth_tokens_file");
      } else if (!cert_path_.empty()) {
        sent = absl::StrCat("no token was sent (set the token or ", kTokenEnv,
                            "), and the client certificate (tls_cert=", cert_path_,
                            ") maps to no tenant on the server");
      } else {
        sent = absl::StrCat("no token was sent: set the token (--token) or ", kTokenEnv);
      }
      return Replace(
          status, absl::StrCat("optd at ", address_, " refused ", method, ": the server refused ",
                               token_.empty() ? "the call without a token" : "the token",
                               " (UNAUTHENTICATED): ", status.message(), "; ", sent));
    }
    case absl::StatusCode::kPermissionDenied:
      return Replace(status, absl::StrCat("optd at ", address_, " refused ", method,
                                          " (PERMISSION_DENIED): ", status.message()));
    case absl::StatusCode::kUnavailable: {
      std::string message = TransportMessage(status.message());
      if (message.empty()) return status;
      absl::Status out = Replace(status, std::move(message));
      if (tls_ || custom_credentials_) out.SetPayload(kTlsFailurePayload, absl::Cord("1"));
      return out;
    }
    default:
      return status;
  }
}

std::string Security::TransportMessage(absl::string_view detail) const {
  const std::string low = absl::AsciiStrToLower(detail);
  const bool handshake = absl::StrContains(low, "handshake") ||
                         absl::StrContains(low, "ssl_error") ||
                         absl::StrContains(low, "certificate verify") ||
                         absl::StrContains(low, "not in peer certificate");
  // The server closing the connection while it was being set up (not a call cut later).
  const bool closed =
      (absl::StrContains(low, "socket closed") || absl::StrContains(low, "connection reset") ||
       absl::StrContains(low, "end of file")) &&
      absl::StrContains(low, "failed to connect");
  if (!handshake && !closed) return "";
  if (!tls_ && !custom_credentials_) {
    if (!closed) return "";
    return absl::StrCat("optd at ", address_,
                        " closed the connection before any call (plaintext channel): ", detail,
                        ". If the server uses TLS (--tls_cert), give tls_ca (--tls_ca), and "
                        "tls_cert/tls_key if it asks for client certificates");
  }
  const std::string head =
      absl::StrCat("TLS handshake failed with optd at ", address_, ": ", detail);
  if (absl::StrContains(low, "wrong version number") ||
      absl::StrContains(low, "packet length too long")) {
    return absl::StrCat(head,
                        ". The server does not speak TLS on this port (a plaintext optd?): drop "
                        "the tls options, or start optd with --tls_cert/--tls_key");
  }
  if (absl::StrContains(low, "not in peer certificate")) {
    return absl::StrCat(head,
                        ". The server's certificate does not name the host asked for: connect by "
                        "a name or address the certificate holds, or set tls_server_name to one "
                        "(now ",
                        server_name_.empty() ? "unset" : server_name_, ")");
  }
  if (absl::StrContains(low, "certificate verify failed") ||
      absl::StrContains(low, "certificate_verify_failed")) {
    return absl::StrCat(head, ". The server's certificate was not accepted: check tls_ca (now ",
                        ca_name_.empty() ? "the system's root certificates" : ca_name_,
                        "): it must be the CA that signed the server's certificate, and the "
                        "certificate must name this host (or set tls_server_name)");
  }
  if (closed) {
    if (!cert_path_.empty()) {
      const auto [summary, problem] = CertSummary(cert_path_);
      return absl::StrCat(head,
                          ". The server closed the connection during the handshake: it refused "
                          "the client certificate: check tls_cert/tls_key (tls_cert=",
                          cert_path_, summary.empty() ? "" : ": ", summary,
                          problem.empty() ? "" : "; ", problem,
                          "): it must be signed by the CA of the server's --tls_client_ca and be "
                          "valid now");
    }
    return absl::StrCat(head,
                        ". The server closed the connection during the handshake: it probably "
                        "requires a client certificate (mTLS, --tls_client_ca): give tls_cert "
                        "and tls_key");
  }
  return absl::StrCat(head, ". Check tls_ca (", ca_name_.empty() ? "system roots" : ca_name_,
                      ") and tls_cert/tls_key (", cert_path_.empty() ? "none given" : cert_path_,
                      ")");
}

bool IsTlsFailure(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnavailable &&
         status.GetPayload(kTlsFailurePayload).has_value();
}

}  // namespace client
}  // namespace optd
