#include "client/cpp/security_flags.h"

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, tls_ca, "",
          "PEM file of the CA that signed the server's certificate; turns TLS on");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM file of the client certificate, for a server with --tls_client_ca (mTLS); with "
          "--tls_key");
ABSL_FLAG(std::string, tls_key, "", "PEM file of the client certificate's private key");
ABSL_FLAG(std::string, tls_server_name, "",
          "the name the server's certificate must hold, when not the host of the address");
ABSL_FLAG(std::optional<std::string>, token, std::nullopt,
          "bearer token sent with every call (default: the OPTD_TOKEN environment variable, "
          "which, unlike a flag, does not show in ps)");

namespace optd {
namespace client {

const char kSecurityFlagsHelp[] =
    R"(Security (a server run with --tls_cert, --tls_client_ca, --auth_tokens_file):
  --tls_ca=PEM          the CA that signed the server's certificate; turns TLS on
  --tls_cert=PEM --tls_key=PEM
                        the client certificate and its key (mTLS)
  --tls_server_name=N   the name the server's certificate holds, if not the address's host
  --token=TOKEN         bearer token sent with every call; default $OPTD_TOKEN (preferred: a
                        flag shows in ps). A token over a plaintext channel: loopback only.
)";

void ApplySecurityFlags(ClientOptions* options) {
  options->tls_ca = absl::GetFlag(FLAGS_tls_ca);
  options->tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options->tls_key = absl::GetFlag(FLAGS_tls_key);
  options->tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  std::optional<std::string> token = absl::GetFlag(FLAGS_token);
  if (token.has_value()) options->token = *std::move(token);
}

}  // namespace client
}  // namespace optd
