#include "bench/self_signed.h"

#include <stdlib.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace optd {
namespace bench {

absl::StatusOr<SelfSigned> MakeSelfSignedCertificate() {
  char dir[] = "/tmp/optd-bench-tls-XXXXXX";
  if (mkdtemp(dir) == nullptr) return absl::InternalError("mkdtemp failed");
  SelfSigned made{absl::StrCat(dir, "/server.pem"), absl::StrCat(dir, "/server.key"), ""};
  const std::string command = absl::StrCat(
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "
      "/CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout ",
      made.key_file, " -out ", made.cert_file, " 2>/dev/null");
  if (std::system(command.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("`", command, "` failed (is openssl installed?)"));
  }
  std::ifstream in(made.cert_file);
  std::ostringstream pem;
  pem << in.rdbuf();
  made.cert_pem = pem.str();
  return made;
}

}  // namespace bench
}  // namespace optd
