// File: security_flags.h
//
// The command-line flags of TLS, mTLS and the bearer token, shared by optctl and the example
// workers: --tls_ca, --tls_cert, --tls_key, --tls_server_name, --token (default: the OPTD_TOKEN
// environment variable). A program that links optd::client_flags has them; it copies them into
// its ClientOptions with ApplySecurityFlags before Client::Connect.
//
//   optd::client::ClientOptions options;
//   optd::client::ApplySecurityFlags(&options);
//   auto client = optd::client::Client::Connect(absl::GetFlag(FLAGS_server), options);

#ifndef OPTD_CLIENT_CPP_SECURITY_FLAGS_H_
#define OPTD_CLIENT_CPP_SECURITY_FLAGS_H_

#include <optional>
#include <string>

#include "absl/flags/declare.h"
#include "client/cpp/client.h"

ABSL_DECLARE_FLAG(std::string, tls_ca);
ABSL_DECLARE_FLAG(std::string, tls_cert);
ABSL_DECLARE_FLAG(std::string, tls_key);
ABSL_DECLARE_FLAG(std::string, tls_server_name);
ABSL_DECLARE_FLAG(std::optional<std::string>, token);

namespace optd {
namespace client {

// Sets options' tls_ca, tls_cert, tls_key, tls_server_name and token from the flags (token: only
// when --token was given, so that an unset one reads OPTD_TOKEN).
void ApplySecurityFlags(ClientOptions* options);

// The flags' help, for a program's own usage text.
extern const char kSecurityFlagsHelp[];

}  // namespace client
}  // namespace optd

#endif  // OPTD_CLIENT_CPP_SECURITY_FLAGS_H_
