// File: tls_credentials.h
//
// The server's transport credentials: TLS from PEM files (--tls_cert, --tls_key), with mTLS when
// --tls_client_ca is given (a client must present a certificate that CA signed and that is valid
// now, else its handshake fails before any call), or insecure. The files are watched
// (grpc::experimental::FileWatcherCertificateProvider): a certificate and key replaced on disk are
// used for new connections within `reload_interval`; open connections and streams go on with the
// ones they started with. Start-up checks that each file reads, parses and that the key is the
// certificate's, so that a bad file is an error now rather than failed handshakes later.
//
// Who uses it: OptdServer (server.cc). Stateless functions.
// Errors: InvalidArgument naming the flag and the file (unreadable, not PEM, key not matching).

#ifndef OPTD_SERVER_SERVICE_TLS_CREDENTIALS_H_
#define OPTD_SERVER_SERVICE_TLS_CREDENTIALS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/security/auth_context.h"
#include "grpcpp/security/server_credentials.h"

namespace optd {

struct TlsOptions {
  std::string cert_file;       // --tls_cert: the server's certificate chain (PEM)
  std::string key_file;        // --tls_key: its private key (PEM)
  std::string client_ca_file;  // --tls_client_ca: empty, no client certificates (TLS, not mTLS)
  absl::Duration reload_interval = absl::Seconds(10);  // --tls_reload_interval, >= 1 s
  bool enabled() const { return !cert_file.empty() || !key_file.empty(); }
  bool mutual() const { return !client_ca_file.empty(); }
};

// TLS credentials for `options` (which must be enabled()), after checking its files.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> TlsServerCredentialsFor(
    const TlsOptions& options);

// The verified identities of a call's peer certificate (mTLS): its subjectAltNames, then its
// subject's CN. Empty without a client certificate.
std::vector<std::string> PeerIdentities(const grpc::AuthContext& context);

}  // namespace optd

#endif  // OPTD_SERVER_SERVICE_TLS_CREDENTIALS_H_
