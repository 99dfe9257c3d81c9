// Consistency modes and exactly-once steps of a Session: ASYNC staleness, BOUNDED refusals, SYNC
// barriers (completion, deadline with and without quorum, retries, close), and the replay table.

#include <atomic>
#include <cmath>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "base/fake_clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/session/session.h"

namespace optd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A session over w = [0, 0] with SGD(lr) and the given consistency, plus helpers to step it.
class ConsistencyTest : public ::testing::Test {
 protected:
  std::shared_ptr<Session> Make(ConsistencyOptions consistency, double lr = 0.5) {
    std::string data;
    EncodeFloats(WireDType::kF32, {0.0f, 0.0f}, &data);
    shape_ = {2};
    WireTensorView view{"w", shape_, WireDType::kF32, TensorBytes::Borrowed(data)};
    SgdOptions sgd;
    sgd.lr = lr;
    SessionConfig config;
    config.optimizer = sgd;
    config.consistency = std::move(consistency);
    auto s = Session::Create("c", config, absl::MakeConstSpan(&view, 1),
                             {&clock_, nullptr, &scheduler_});
    EXPECT_TRUE(s.ok()) << s.status();
    return *s;
  }

  // A request with gradient (g, -g), borrowing storage from this fixture.
  StepInput Input(float g, std::string worker = "", int64_t sequence = 0,
                  std::optional<int64_t> version = std::nullopt) {
    grads_.emplace_back();
    EncodeFloats(WireDType::kF32, {g, -g}, &grads_.back());
    views_.push_back(std::make_unique<WireTensorView>(
        WireTensorView{"w", shape_, WireDType::kF32, TensorBytes::Borrowed(grads_.back())}));
    StepInput in;
    in.gradients = absl::MakeConstSpan(views_.back().get(), 1);
    in.worker_id = std::move(worker);
    in.sequence = sequence;
    in.version = version;
    return in;
  }

  static std::vector<float> W(const StepOutput& out) {
    std::vector<float> w;
    const std::string bytes = out.parameters[0].data.Flatten(out.parameters[0].dtype);
    EXPECT_TRUE(DecodeFloats("w", out.parameters[0].dtype, bytes, 2, &w).ok());
    return w;
  }

  // Submits without waiting; the result lands in *result when the step is answered.
  struct Pending {
    absl::Notification done;
    absl::StatusOr<StepOutput> result;
  };
  std::unique_ptr<Pending> Submit(Session& s, const StepInput& in) {
    auto p = std::make_unique<Pending>();
    Pending* raw = p.get();
    s.Step(in, [raw](absl::StatusOr<StepOutput> r) {
      raw->result = std::move(r);
      raw->done.Notify();
    });
    return p;
  }

  FakeClock clock_;
  DeadlineScheduler scheduler_{&clock_};
  std::vector<int64_t> shape_;
  std::deque<std::string> grads_;
  std::vector<std::unique_ptr<WireTensorView>> views_;
};

ConsistencyOptions Sync(int workers, std::vector<std::string> ids = {}, int quorum = 0,
                        absl::Duration timeout = absl::Seconds(30)) {
  ConsistencyOptions c;
  c.mode = ConsistencyOptions::Mode::kSync;
  c.workers = workers;
  c.worker_ids = std::move(ids);
  c.quorum = quorum;
  c.barrier_timeout = timeout;
  return c;
}

TEST_F(ConsistencyTest, AsyncMeasuresStalenessAndRefusesFutureVersions) {
  auto s = Make({});
  ASSERT_TRUE(s->StepAndWait(Input(1)).ok());
  ASSERT_TRUE(s->StepAndWait(Input(1)).ok());
  auto out = s->StepAndWait(Input(1, "", 0, 0));
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->staleness, 2);
  EXPECT_EQ(out->version, 3);
  auto ahead = s->StepAndWait(Input(1, "", 0, 9));
  EXPECT_EQ(ahead.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ahead.status().message(), HasSubstr("version = 9 is ahead of the session"));
}

TEST_F(ConsistencyTest, BoundedAppliesSOldAndRefusesSPlusOneOldWithTheCurrentVersion) {
  ConsistencyOptions bounded;
  bounded.mode = ConsistencyOptions::Mode::kBounded;
  bounded.max_staleness = 2;
  auto s = Make(bounded);
  for (int v = 0; v < 3; ++v) ASSERT_TRUE(s->StepAndWait(Input(1, "", 0, v)).ok());
  // Now at version 3: a gradient from version 1 is 2 old (applied), from version 0 is 3 old.
  auto ok = s->StepAndWait(Input(1, "", 0, 1));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->staleness, 2);
  auto stale = s->StepAndWait(Input(1, "", 0, 1));  // now 3 old: version is 4
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kAborted);
  EXPECT_THAT(stale.status().message(), HasSubstr("3 versions old"));
  EXPECT_EQ(CurrentVersionOf(stale.status()), 4);
  EXPECT_EQ(s->Info().version, 4);  // nothing applied

  auto missing = s->StepAndWait(Input(1));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(missing.status().message(), HasSubstr("version is required in a BOUNDED session"));
}

TEST_F(ConsistencyTest, RetriedSequenceIsAppliedOnceAndAnsweredWithTheFirstOutcome) {
  auto s = Make({}, 1.0);
  auto first = s->StepAndWait(Input(1, "w1", 1));
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->duplicate);
  auto retry = s->StepAndWait(Input(1, "w1", 1));
  ASSERT_TRUE(retry.ok());
  EXPECT_TRUE(retry->duplicate);
  EXPECT_EQ(retry->version, 1);
  EXPECT_THAT(W(*retry), ElementsAre(-1.0f, 1.0f));  // applied once
  ASSERT_TRUE(s->StepAndWait(Input(1, "w1", 2)).ok());
  ASSERT_TRUE(s->StepAndWait(Input(1, "w2", 1)).ok());  // sequences are per worker
  auto old_retry = s->StepAndWait(Input(1, "w1", 1));
  ASSERT_TRUE(old_retry.ok());
  EXPECT_TRUE(old_retry->duplicate);
  EXPECT_EQ(old_retry->version, 1);
  EXPECT_EQ(old_retry->parameters_version, 3);  // the parameters are today's
  EXPECT_EQ(s->Info().version, 3);
}

TEST_F(ConsistencyTest, ForgottenOrReusedSequencesAreRefused) {
  auto s = Make({});
  for (int q = 1; q <= ExactlyOnceOptions().replay_window + 2; ++q)
    ASSERT_TRUE(s->StepAndWait(Input(1, "w", q)).ok());
  auto forgotten = s->StepAndWait(Input(1, "w", 1));  // beyond the replay window
  EXPECT_EQ(forgotten.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(forgotten.status().message(), HasSubstr("sequence = 1 of worker w"));
  auto no_worker = s->StepAndWait(Input(1, "", 5));
  EXPECT_EQ(no_worker.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_worker.status().message(), HasSubstr("worker_id is required"));
  auto bad_worker = s->StepAndWait(Input(1, "a b", 5));
  EXPECT_THAT(bad_worker.status().message(), HasSubstr("is not a valid worker id"));
  EXPECT_EQ(s->Info().version, ExactlyOnceOptions().replay_window + 2);
}

TEST_F(ConsistencyTest, SyncBarrierStepsOnceWithTheMeanAndAnswersEveryWorker) {
  auto s = Make(Sync(3), 1.0);
  auto a = Submit(*s, Input(1, "a", 1, 0));
  auto b = Submit(*s, Input(2, "b", 1, 0));
  EXPECT_FALSE(a->done.HasBeenNotified());  // waiting, without blocking this thread
  EXPECT_FALSE(b->done.HasBeenNotified());
  auto c = Submit(*s, Input(6, "c", 1, 0));
  for (auto* p : {a.get(), b.get(), c.get()}) {
    ASSERT_TRUE(p->done.HasBeenNotified());
    ASSERT_TRUE(p->result.ok()) << p->result.status();
    EXPECT_EQ(p->result->version, 1);
    EXPECT_EQ(p->result->workers, 3);
    EXPECT_THAT(W(*p->result), ElementsAre(-3.0f, 3.0f));  // lr 1 * mean(1, 2, 6)
  }
}

TEST_F(ConsistencyTest, SyncSumReduce) {
  ConsistencyOptions sync = Sync(2);
  sync.reduce = ConsistencyOptions::Reduce::kSum;
  auto s = Make(sync, 1.0);
  auto a = Submit(*s, Input(1, "a", 0, 0));
  auto b = Submit(*s, Input(2, "b", 0, 0));
  ASSERT_TRUE(b->result.ok());
  EXPECT_THAT(W(*b->result), ElementsAre(-3.0f, 3.0f));
}

TEST_F(ConsistencyTest, SyncRefusesStaleVersionsRepeatsAndStrangers) {
  auto s = Make(Sync(2, {"a", "b"}), 1.0);
  auto a = Submit(*s, Input(1, "a", 1, 0));
  auto again = s->StepAndWait(Input(1, "a", 2, 0));
  EXPECT_EQ(again.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(again.status().message(), HasSubstr("already sent a gradient for version 0"));
  auto stranger = s->StepAndWait(Input(1, "z", 1, 0));
  EXPECT_THAT(stranger.status().message(),
              HasSubstr("not one of the session's SYNC workers (a, b)"));
  auto b = Submit(*s, Input(1, "b", 1, 0));
  ASSERT_TRUE(a->result.ok());
  auto stale = s->StepAndWait(Input(1, "a", 3, 0));
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kAborted);
  EXPECT_THAT(stale.status().message(), HasSubstr("cannot join the SYNC barrier of version 1"));
  EXPECT_EQ(CurrentVersionOf(stale.status()), 1);
}

TEST_F(ConsistencyTest, SyncRetryWhileWaitingGetsTheSameOutcome) {
  auto s = Make(Sync(2), 1.0);
  auto a = Submit(*s, Input(1, "a", 7, 0));
  auto a_retry = Submit(*s, Input(1, "a", 7, 0));  // e.g. the client timed out and retried
  EXPECT_FALSE(a_retry->done.HasBeenNotified());
  auto b = Submit(*s, Input(3, "b", 1, 0));
  ASSERT_TRUE(a_retry->result.ok());
  EXPECT_TRUE(a_retry->result->duplicate);
  EXPECT_EQ(a_retry->result->version, 1);
  EXPECT_THAT(W(*a->result), ElementsAre(-2.0f, 2.0f));  // (1 + 3) / 2: a counted once
}

TEST_F(ConsistencyTest, SyncDeadlineProceedsWithAQuorumAndNamesTheMissing) {
  auto s = Make(Sync(3, {"a", "b", "c"}, /*quorum=*/2, absl::Seconds(30)), 1.0);
  auto a = Submit(*s, Input(2, "a", 1, 0));
  auto b = Submit(*s, Input(4, "b", 1, 0));
  clock_.Advance(absl::Seconds(29));
  EXPECT_FALSE(a->done.HasBeenNotified());
  clock_.Advance(absl::Seconds(1));  // the deadline: the scheduler completes the barrier
  ASSERT_TRUE(a->done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(b->done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(a->result.ok()) << a->result.status();
  EXPECT_EQ(a->result->version, 1);
  EXPECT_EQ(a->result->workers, 2);
  EXPECT_THAT(a->result->missing_workers, ElementsAre("c"));
  EXPECT_THAT(W(*a->result), ElementsAre(-3.0f, 3.0f));  // mean of the two present
}

TEST_F(ConsistencyTest, SyncDeadlineWithoutQuorumFailsTheWaitersAndAppliesNothing) {
  auto s = Make(Sync(3, {}, 0, absl::Seconds(30)), 1.0);
  // A first full barrier teaches the session its workers' ids.
  auto a0 = Submit(*s, Input(1, "a", 0, 0));
  auto b0 = Submit(*s, Input(1, "b", 0, 0));
  auto c0 = Submit(*s, Input(1, "c", 0, 0));
  ASSERT_TRUE(c0->result.ok());
  auto a = Submit(*s, Input(1, "a", 0, 1));
  auto b = Submit(*s, Input(1, "b", 0, 1));
  clock_.Advance(absl::Seconds(30));
  ASSERT_TRUE(a->done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(b->done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(a->result.status().code(), absl::StatusCode::kAborted);
  EXPECT_THAT(a->result.status().message(), HasSubstr("with 2 of 3 gradients (from a, b)"));
  EXPECT_THAT(a->result.status().message(), HasSubstr("missing: c"));
  EXPECT_EQ(b->result.status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(s->Info().version, 1);
  // The next barrier starts clean.
  auto a2 = Submit(*s, Input(1, "a", 0, 1));
  auto b2 = Submit(*s, Input(1, "b", 0, 1));
  auto c2 = Submit(*s, Input(1, "c", 0, 1));
  ASSERT_TRUE(c2->result.ok());
  EXPECT_EQ(c2->result->version, 2);
}

TEST_F(ConsistencyTest, ClosingFailsWaitersAndLaterSteps) {
  auto s = Make(Sync(2));
  auto a = Submit(*s, Input(1, "a", 0, 0));
  s->Close(absl::UnavailableError("session c was deleted"));
  ASSERT_TRUE(a->done.HasBeenNotified());
  EXPECT_EQ(a->result.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s->StepAndWait(Input(1, "b", 0, 0)).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ConsistencyTest, SyncUnderConcurrencyEveryWorkerSeesEveryVersion) {
  constexpr int kWorkers = 4, kSteps = 50;
  auto s = Make(Sync(kWorkers), 0.25);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kWorkers; ++t) {
    threads.emplace_back([&, t] {
      int64_t version = 0;
      for (int i = 1; i <= kSteps; ++i) {
        std::string data;
        EncodeFloats(WireDType::kF32, {static_cast<float>(t + 1), 0.0f}, &data);
        WireTensorView view{"w", shape_, WireDType::kF32, TensorBytes::Borrowed(data)};
        StepInput in;
        in.gradients = absl::MakeConstSpan(&view, 1);
        in.worker_id = "w" + std::to_string(t);
        in.sequence = i;
        in.version = version;
        in.return_mode = ReturnMode::kNone;
        auto out = s->StepAndWait(in);
        if (!out.ok() || out->version != version + 1) ++failures;
        if (out.ok()) version = out->version;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(s->Info().version, kSteps);
}

TEST_F(ConsistencyTest, NonFiniteLossIsRefusedAndNothingApplied) {
  auto s = Make({});
  StepInput in = Input(1);
  in.loss = std::nan("");
  auto out = s->StepAndWait(in);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("loss = nan is out of range: must be finite"));
  in.loss = 0.5;
  ASSERT_TRUE(s->StepAndWait(in).ok());
  EXPECT_EQ(s->Info().version, 1);
}

TEST(ConsistencyOptionsTest, ValidateNamesTheFieldAndRange) {
  ConsistencyOptions c = Sync(0);
  EXPECT_THAT(c.Validate().message(), HasSubstr("consistency.workers = 0 is out of range"));
  c = Sync(2, {"a"});
  EXPECT_THAT(c.Validate().message(), HasSubstr("worker_ids has 1 ids"));
  c = Sync(2, {"a", "a"});
  EXPECT_THAT(c.Validate().message(), HasSubstr("is repeated"));
  c = Sync(2, {}, 3);
  EXPECT_THAT(c.Validate().message(), HasSubstr("consistency.quorum = 3 is out of range"));
  c = Sync(2, {}, 0, absl::ZeroDuration());
  EXPECT_THAT(c.Validate().message(), HasSubstr("barrier_timeout_seconds = 0"));
  ConsistencyOptions bounded;
  bounded.mode = ConsistencyOptions::Mode::kBounded;
  bounded.max_staleness = -1;
  EXPECT_THAT(bounded.Validate().message(), HasSubstr("max_staleness = -1"));
  EXPECT_TRUE(Sync(3, {}, 2).Validate().ok());
}

}  // namespace
}  // namespace optd
