#include "base/fake_clock.h"

#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

TEST(FakeClockTest, StandsStillUntilAdvanced) {
  FakeClock clock;
  const absl::Time start = clock.Now();
  EXPECT_EQ(clock.Now(), start);
  clock.Advance(absl::Seconds(30));
  EXPECT_EQ(clock.Now(), start + absl::Seconds(30));
  clock.SetTime(start);  // never backwards
  EXPECT_EQ(clock.Now(), start + absl::Seconds(30));
}

TEST(FakeClockTest, AWaiterWakesWhenTheClockReachesItsDeadline) {
  FakeClock clock;
  const absl::Time deadline = clock.Now() + absl::Hours(1);
  absl::Mutex mu;
  bool never = false, woke = false, condition_held = true;
  std::thread waiter([&] {
    absl::MutexLock lock(&mu);
    condition_held = clock.AwaitWithDeadline(&mu, absl::Condition(&never), deadline);
    woke = true;
  });
  clock.BlockUntilWaiters(1);
  clock.Advance(absl::Minutes(59));  // not yet
  {
    absl::MutexLock lock(&mu);
    EXPECT_FALSE(woke);
  }
  clock.Advance(absl::Minutes(1));
  waiter.join();
  EXPECT_TRUE(woke);
  EXPECT_FALSE(condition_held);
}

TEST(FakeClockTest, AWaiterWakesWhenItsConditionHolds) {
  FakeClock clock;
  absl::Mutex mu;
  bool ready = false;
  bool result = false;
  std::thread waiter([&] {
    absl::MutexLock lock(&mu);
    result = clock.AwaitWithDeadline(&mu, absl::Condition(&ready), absl::InfiniteFuture());
  });
  clock.BlockUntilWaiters(1);
  {
    absl::MutexLock lock(&mu);
    ready = true;
  }
  waiter.join();
  EXPECT_TRUE(result);
}

TEST(ClockTest, RealClockWaitsUntilItsDeadline) {
  Clock* clock = Clock::Real();
  absl::Mutex mu;
  absl::MutexLock lock(&mu);
  const absl::Time start = clock->Now();
  bool never = false;
  EXPECT_FALSE(
      clock->AwaitWithDeadline(&mu, absl::Condition(&never), start + absl::Milliseconds(20)));
  EXPECT_GE(clock->Now() - start, absl::Milliseconds(20));
}

}  // namespace
}  // namespace optd
