#include "server/session/sync_barrier.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "base/thread_pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/optim/model_segments.h"

namespace optd {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

const TensorSpecs& Specs() {
  static const TensorSpecs* specs = new TensorSpecs({{"w", {2, 2}, 4}});
  return *specs;
}

ConsistencyOptions Sync(int workers, std::vector<std::string> ids = {}, int quorum = 0) {
  ConsistencyOptions o;
  o.mode = ConsistencyOptions::Mode::kSync;
  o.workers = workers;
  o.worker_ids = std::move(ids);
  o.quorum = quorum;
  return o;
}

std::vector<Gradient> Dense(std::vector<float> values) {
  std::vector<Gradient> g;
  g.push_back(Gradient::Dense(std::move(values)));
  return g;
}

SyncBarrier::Waiter Waiter(std::string worker, int64_t sequence, int* answered) {
  SyncBarrier::Waiter w;
  w.worker_id = std::move(worker);
  w.sequence = sequence;
  w.bytes_received = 16;
  w.done = [answered](absl::StatusOr<StepOutput>) { ++*answered; };
  return w;
}

TEST(SyncBarrierTest, SumsTheContributionsAndHandsThemOverWithTheirWaiters) {
  SyncBarrier barrier(Sync(2), &Specs());
  int answered = 0;
  const absl::Time t0 = absl::FromUnixSeconds(100);
  EXPECT_TRUE(barrier.Add(Dense({1, 2, 3, 4}), 1.0, Waiter("a", 1, &answered), t0));
  EXPECT_FALSE(barrier.full());
  EXPECT_FALSE(barrier.Add(Dense({3, 2, 1, 0}), 3.0, Waiter("b", 1, &answered), t0));
  EXPECT_TRUE(barrier.full());
  const int64_t id = barrier.id();
  SyncBarrier::Reduced r = barrier.Take(t0 + absl::Seconds(2));
  EXPECT_EQ(r.workers, 2);
  EXPECT_THAT(r.gradients[0].values(), ElementsAre(2, 2, 2, 2));  // the mean
  EXPECT_EQ(r.overflow_tensor, -1);
  EXPECT_EQ(r.loss, 2.0);
  EXPECT_EQ(r.waited, absl::Seconds(2));
  EXPECT_EQ(r.waiters.size(), 2u);
  EXPECT_THAT(r.missing_workers, IsEmpty());
  EXPECT_NE(barrier.id(), id);  // the next barrier
  EXPECT_EQ(barrier.contributions(), 0);
  EXPECT_THAT(barrier.known_workers(), ElementsAre("a", "b"));
}

TEST(SyncBarrierTest, OnlySparseContributionsStaySparseOverTheRowsTouched) {
  SyncBarrier barrier(Sync(2), &Specs());
  int answered = 0;
  std::vector<Gradient> a, b;
  a.push_back(Gradient::Sparse({1}, {1, 1}));
  b.push_back(Gradient::Sparse({0, 1}, {2, 2, 3, 3}));
  barrier.Add(std::move(a), std::nullopt, Waiter("a", 0, &answered), absl::Time());
  barrier.Add(std::move(b), std::nullopt, Waiter("b", 0, &answered), absl::Time());
  SyncBarrier::Reduced r = barrier.Take(absl::Time());
  ASSERT_TRUE(r.gradients[0].sparse());
  EXPECT_THAT(r.gradients[0].rows(), ElementsAre(0, 1));
  EXPECT_THAT(r.gradients[0].values(), ElementsAre(1, 1, 2, 2));  // the mean of a and b
  ASSERT_TRUE(r.touched[0].has_value());
  EXPECT_THAT(*r.touched[0], ElementsAre(0, 1));
  EXPECT_FALSE(r.loss.has_value());
}

TEST(SyncBarrierTest, ARetryOfAPendingContributionWaitsAsADuplicate) {
  SyncBarrier barrier(Sync(2), &Specs());
  int answered = 0;
  barrier.Add(Dense({1, 1, 1, 1}), std::nullopt, Waiter("a", 7, &answered), absl::Time());
  EXPECT_TRUE(barrier.IsPending("a", 0, 7));
  EXPECT_FALSE(barrier.IsPending("a", 0, 8));
  EXPECT_FALSE(barrier.IsPending("a", 0, 0));  // unkeyed: never a retry
  barrier.AttachRetry(Waiter("a", 7, &answered));
  EXPECT_EQ(barrier.contributions(), 1);
  std::vector<SyncBarrier::Waiter> failed = barrier.Fail();
  ASSERT_EQ(failed.size(), 2u);
  EXPECT_FALSE(failed[0].duplicate);
  EXPECT_TRUE(failed[1].duplicate);
}

TEST(SyncBarrierTest, NamesTheMissingWorkersAndKnowsItsQuorum) {
  SyncBarrier barrier(Sync(3, {"a", "b", "c"}, 2), &Specs());
  int answered = 0;
  barrier.Add(Dense({0, 0, 0, 0}), std::nullopt, Waiter("b", 1, &answered), absl::Time());
  EXPECT_FALSE(barrier.quorate());
  EXPECT_THAT(barrier.MissingWorkers(), ElementsAre("a", "c"));
  barrier.Add(Dense({0, 0, 0, 0}), std::nullopt, Waiter("c", 1, &answered), absl::Time());
  EXPECT_TRUE(barrier.quorate());
  EXPECT_TRUE(barrier.HasContributed("c"));
  SyncBarrier::Reduced r = barrier.Take(absl::Time());
  EXPECT_THAT(r.missing_workers, ElementsAre("a"));
}

TEST(SyncBarrierTest, SumsInDoubleSoFiniteGradientsNeverOverflowTheMean) {
  SyncBarrier barrier(Sync(2), &Specs());
  int answered = 0;
  barrier.Add(Dense({2e38f, -2e38f, 1, 3e38f}), std::nullopt, Waiter("a", 1, &answered),
              absl::Time());
  barrier.Add(Dense({2e38f, -2e38f, 1, 3e38f}), std::nullopt, Waiter("b", 1, &answered),
              absl::Time());
  SyncBarrier::Reduced r = barrier.Take(absl::Time());
  EXPECT_EQ(r.overflow_tensor, -1);
  EXPECT_THAT(r.gradients[0].values(), ElementsAre(2e38f, -2e38f, 1, 3e38f));
}

TEST(SyncBarrierTest, ASumBeyondFloat32IsReportedNotHidden) {
  ConsistencyOptions sum = Sync(2);
  sum.reduce = ConsistencyOptions::Reduce::kSum;
  SyncBarrier barrier(sum, &Specs());
  int answered = 0;
  barrier.Add(Dense({3e38f, 0, 0, 0}), std::nullopt, Waiter("a", 1, &answered), absl::Time());
  barrier.Add(Dense({3e38f, 0, 0, 0}), std::nullopt, Waiter("b", 1, &answered), absl::Time());
  EXPECT_EQ(barrier.Take(absl::Time()).overflow_tensor, 0);
}

TEST(SyncBarrierTest, HoldsItsMemoryReservationWhileOpen) {
  MemoryBudget budget(1000);
  SyncBarrier barrier(Sync(2), &Specs());
  std::vector<Gradient> g = Dense({1, 1, 1, 1});
  EXPECT_EQ(SyncBarrier::ContributionBytes(g), 16);
  int answered = 0;
  auto reservation = budget.Reserve(SyncBarrier::ContributionBytes(g), "kept");
  ASSERT_TRUE(reservation.ok());
  barrier.Add(std::move(g), std::nullopt, Waiter("a", 1, &answered), absl::Time(),
              *std::move(reservation));
  EXPECT_EQ(budget.in_use(), 16);
  EXPECT_EQ(barrier.bytes(), 16);
  barrier.Fail();
  EXPECT_EQ(budget.in_use(), 0);
  EXPECT_EQ(barrier.bytes(), 0);
}

// A double sum of float32 values depends on its order once they span more than ~29 bits of
// magnitude: 2^30 + 2^-30 - 2^30 is 0 in that order and 2^-30 in another. The barrier sums in
// worker-id order, so every arrival order gives the bits of that one.
TEST(SyncBarrierTest, TheReductionDoesNotDependOnTheArrivalOrder) {
  const float big = std::ldexp(1.0f, 30);
  const float tiny = std::ldexp(1.0f, -30);
  const std::vector<std::pair<std::string, std::vector<float>>> contributions = {
      {"a", {big, 1, -big, 3}}, {"b", {tiny, 2, tiny, 5}}, {"c", {-big, 4, big, 7}}};
  std::vector<float> first;
  std::vector<int> order = {0, 1, 2};
  int permutations = 0;
  do {
    ConsistencyOptions sum = Sync(3);
    sum.reduce = ConsistencyOptions::Reduce::kSum;
    SyncBarrier barrier(sum, &Specs());
    int answered = 0;
    for (int i : order) {
      barrier.Add(Dense(contributions[i].second), std::nullopt,
                  Waiter(contributions[i].first, 1, &answered), absl::Time());
    }
    const SyncBarrier::Reduced r = barrier.Take(absl::Time());
    const std::vector<float> values(r.gradients[0].values().begin(), r.gradients[0].values().end());
    // Worker-id order a, b, c: (2^30 + 2^-30) rounds to 2^30, then - 2^30 gives 0; and
    // (-2^30 + 2^-30) rounds to -2^30, then + 2^30 gives 0.
    EXPECT_THAT(values, ElementsAre(0.0f, 7.0f, 0.0f, 15.0f));
    if (first.empty()) first = values;
    EXPECT_EQ(values, first);
    ++permutations;
  } while (std::next_permutation(order.begin(), order.end()));
  EXPECT_EQ(permutations, 6);
}

// The same on a pool, for a tensor large enough to be reduced block by block on it.
TEST(SyncBarrierTest, LargeReductionsAreTheSameBitsOnAPool) {
  const int64_t n = ModelSegments::kParallelMinElements + 12345;
  const TensorSpecs specs({{"w", {n}, n}});
  std::vector<std::vector<float>> grads(3, std::vector<float>(static_cast<size_t>(n)));
  for (int64_t i = 0; i < n; ++i) {
    grads[0][i] = std::ldexp(1.0f, 30 - static_cast<int>(i % 7));
    grads[1][i] = std::ldexp(1.0f, -30 + static_cast<int>(i % 5));
    grads[2][i] = -grads[0][i] + static_cast<float>(i % 3);
  }
  std::vector<float> reference;
  for (int threads : {1, 3}) {
    ThreadPoolOptions options;
    options.num_threads = threads;
    ThreadPool pool(options);
    SyncBarrier barrier(Sync(3), &specs);
    int answered = 0;
    for (int i : {2, 0, 1}) {
      barrier.Add(Dense(grads[i]), std::nullopt, Waiter(std::string(1, 'a' + i), 1, &answered),
                  absl::Time());
    }
    const SyncBarrier::Reduced r = barrier.Take(absl::Time(), &pool);
    const std::vector<float> values(r.gradients[0].values().begin(), r.gradients[0].values().end());
    if (reference.empty()) {
      reference = values;
      for (int64_t i = 0; i < n; ++i) {  // a, b, c in order, in double, then the mean
        const double sum = (double{grads[0][i]} + grads[1][i]) + grads[2][i];
        ASSERT_EQ(values[i], static_cast<float>(sum * (1.0 / 3))) << "element " << i;
      }
    }
    EXPECT_EQ(values, reference) << "threads " << threads;
  }
}

}  // namespace
}  // namespace optd
