#include "server/session/deadline_scheduler.h"

#include <vector>

#include "absl/synchronization/notification.h"
#include "base/fake_clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

using ::testing::ElementsAre;

TEST(DeadlineSchedulerTest, RunsCallbacksWhenTheClockReachesTheirDeadlinesInOrder) {
  FakeClock clock;
  DeadlineScheduler scheduler(&clock);
  absl::Mutex mu;
  std::vector<int> ran;
  absl::Notification second;
  const absl::Time now = clock.Now();
  scheduler.Schedule(now + absl::Seconds(20), [&] {
    absl::MutexLock lock(&mu);
    ran.push_back(2);
    second.Notify();
  });
  scheduler.Schedule(now + absl::Seconds(10), [&] {
    absl::MutexLock lock(&mu);
    ran.push_back(1);
  });
  clock.Advance(absl::Seconds(9));
  EXPECT_EQ(scheduler.pending(), 2);
  clock.Advance(absl::Seconds(11));
  second.WaitForNotification();
  absl::MutexLock lock(&mu);
  EXPECT_THAT(ran, ElementsAre(1, 2));
  EXPECT_EQ(scheduler.pending(), 0);
}

TEST(DeadlineSchedulerTest, DropsPendingCallbacksWhenDestroyed) {
  FakeClock clock;
  bool ran = false;
  {
    DeadlineScheduler scheduler(&clock);
    scheduler.Schedule(clock.Now() + absl::Hours(1), [&] { ran = true; });
  }
  EXPECT_FALSE(ran);
}

}  // namespace
}  // namespace optd
