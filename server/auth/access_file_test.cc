#include "server/auth/access_file.h"

#include "absl/strings/str_cat.h"
#include "base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

using ::testing::HasSubstr;

// sha256("alice-token")
constexpr char kAliceHash[] = "9c220f200955d76c0a38d308225e0ef10c5f971acaf2f8d1d8f732affa5bd1dc";

TEST(AccessFileTest, ReadsTokensCertificatesAndQuotasAndSkipsComments) {
  absl::StatusOr<AccessFile> file = ParseAccessFile(
      absl::StrCat("# the team's tokens\n\n", kAliceHash, " acme writer alice   # Alice's laptop\n",
                   "cert:worker-1.acme acme writer\n",
                   "quota acme sessions=4 parameter_bytes=2G steps_per_second=2.5\n"));
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->tokens.size(), 1u);
  EXPECT_EQ(file->tokens[0].first[0], 0x9c);
  EXPECT_EQ(file->tokens[0].first[31], 0xdc);
  EXPECT_EQ(file->tokens[0].second.tenant, "acme");
  EXPECT_EQ(file->tokens[0].second.role, Role::kWriter);
  EXPECT_EQ(file->tokens[0].second.name, "alice");
  ASSERT_TRUE(file->certificates.contains("worker-1.acme"));
  EXPECT_EQ(file->certificates.at("worker-1.acme").name, "cert:worker-1.acme");
  const TenantQuota& quota = file->quotas.at("acme");
  EXPECT_EQ(quota.sessions, 4);
  EXPECT_EQ(quota.parameter_bytes, int64_t{2} << 30);
  EXPECT_EQ(quota.steps_per_second, 2.5);
}

TEST(AccessFileTest, AnUnnamedTokenIsNamedByItsHashPrefix) {
  absl::StatusOr<AccessFile> file = ParseAccessFile(absl::StrCat(kAliceHash, " acme reader"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->tokens[0].second.name, "token:9c220f20");
}

TEST(AccessFileTest, BadLinesAreRefusedNamingTheLine) {
  const std::string hash(kAliceHash);
  EXPECT_THAT(ParseAccessFile("\n" + hash + " acme owner"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("line 2: role \"owner\" is not admin, writer or reader")));
  EXPECT_THAT(
      ParseAccessFile("alice-token acme writer"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 1: expected a SHA-256")));
  EXPECT_THAT(ParseAccessFile(hash + " ac/me writer"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tenant \"ac/me\"")));
  EXPECT_THAT(ParseAccessFile(hash + " acme writer\n" + hash + " other reader"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 2: the same token")));
  EXPECT_THAT(ParseAccessFile("quota acme sessions=-1"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("sessions = \"-1\"")));
  EXPECT_THAT(ParseAccessFile("quota acme steps_per_second=0"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("must be a number > 0")));
  EXPECT_THAT(ParseAccessFile("quota acme memory=1"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown quota")));
  EXPECT_THAT(ParseAccessFile("cert: acme writer"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("needs an identity")));
}

TEST(AccessFileTest, AMissingFileNamesItsPath) {
  EXPECT_THAT(ReadAccessFile("/nonexistent/tokens"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent/tokens")));
}

}  // namespace
}  // namespace optd
