#include "server/session/exactly_once.h"

#include <string>

#include "base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

using ::testing::HasSubstr;
using ::testing::IsNull;
using ::testing::NotNull;

StepOutput At(int64_t version) {
  StepOutput out;
  out.version = version;
  out.parameters_version = version;
  return out;
}

TEST(ExactlyOnceTableTest, ARecordedStepIsFoundWithItsOutcome) {
  ExactlyOnceTable table;
  ASSERT_THAT(table.Find("w", 1), IsOkAndHolds(IsNull()));  // never seen: new
  table.Record("w", 1, At(5), 5);
  auto found = table.Find("w", 1);
  ASSERT_THAT(found, IsOkAndHolds(NotNull()));
  EXPECT_EQ((*found)->output.version, 5);
  EXPECT_FALSE((*found)->output.duplicate);
  EXPECT_THAT(table.Find("w", 2), IsOkAndHolds(IsNull()));  // above the last: new
  EXPECT_THAT(table.Find("other", 1), IsOkAndHolds(IsNull()));
}

TEST(ExactlyOnceTableTest, AnOldSequenceNoLongerRememberedIsRefused) {
  ExactlyOnceTable table(ExactlyOnceTable::Options{8, 2});
  for (int64_t seq = 1; seq <= 3; ++seq) table.Record("w", seq, At(seq), seq);
  EXPECT_THAT(table.Find("w", 3), IsOkAndHolds(NotNull()));
  EXPECT_THAT(table.Find("w", 2), IsOkAndHolds(NotNull()));
  EXPECT_THAT(table.Find("w", 1),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("sequence = 1 of worker w is not above its last sequence 3")));
}

TEST(ExactlyOnceTableTest, KeepsAtMostMaxWorkersForgettingTheLeastRecentlyActive) {
  ExactlyOnceTable table(ExactlyOnceTable::Options{2, 4});
  table.Record("a", 1, At(1), 1);
  table.Record("b", 1, At(2), 2);
  table.Record("a", 2, At(3), 3);  // a is now the more recent
  table.Record("c", 1, At(4), 4);  // evicts b
  EXPECT_EQ(table.num_workers(), 2);
  EXPECT_THAT(table.Find("a", 2), IsOkAndHolds(NotNull()));
  EXPECT_THAT(table.Find("b", 1), IsOkAndHolds(IsNull()));
}

TEST(ExactlyOnceTableTest, UnkeyedStepsAreNotRecorded) {
  ExactlyOnceTable table;
  table.Record("", 1, At(1), 1);
  table.Record("w", 0, At(1), 1);
  EXPECT_EQ(table.num_workers(), 0);
}

TEST(ExactlyOnceTableTest, ExportThenImportRemembersTheSame) {
  ExactlyOnceTable table;
  table.Record("a", 7, At(1), 1);
  table.Record("b", 3, At(2), 2);
  ExactlyOnceTable copy = ExactlyOnceTable::Import(table.Export());
  EXPECT_EQ(copy.num_workers(), 2);
  auto found = copy.Find("a", 7);
  ASSERT_THAT(found, IsOkAndHolds(NotNull()));
  EXPECT_EQ((*found)->output.version, 1);
  EXPECT_THAT(copy.Find("b", 2), StatusIs(absl::StatusCode::kFailedPrecondition));
}

}  // namespace
}  // namespace optd
