#include "server/session/admission.h"

#include <string>

#include "base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

using ::testing::HasSubstr;

ConsistencyOptions Mode(ConsistencyOptions::Mode mode) {
  ConsistencyOptions o;
  o.mode = mode;
  o.max_staleness = 2;
  o.workers = 2;
  return o;
}

TEST(CheckStepRequestTest, TakesAWellFormedRequest) {
  StepInput in;
  in.worker_id = "w-1";
  in.sequence = 3;
  in.loss = 0.5;
  RefusalReason reason;
  EXPECT_OK(CheckStepRequest(Mode(ConsistencyOptions::Mode::kAsync), in, &reason));
}

TEST(CheckStepRequestTest, RefusesMalformedFieldsNamingThem) {
  RefusalReason reason;
  StepInput in;
  in.sequence = 1;
  EXPECT_THAT(CheckStepRequest(Mode(ConsistencyOptions::Mode::kAsync), in, &reason),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("worker_id is required with a sequence number")));
  in = StepInput();
  in.worker_id = std::string(500, '!');
  EXPECT_THAT(CheckStepRequest(Mode(ConsistencyOptions::Mode::kAsync), in, &reason),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("(500 bytes)")));
  in = StepInput();
  in.loss = NAN;
  EXPECT_THAT(CheckStepRequest(Mode(ConsistencyOptions::Mode::kAsync), in, &reason),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("loss = nan")));
  EXPECT_EQ(reason, RefusalReason::kNonFinite);
  in = StepInput();
  in.worker_id = "w";
  EXPECT_THAT(CheckStepRequest(Mode(ConsistencyOptions::Mode::kBounded), in, &reason),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("version is required in a BOUNDED session")));
  in.version = -1;
  EXPECT_THAT(CheckStepRequest(Mode(ConsistencyOptions::Mode::kBounded), in, &reason),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("version = -1")));
}

TEST(CheckStepRequestTest, ASyncSessionWithNamedWorkersRefusesOthers) {
  ConsistencyOptions sync = Mode(ConsistencyOptions::Mode::kSync);
  sync.worker_ids = {"a", "b"};
  StepInput in;
  in.worker_id = "c";
  in.version = 0;
  RefusalReason reason;
  EXPECT_THAT(
      CheckStepRequest(sync, in, &reason),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("worker_id \"c\" is not one of the session's SYNC workers (a, b)")));
}

TEST(AdmitVersionTest, BoundedRefusesGradientsOlderThanItsBound) {
  const ConsistencyOptions bounded = Mode(ConsistencyOptions::Mode::kBounded);
  RefusalReason reason;
  EXPECT_THAT(AdmitVersion(bounded, 8, 10, &reason), IsOkAndHolds(2));
  absl::StatusOr<int64_t> stale = AdmitVersion(bounded, 7, 10, &reason);
  EXPECT_THAT(stale, StatusIs(absl::StatusCode::kAborted, HasSubstr("3 versions old")));
  EXPECT_EQ(CurrentVersionOf(stale.status()), 10);
  EXPECT_EQ(reason, RefusalReason::kStale);
  EXPECT_THAT(AdmitVersion(bounded, 11, 10, &reason),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ahead of the session")));
  EXPECT_THAT(AdmitVersion(bounded, std::nullopt, 10, &reason), IsOkAndHolds(0));
}

TEST(AdmitVersionTest, SyncTakesOnlyTheCurrentVersionAndAsyncAnyPastOne) {
  RefusalReason reason;
  EXPECT_THAT(AdmitVersion(Mode(ConsistencyOptions::Mode::kSync), 4, 4, &reason), IsOkAndHolds(0));
  EXPECT_THAT(AdmitVersion(Mode(ConsistencyOptions::Mode::kSync), 3, 4, &reason),
              StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(AdmitVersion(Mode(ConsistencyOptions::Mode::kAsync), 0, 100, &reason),
              IsOkAndHolds(100));
}

}  // namespace
}  // namespace optd
