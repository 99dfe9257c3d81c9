#include "server/auth/basic_auth.h"

#include "absl/strings/str_cat.h"
#include "base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

using ::testing::HasSubstr;

// sha256("s3cret")
constexpr char kHash[] = "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0";

TEST(BasicAuthUsersTest, ChecksUserAndPasswordAgainstTheHash) {
  absl::StatusOr<BasicAuthUsers> users =
      BasicAuthUsers::Parse(absl::StrCat("# scrapers\nprometheus ", kHash, "\n"));
  ASSERT_TRUE(users.ok()) << users.status();
  EXPECT_EQ(users->size(), 1u);
  EXPECT_TRUE(users->Check("prometheus", "s3cret"));
  EXPECT_FALSE(users->Check("prometheus", "s3cret "));
  EXPECT_FALSE(users->Check("grafana", "s3cret"));
  EXPECT_FALSE(users->Check("", ""));
}

TEST(BasicAuthUsersTest, RefusesBadFiles) {
  EXPECT_THAT(BasicAuthUsers::Parse("prometheus s3cret"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 1: expected a SHA")));
  EXPECT_THAT(BasicAuthUsers::Parse("# nobody\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("lists no user")));
  EXPECT_THAT(BasicAuthUsers::Parse(absl::StrCat("a:b ", kHash)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("may not contain ':'")));
}

}  // namespace
}  // namespace optd
