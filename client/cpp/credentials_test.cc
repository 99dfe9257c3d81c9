// Security (credentials.h) without a server: what Make accepts and refuses, where the token comes
// from, and what Explain says for each refusal. tests/security_clients_test.py runs the same
// messages against optd with mTLS and tokens.

#include "client/cpp/credentials.h"

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace client {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

// Sets OPTD_TOKEN (or unsets it, for nullptr) for one test, and restores it.
class ScopedToken {
 public:
  explicit ScopedToken(const char* value) {
    const char* old = std::getenv(kTokenEnv);
    if (old != nullptr) old_ = old;
    if (value == nullptr) {
      unsetenv(kTokenEnv);
    } else {
      setenv(kTokenEnv, value, 1);
    }
  }
  ~ScopedToken() {
    if (old_.has_value()) {
      setenv(kTokenEnv, old_->c_str(), 1);
    } else {
      unsetenv(kTokenEnv);
    }
  }

 private:
  std::optional<std::string> old_;
};

TEST(ResolveTokenTest, FromTheOptionElseTheEnvironment) {
  ScopedToken env("env-secret");
  EXPECT_THAT(ResolveToken(std::string("  given ")),
              IsOkAndHolds(std::make_pair(std::string("given"),
                                          std::string("ClientOptions::token, --token"))));
  EXPECT_THAT(ResolveToken(std::nullopt),
              IsOkAndHolds(std::make_pair(std::string("env-secret"), std::string("$OPTD_TOKEN"))));
  // An empty token sends none, whatever the environment holds.
  EXPECT_THAT(ResolveToken(std::string("")),
              IsOkAndHolds(std::make_pair(std::string(), std::string())));
}

TEST(ResolveTokenTest, RefusesWhatMetadataCannotCarryWithoutShowingIt) {
  ScopedToken env(nullptr);
  EXPECT_THAT(ResolveToken(std::nullopt),
              IsOkAndHolds(std::make_pair(std::string(), std::string())));
  EXPECT_THAT(ResolveToken(std::string("sec ret")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("printable ASCII"), Not(HasSubstr("sec ret")))));
}

TEST(SecurityMakeTest, RefusesUnreadableFilesAndHalfPairs) {
  ScopedToken env(nullptr);
  SecurityOptions options;
  options.tls_ca = "/nonexistent/ca.pem";
  EXPECT_THAT(
      Security::Make("127.0.0.1:1", options, false),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr("tls_ca = '/nonexistent/ca.pem'"), HasSubstr("cannot read"))));

  const std::string not_pem = testing::TempDir() + "/not.pem";
  std::ofstream(not_pem) << "hello\n";
  options.tls_ca = not_pem;
  EXPECT_THAT(Security::Make("127.0.0.1:1", options, false),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("is not a PEM file")));

  SecurityOptions half;
  half.tls_cert = "alice.pem";
  EXPECT_THAT(Security::Make("127.0.0.1:1", half, false),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("go together")));

  SecurityOptions both;
  both.tls = true;
  EXPECT_THAT(Security::Make("127.0.0.1:1", both, /*custom_credentials=*/true),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not both")));

  SecurityOptions name_only;
  name_only.tls_server_name = "optd.example";
  EXPECT_THAT(Security::Make("127.0.0.1:1", name_only, false),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("needs TLS")));
}

TEST(SecurityMakeTest, PlaintextByDefaultTlsWithSystemRoots) {
  ScopedToken env(nullptr);
  absl::StatusOr<Security> plain = Security::Make("127.0.0.1:1", {}, false);
  ASSERT_OK(plain);
  EXPECT_FALSE(plain->tls());
  EXPECT_EQ(plain->credentials(), nullptr);
  SecurityOptions roots;
  roots.tls = true;
  absl::StatusOr<Security> tls = Security::Make("127.0.0.1:1", roots, false);
  ASSERT_OK(tls);
  EXPECT_TRUE(tls->tls());
  EXPECT_NE(tls->credentials(), nullptr);
}

TEST(SecurityExplainTest, RefusedTokenSaysWhetherOneWasSent) {
  ScopedToken env(nullptr);
  SecurityOptions with;
  with.token = "very-secret";
  absl::StatusOr<Security> sent = Security::Make("10.0.0.1:50051", with, false);
  ASSERT_OK(sent);
  const absl::Status refused = sent->Explain(absl::UnauthenticatedError("unknown token"), "Pull");
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kUnauthenticated,
                                AllOf(HasSubstr("optd at 10.0.0.1:50051 refused Pull"),
                                      HasSubstr("the server refused the token (UNAUTHENTICATED)"),
                                      HasSubstr("unknown token"), HasSubstr("a token was sent"),
                                      Not(HasSubstr("very-secret")))));

  absl::StatusOr<Security> none = Security::Make("10.0.0.1:50051", {}, false);
  ASSERT_OK(none);
  EXPECT_THAT(none->Explain(absl::UnauthenticatedError("no token"), "Pull"),
              StatusIs(absl::StatusCode::kUnauthenticated,
                       AllOf(HasSubstr("refused the call without a token"),
                             HasSubstr("no token was sent"), HasSubstr("OPTD_TOKEN"))));
}

TEST(SecurityExplainTest, PermissionDeniedNamesTheCall) {
  Security security("10.0.0.1:50051");
  EXPECT_THAT(security.Explain(absl::PermissionDeniedError("role reader"), "DeleteSession"),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       "optd at 10.0.0.1:50051 refused DeleteSession (PERMISSION_DENIED): role "
                       "reader"));
}

TEST(SecurityExplainTest, HandshakeFailuresNameTheOptionAndAreMarked) {
  ScopedToken env(nullptr);
  SecurityOptions roots;
  roots.tls = true;
  absl::StatusOr<Security> tls = Security::Make("10.0.0.1:50051", roots, false);
  ASSERT_OK(tls);
  const absl::Status verify = tls->Explain(
      absl::UnavailableError("failed to connect to all addresses; last error: UNKNOWN: "
                             "ipv4:10.0.0.1:50051: Ssl handshake failed: SSL_ERROR_SSL: "
                             "error:0A000086:SSL routines::certificate verify failed"),
      "ListSessions");
  EXPECT_THAT(verify,
              StatusIs(absl::StatusCode::kUnavailable,
                       AllOf(HasSubstr("TLS handshake failed with optd at 10.0.0.1:50051"),
                             HasSubstr("certificate verify failed"), HasSubstr("check tls_ca"))));
  EXPECT_TRUE(IsTlsFailure(verify));

  const absl::Status closed = tls->Explain(
      absl::UnavailableError("failed to connect to all addresses; last error: UNAVAILABLE: "
                             "ipv4:10.0.0.1:50051: Socket closed"),
      "ListSessions");
  EXPECT_THAT(closed.message(), HasSubstr("requires a client certificate"));
  EXPECT_TRUE(IsTlsFailure(closed));

  // A server that is simply not there is not a TLS matter.
  const absl::Status refused = absl::UnavailableError(
      "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.1:50051: Failed to "
      "connect to remote host: Connection refused");
  EXPECT_EQ(tls->Explain(refused, "ListSessions"), refused);
  EXPECT_FALSE(IsTlsFailure(tls->Explain(refused, "ListSessions")));

  // Without TLS a closed connection hints at TLS but is not marked (it is retried).
  absl::StatusOr<Security> plain = Security::Make("10.0.0.1:50051", {}, false);
  ASSERT_OK(plain);
  const absl::Status plain_closed = plain->Explain(
      absl::UnavailableError("failed to connect to all addresses; last error: UNAVAILABLE: "
                             "ipv4:10.0.0.1:50051: Socket closed"),
      "ListSessions");
  EXPECT_THAT(plain_closed.message(), HasSubstr("If the server uses TLS"));
  EXPECT_FALSE(IsTlsFailure(plain_closed));
}

}  // namespace
}  // namespace client
}  // namespace optd
