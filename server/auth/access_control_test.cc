#include "server/auth/access_control.h"

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/fake_clock.h"
#include "base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kAliceHash[] = "9c220f200955d76c0a38d308225e0ef10c5f971acaf2f8d1d8f732affa5bd1dc";
// sha256("bob-token")
constexpr char kBobHash[] = "97dd3707015dcf069cf73022ed7173b1165db6eff24b441cb57fd069a8c4e525";

class AccessControlTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& text) {
    const std::string path = absl::StrCat(::testing::TempDir(), "/tokens-", counter_++);
    std::ofstream(path) << text;
    return path;
  }

  std::unique_ptr<AccessControl> Open(const std::string& text,
                                      absl::Duration interval = absl::ZeroDuration()) {
    path_ = Write(text);
    absl::StatusOr<std::unique_ptr<AccessControl>> access =
        AccessControl::Open({path_, interval}, &clock_);
    EXPECT_TRUE(access.ok()) << access.status();
    return access.ok() ? *std::move(access) : nullptr;
  }

  FakeClock clock_;
  std::string path_;
  int counter_ = 0;
};

TEST_F(AccessControlTest, WithoutAFileEveryCallerIsTheAnonymousAdmin) {
  absl::StatusOr<std::unique_ptr<AccessControl>> access = AccessControl::Open({});
  ASSERT_TRUE(access.ok());
  EXPECT_FALSE((*access)->enabled());
  absl::StatusOr<Principal> who = (*access)->Authenticate(std::nullopt, {});
  ASSERT_TRUE(who.ok());
  EXPECT_EQ(who->tenant, "");
  EXPECT_EQ(who->role, Role::kAdmin);
  EXPECT_FALSE(who->authenticated);
}

TEST_F(AccessControlTest, AKnownBearerTokenIsItsTenantAndRole) {
  auto access = Open(absl::StrCat(kAliceHash, " acme writer alice\n"));
  absl::StatusOr<Principal> who = access->Authenticate("Bearer alice-token", {});
  ASSERT_TRUE(who.ok()) << who.status();
  EXPECT_EQ(who->tenant, "acme");
  EXPECT_EQ(who->role, Role::kWriter);
  EXPECT_EQ(who->name, "alice");
  EXPECT_TRUE(access->Authenticate("bearer   alice-token ", {}).ok());  // scheme is any case
}

TEST_F(AccessControlTest, NoTokenAWrongOneOrAnotherSchemeIsUnauthenticated) {
  auto access = Open(absl::StrCat(kAliceHash, " acme writer\n"));
  EXPECT_THAT(access->Authenticate(std::nullopt, {}),
              StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("no bearer token")));
  EXPECT_THAT(access->Authenticate("Bearer alice-tokem", {}),
              StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("not one this server")));
  EXPECT_THAT(access->Authenticate("Basic YWxpY2U6eA==", {}),
              StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("'Bearer <token>'")));
  EXPECT_THAT(access->Authenticate("Bearer ", {}),
              StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("no bearer token")));
  // The token is never part of a message.
  EXPECT_THAT(access->Authenticate("Bearer secret-xyz", {}),
              StatusIs(absl::StatusCode::kUnauthenticated, Not(HasSubstr("secret-xyz"))));
}

TEST_F(AccessControlTest, AListedCertificateIdentityAuthenticatesWithoutAToken) {
  auto access = Open("cert:worker-1 acme writer\n");
  absl::StatusOr<Principal> who = access->Authenticate(std::nullopt, {"other", "worker-1"});
  ASSERT_TRUE(who.ok()) << who.status();
  EXPECT_EQ(who->tenant, "acme");
  EXPECT_EQ(who->name, "cert:worker-1");
  EXPECT_THAT(access->Authenticate(std::nullopt, {"worker-2"}),
              StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("(worker-2) is not listed")));
}

TEST_F(AccessControlTest, AReaderMayOnlyRead) {
  const Principal reader{"acme", Role::kReader, "r", true};
  for (Action a : {Action::kGetSession, Action::kListSessions, Action::kPull}) {
    EXPECT_TRUE(AccessControl::Authorize(reader, a).ok()) << ActionName(a);
  }
  for (Action a : {Action::kCreateSession, Action::kUpdateSession, Action::kDeleteSession,
                   Action::kJoinSession, Action::kStep, Action::kCheckpoint}) {
    EXPECT_THAT(AccessControl::Authorize(reader, a),
                StatusIs(absl::StatusCode::kPermissionDenied,
                         HasSubstr(absl::StrCat("may not call ", ActionName(a)))));
  }
  const Principal writer{"acme", Role::kWriter, "w", true};
  EXPECT_TRUE(AccessControl::Authorize(writer, Action::kStep).ok());
}

TEST_F(AccessControlTest, SessionQuotasNameTheUseAndTheLimit) {
  auto access = Open("quota acme sessions=2 parameter_bytes=1K\n");
  const Principal acme{"acme", Role::kWriter, "w", true};
  EXPECT_TRUE(access->CheckSessionQuota(acme, 1, 0, 1024).ok());
  EXPECT_THAT(access->CheckSessionQuota(acme, 2, 0, 8),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("quota sessions of tenant acme reached: 2 sessions in use, "
                                 "limit 2")));
  EXPECT_THAT(access->CheckSessionQuota(acme, 1, 1000, 32),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("1000 bytes in use + 32 for this session")));
  const Principal other{"other", Role::kWriter, "o", true};  // no quota: unlimited
  EXPECT_TRUE(access->CheckSessionQuota(other, 1000, int64_t{1} << 40, 1 << 30).ok());
}

TEST_F(AccessControlTest, StepRateIsATokenBucketOfOneSecond) {
  auto access = Open("quota acme steps_per_second=2\n");
  const Principal acme{"acme", Role::kWriter, "w", true};
  EXPECT_TRUE(access->AdmitStep(acme).ok());
  EXPECT_TRUE(access->AdmitStep(acme).ok());
  EXPECT_THAT(access->AdmitStep(acme),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("2 steps in the last second, limit 2 per second")));
  clock_.Advance(absl::Milliseconds(500));  // one step's worth
  EXPECT_TRUE(access->AdmitStep(acme).ok());
  EXPECT_FALSE(access->AdmitStep(acme).ok());
  const Principal other{"other", Role::kWriter, "o", true};
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(access->AdmitStep(other).ok());
}

TEST_F(AccessControlTest, ReloadReplacesTheFileAndKeepsTheOldOneWhenTheNewOneIsBad) {
  auto access = Open(absl::StrCat(kAliceHash, " acme writer\n"));
  const int64_t before = access->generation();
  std::ofstream(path_) << "quota acme sessions=oops\n";
  EXPECT_THAT(access->Reload(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 1")));
  EXPECT_TRUE(access->Authenticate("Bearer alice-token", {}).ok());
  EXPECT_EQ(access->generation(), before);
  std::ofstream(path_) << absl::StrCat(kBobHash, " acme writer\n");
  ASSERT_TRUE(access->Reload().ok());
  EXPECT_EQ(access->generation(), before + 1);
  EXPECT_THAT(access->Authenticate("Bearer alice-token", {}),
              StatusIs(absl::StatusCode::kUnauthenticated));
}

TEST_F(AccessControlTest, AChangedFileIsReloadedByTheWatcher) {
  auto access = Open(absl::StrCat(kAliceHash, " acme writer\n"), absl::Milliseconds(20));
  const int64_t before = access->generation();
  {
    std::ofstream out(path_);
    out << absl::StrCat(kBobHash, " acme writer\n") << "# a longer file: another size\n";
  }
  for (int i = 0; i < 500 && access->generation() == before; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_THAT(access->Authenticate("Bearer alice-token", {}),
              StatusIs(absl::StatusCode::kUnauthenticated));
}

}  // namespace
}  // namespace optd
