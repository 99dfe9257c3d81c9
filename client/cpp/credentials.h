// File: credentials.h
//
// Transport security of a Client (README "Security"): TLS and mTLS channel credentials made from
// PEM files, the bearer token sent with every call, and the messages that say why the server or
// the TLS handshake refused a call. Client::Connect uses it with the ClientOptions fields tls,
// tls_ca, tls_cert, tls_key, tls_server_name and token; programs rarely call it directly.
//
//   ClientOptions options;
//   options.tls_ca = "ca.pem";                                   // TLS: the server's CA
//   options.tls_cert = "alice.pem"; options.tls_key = "alice.key";  // mTLS
//   // options.token unset: $OPTD_TOKEN (an empty string sends none)
//   auto client = Client::Connect("optd.example:50051", options);
//
// The token travels as `authorization: Bearer <token>` metadata on every call, streams included,
// also over a plaintext channel (acceptable on loopback only). It is never printed.
//
// Errors (same codes as the server's, messages made clearer):
//   UNAUTHENTICATED: "optd at ADDR refused METHOD: the server refused the token (or: the call
//     without a token) (UNAUTHENTICATED): <server text>; <whether a token was sent and from where>"
//   PERMISSION_DENIED: "optd at ADDR refused METHOD (PERMISSION_DENIED): <server text>"
//   a failed TLS handshake, UNAVAILABLE: "TLS handshake failed with optd at ADDR: <gRPC's detail>.
//     <which option to check>"; IsTlsFailure() is true and the call is not retried.
//
// Thread safety: a Security is immutable once made; any thread may use it.

#ifndef OPTD_CLIENT_CPP_CREDENTIALS_H_
#define OPTD_CLIENT_CPP_CREDENTIALS_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/security/credentials.h"

namespace optd {
namespace client {

// The environment variable a client reads its token from when none is given.
inline constexpr char kTokenEnv[] = "OPTD_TOKEN";

// What a client asks for; the fields of ClientOptions with the same names.
struct SecurityOptions {
  // TLS with the system's root certificates (implied by tls_ca, tls_cert).
  bool tls = false;
  // PEM file of the CA the server's certificate must chain to (turns TLS on).
  std::string tls_ca;
  // PEM files of the client certificate and its private key (mTLS; both or neither).
  std::string tls_cert;
  std::string tls_key;
  // The name the server's certificate must hold, when not the host of the address.
  std::string tls_server_name;
  // Bearer token; unset: the OPTD_TOKEN environment variable; "": none.
  std::optional<std::string> token;
};

// A client's resolved transport security: credentials, token, and the context of its messages.
class Security {
 public:
  // Reads the PEM files (InvalidArgument naming the option and file when one cannot be read, is
  // not PEM, or the key does not go with the certificate) and the token (InvalidArgument, without
  // the token, for one that cannot travel as metadata). `custom_credentials`: the caller brings
  // its own channel credentials (then no tls_* may be given).
  static absl::StatusOr<Security> Make(std::string address, const SecurityOptions& options,
                                       bool custom_credentials);

  // A Security without TLS or token, for messages about a server at `address`.
  explicit Security(std::string address = "the server") : address_(std::move(address)) {}

  // A Security for a channel the caller made itself with TLS (`tls`) or plaintext: no token of
  // its own (the caller's metadata carries it) and no credentials to hand out; failed handshakes
  // are recognised as on a channel Make would have made. The Python native path's channel, whose
  // optd.Client read the PEM files, is the one caller.
  static Security ForChannel(std::string address, bool tls);

  // The channel credentials for TLS (null without TLS: the caller decides).
  const std::shared_ptr<grpc::ChannelCredentials>& credentials() const { return credentials_; }
  bool tls() const { return tls_; }
  const std::string& server_name() const { return server_name_; }
  // The token to send ("" for none) and where it came from ("token", "$OPTD_TOKEN").
  const std::string& token() const { return token_; }
  const std::string& token_source() const { return token_source_; }

  // `status` of a call of `method`, with a message that says what was refused and why
  // (UNAUTHENTICATED, PERMISSION_DENIED, a failed TLS handshake); other statuses unchanged.
  absl::Status Explain(const absl::Status& status, absl::string_view method) const;

 private:
  std::string TransportMessage(absl::string_view detail) const;

  std::string address_;
  bool tls_ = false;
  bool custom_credentials_ = false;
  std::string ca_name_;    // "tls_ca=PATH", or "" (system roots)
  std::string cert_path_;  // the client certificate's file, or ""
  std::string server_name_;
  std::string token_;
  std::string token_source_;
  std::shared_ptr<grpc::ChannelCredentials> credentials_;
};

// Whether `status` is a failed TLS handshake explained by Security::Explain (never retried).
bool IsTlsFailure(const absl::Status& status);

// The token to send: `token` if set, else $OPTD_TOKEN; surrounding spaces trimmed. Second: where
// it came from. InvalidArgument for a character that metadata cannot carry.
absl::StatusOr<std::pair<std::string, std::string>> ResolveToken(
    const std::optional<std::string>& token);

}  // namespace client
}  // namespace optd

#endif  // OPTD_CLIENT_CPP_CREDENTIALS_H_
