#include "server/auth/audit_log.h"

#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace optd {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(AuditLogTest, WritesOneJsonLinePerEventWithWhoWhatAndOutcome) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/audit.log");
  std::remove(path.c_str());
  absl::StatusOr<std::unique_ptr<AuditLog>> log = AuditLog::Open(path);
  ASSERT_TRUE(log.ok()) << log.status();
  const Principal alice{"acme", Role::kWriter, "alice", true};
  (*log)->Write({"session.create", &alice, "ipv4:127.0.0.1:1", "CreateSession", "run-1", "",
                 absl::OkStatus()});
  (*log)->Write({"auth.unauthenticated", nullptr, "ipv4:127.0.0.1:2", "Step", "", "",
                 absl::UnauthenticatedError("no bearer token")});
  EXPECT_EQ((*log)->lines(), 2);
  std::istringstream lines(ReadAll(path));
  std::string first, second;
  std::getline(lines, first);
  std::getline(lines, second);
  const nlohmann::json a = nlohmann::json::parse(first);
  EXPECT_EQ(a["event"], "session.create");
  EXPECT_EQ(a["principal"], "alice");
  EXPECT_EQ(a["tenant"], "acme");
  EXPECT_EQ(a["role"], "writer");
  EXPECT_EQ(a["session"], "run-1");
  EXPECT_EQ(a["outcome"], "OK");
  EXPECT_THAT(a["time"].get<std::string>(), ::testing::MatchesRegex("20[0-9-]+T[0-9:.]+Z"));
  const nlohmann::json b = nlohmann::json::parse(second);
  EXPECT_EQ(b["outcome"], "UNAUTHENTICATED");
  EXPECT_EQ(b["message"], "no bearer token");
  EXPECT_FALSE(b.contains("principal"));
}

TEST(AuditLogTest, AnUnwritableFileIsAnErrorAtOpen) {
  EXPECT_FALSE(AuditLog::Open("/nonexistent-dir/audit.log").ok());
}

}  // namespace
}  // namespace optd
