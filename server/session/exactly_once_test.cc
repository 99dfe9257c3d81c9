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

// Whether a status asks the worker to join again.
MATCHER(AsksToRejoin, "") { return NeedsRejoin(arg.status()); }

TEST(ExactlyOnceTableTest, ARecordedStepIsFoundWithItsOutcome) {
  ExactlyOnceTable table;
  ASSERT_THAT(table.Find("w", 0, 1), IsOkAndHolds(IsNull()));  // never seen: new
  table.Record("w", 0, 1, At(5));
  auto found = table.Find("w", 0, 1);
  ASSERT_THAT(found, IsOkAndHolds(NotNull()));
  EXPECT_EQ((*found)->output.version, 5);
  EXPECT_FALSE((*found)->output.duplicate);
  EXPECT_THAT(table.Find("w", 0, 2), IsOkAndHolds(IsNull()));  // above the last: new
  EXPECT_THAT(table.Find("other", 0, 1), IsOkAndHolds(IsNull()));
}

TEST(ExactlyOnceTableTest, AnOldSequenceNoLongerRememberedIsRefused) {
  ExactlyOnceTable table(ExactlyOnceOptions{8, 2});
  for (int64_t seq = 1; seq <= 3; ++seq) table.Record("w", 0, seq, At(seq));
  EXPECT_THAT(table.Find("w", 0, 3), IsOkAndHolds(NotNull()));
  EXPECT_THAT(table.Find("w", 0, 2), IsOkAndHolds(NotNull()));
  EXPECT_THAT(table.Find("w", 0, 1),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("sequence = 1 of worker w is not above its last sequence 3")));
}

TEST(ExactlyOnceTableTest, KeepsAtMostMaxWorkersForgettingTheLeastRecentlyActive) {
  ExactlyOnceTable table(ExactlyOnceOptions{2, 4});
  table.Record("a", 0, 1, At(1));
  table.Record("b", 0, 1, At(2));
  table.Record("a", 0, 2, At(3));  // a is now the more recent
  table.Record("c", 0, 1, At(4));  // forgets b
  EXPECT_EQ(table.num_workers(), 2);
  EXPECT_THAT(table.Find("a", 0, 2), IsOkAndHolds(NotNull()));
}

// The scale case of issue #11: a worker's step, then more other workers than the table holds,
// then the first worker's retry. It must not be applied again: the table cannot tell, so it
// refuses.
TEST(ExactlyOnceTableTest, ARetryOfAForgottenWorkerIsRefusedNeverTakenAsNew) {
  ExactlyOnceTable table(ExactlyOnceOptions{1024, 16});
  table.Record("first", 0, 7, At(1));
  for (int w = 0; w < 1024; ++w) table.Record("w" + std::to_string(w), 0, 1, At(2 + w));
  absl::StatusOr<const ExactlyOnceTable::Outcome*> retry = table.Find("first", 0, 7);
  EXPECT_THAT(retry, StatusIs(absl::StatusCode::kFailedPrecondition,
                              HasSubstr("cannot tell a retry from a new step")));
  EXPECT_THAT(retry, AsksToRejoin());
  // So is any unknown worker that did not join; a joined one is fine.
  EXPECT_THAT(table.Find("newcomer", 0, 1), StatusIs(absl::StatusCode::kFailedPrecondition));
  const int64_t incarnation = table.Join("newcomer");
  EXPECT_THAT(table.Find("newcomer", incarnation, 1), IsOkAndHolds(IsNull()));
}

TEST(ExactlyOnceTableTest, AJoinedWorkerThatWasForgottenMustJoinAgain) {
  ExactlyOnceTable table(ExactlyOnceOptions{2, 16});
  const int64_t a = table.Join("a");
  table.Record("a", a, 1, At(1));
  table.Join("b");
  table.Join("c");  // forgets a
  EXPECT_THAT(table.Find("a", a, 1), StatusIs(absl::StatusCode::kFailedPrecondition,
                                              HasSubstr("is not known to this session")));
  EXPECT_THAT(table.Find("a", a, 2), AsksToRejoin());
}

TEST(ExactlyOnceTableTest, ARestartedWorkerIsANewIncarnationNotADuplicate) {
  ExactlyOnceTable table;
  const int64_t first = table.Join("w");
  for (int64_t seq = 1; seq <= 5; ++seq) table.Record("w", first, seq, At(seq));
  // The process restarts with the same worker id and joins: its sequence 1 is new.
  const int64_t second = table.Join("w");
  EXPECT_GT(second, first);
  EXPECT_THAT(table.Find("w", second, 1), IsOkAndHolds(IsNull()));
  table.Record("w", second, 1, At(6));
  // A late retry of the old process is refused, not answered with the new one's outcome.
  EXPECT_THAT(table.Find("w", first, 1), StatusIs(absl::StatusCode::kFailedPrecondition,
                                                  HasSubstr("was superseded by incarnation")));
  // And a step that leaves out the incarnation of a joined worker is refused too.
  EXPECT_THAT(table.Find("w", 0, 9), AsksToRejoin());
}

TEST(ExactlyOnceTableTest, UnkeyedStepsAreNotRecorded) {
  ExactlyOnceTable table;
  table.Record("", 0, 1, At(1));
  table.Record("w", 0, 0, At(1));
  EXPECT_EQ(table.num_workers(), 0);
}

TEST(ExactlyOnceTableTest, MemoryIsBoundedWhateverTheOutcomesName) {
  ExactlyOnceTable table(ExactlyOnceOptions{4, 2});
  StepOutput big = At(1);
  for (int i = 0; i < 4096; ++i) big.missing_workers.push_back(std::string(100, 'm'));
  for (int w = 0; w < 100; ++w) {
    for (int64_t seq = 1; seq <= 10; ++seq) table.Record("w" + std::to_string(w), 0, seq, big);
  }
  EXPECT_EQ(table.num_workers(), 4);
  EXPECT_LT(table.MemoryBytes(), 4 * 2 * (ExactlyOnceTable::kRecordedMissing * 200 + 1024));
  auto found = table.Find("w99", 0, 10);
  ASSERT_THAT(found, IsOkAndHolds(NotNull()));
  EXPECT_EQ((*found)->output.missing_workers.size(), ExactlyOnceTable::kRecordedMissing);
}

TEST(ExactlyOnceTableTest, ExportThenImportRemembersTheSame) {
  ExactlyOnceTable table(ExactlyOnceOptions{1, 16});
  table.Record("a", 0, 7, At(1));
  const int64_t b = table.Join("b");  // forgets a, which did not join
  table.Record("b", b, 3, At(2));
  ExactlyOnceTable copy = ExactlyOnceTable::Import(table.Export(), ExactlyOnceOptions{1, 16});
  EXPECT_EQ(copy.num_workers(), 1);
  auto found = copy.Find("b", b, 3);
  ASSERT_THAT(found, IsOkAndHolds(NotNull()));
  EXPECT_EQ((*found)->output.version, 2);
  EXPECT_THAT(copy.Find("a", 0, 7), AsksToRejoin());  // it still knows it forgot someone
  EXPECT_GT(copy.Join("c"), b);                       // incarnations keep growing
}

// The process that wrote a checkpoint may have handed out incarnations after it; the restored
// table must not hand them out again, or a lost step's late retry (old incarnation, same sequence)
// would be answered with a newcomer's outcome.
TEST(ExactlyOnceTableTest, ARestoredTableNeverReusesAnIncarnationHandedOutAfterTheCheckpoint) {
  const absl::Time written = absl::FromUnixSeconds(1'700'000'000);
  ExactlyOnceTable before;
  before.SkipIncarnationsTo(ExactlyOnceTable::IncarnationFloor(written));  // itself restored then
  const ExactlyOnceTable::State checkpoint = before.Export();
  const int64_t lost = before.Join("w");  // after the checkpoint: lost with the process
  before.Record("w", lost, 1, At(1));

  ExactlyOnceTable after = ExactlyOnceTable::Import(checkpoint);
  after.SkipIncarnationsTo(ExactlyOnceTable::IncarnationFloor(written + absl::Seconds(2)));
  const int64_t fresh = after.Join("w");
  EXPECT_GT(fresh, lost);
  // The lost incarnation's retry is not mistaken for the newcomer's step.
  EXPECT_THAT(after.Find("w", lost, 1), AsksToRejoin());
}

TEST(ExactlyOnceTableTest, SkippingIncarnationsNeverGoesBack) {
  ExactlyOnceTable table;
  table.SkipIncarnationsTo(100);
  table.SkipIncarnationsTo(5);
  EXPECT_EQ(table.Join("w"), 101);
}

}  // namespace
}  // namespace optd
