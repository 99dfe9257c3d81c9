// File: self_signed.h
//
// A self-signed certificate for 127.0.0.1, made with Debian's `openssl req` in a new temporary
// folder: what optd-bench --compare_tls serves TLS with (its own certificate is the CA the client
// trusts). Who uses it: optd_bench.cc. Errors: Unavailable when openssl is missing or fails.

#ifndef OPTD_BENCH_SELF_SIGNED_H_
#define OPTD_BENCH_SELF_SIGNED_H_

#include <string>

#include "absl/status/statusor.h"

namespace optd {
namespace bench {

struct SelfSigned {
  std::string cert_file;  // PEM
  std::string key_file;   // PEM, no passphrase
  std::string cert_pem;   // the certificate's text, to trust it
};

absl::StatusOr<SelfSigned> MakeSelfSignedCertificate();

}  // namespace bench
}  // namespace optd

#endif  // OPTD_BENCH_SELF_SIGNED_H_
