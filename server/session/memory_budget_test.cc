#include "server/session/memory_budget.h"

#include <atomic>
#include <thread>
#include <vector>

#include "base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

using ::testing::HasSubstr;

TEST(MemoryBudgetTest, ReservesUpToTheLimitAndNamesWhatDidNotFit) {
  MemoryBudget budget(100);
  absl::StatusOr<MemoryReservation> a = budget.Reserve(60, "a");
  ASSERT_OK(a);
  EXPECT_EQ(budget.in_use(), 60);
  EXPECT_THAT(budget.Reserve(41, "session s1"),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("session s1 needs 41 bytes; 60 of the server's memory budget of "
                                 "100 bytes (--max_memory_bytes) are in use")));
  absl::StatusOr<MemoryReservation> b = budget.Reserve(40, "b");
  ASSERT_OK(b);
  EXPECT_EQ(budget.in_use(), 100);
  a->Release();
  EXPECT_EQ(budget.in_use(), 40);
}

TEST(MemoryBudgetTest, AReservationGivesItsBytesBackWhenDestroyedMovedOrSplit) {
  MemoryBudget budget(100);
  {
    absl::StatusOr<MemoryReservation> r = budget.Reserve(70, "r");
    ASSERT_OK(r);
    MemoryReservation moved = *std::move(r);
    EXPECT_EQ(budget.in_use(), 70);
    MemoryReservation part = moved.Split(30);
    EXPECT_EQ(part.bytes(), 30);
    EXPECT_EQ(moved.bytes(), 40);
    part = MemoryReservation();  // released by the assignment
    EXPECT_EQ(budget.in_use(), 40);
  }
  EXPECT_EQ(budget.in_use(), 0);
}

TEST(MemoryBudgetTest, ConcurrentReservationsNeverExceedTheLimit) {
  MemoryBudget budget(1000);
  std::atomic<int> granted{0};
  std::vector<std::thread> threads;
  std::vector<std::vector<MemoryReservation>> held(8);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        absl::StatusOr<MemoryReservation> r = budget.Reserve(7, "x");
        if (r.ok()) {
          ++granted;
          held[t].push_back(*std::move(r));
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(granted.load(), 1000 / 7);
  EXPECT_EQ(budget.in_use(), (1000 / 7) * 7);
}

}  // namespace
}  // namespace optd
