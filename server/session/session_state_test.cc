// Session::Snapshot and Session::Restore: a session rebuilt from another's snapshot takes exactly
// the steps the original takes, remembers the same applied steps, and a state that does not fit
// is refused naming what.

#include "server/session/session_state.h"

#include <deque>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/session/session.h"

namespace optd {
namespace {

using ::testing::HasSubstr;

class SessionStateTest : public ::testing::Test {
 protected:
  // A session with tensors w [4, 3] and b [3], Adam with a plateau schedule and clipping.
  std::shared_ptr<Session> Make() {
    std::vector<WireTensorView> views = {View("w", {4, 3}, std::vector<float>(12, 0.5f)),
                                         View("b", {3}, {0, 1, 2})};
    SessionConfig config;
    AdamOptions adam;
    adam.lr = 0.01;
    adam.amsgrad = true;
    config.optimizer = adam;
    ReduceOnPlateauScheduleOptions plateau;
    plateau.patience = 1;
    config.schedule = plateau;
    config.clipping.max_norm = 1.5;
    auto s = Session::Create("snap", config, views);
    EXPECT_OK(s);
    return *s;
  }

  WireTensorView View(const char* name, std::vector<int64_t> shape, std::vector<float> values) {
    bytes_.emplace_back();
    EncodeFloats(WireDType::kF32, values, &bytes_.back());
    shapes_.push_back(std::move(shape));
    return {name, shapes_.back(), WireDType::kF32, TensorBytes::Borrowed(bytes_.back())};
  }

  // A random step from worker `worker` with sequence `sequence`.
  StepInput RandomStep(const std::string& worker, int64_t sequence) {
    std::normal_distribution<float> normal;
    std::vector<float> w(12), b(3);
    for (float& x : w) x = normal(rng_);
    for (float& x : b) x = normal(rng_);
    views_.push_back({View("w", {4, 3}, w), View("b", {3}, b)});
    StepInput in;
    in.gradients = views_.back();
    in.worker_id = worker;
    in.sequence = sequence;
    in.loss = 1.0 + normal(rng_) * 0.1;
    return in;
  }

  static std::vector<float> Values(const Session& s) {
    std::vector<float> all;
    absl::StatusOr<PullOutput> pulled = s.Pull({}, WireDType::kF32);
    for (const WireTensor& t : pulled->tensors) {
      all.insert(all.end(), t.data.shared()->begin(), t.data.shared()->end());
    }
    return all;
  }

  std::mt19937 rng_{11};
  std::deque<std::string> bytes_;
  std::deque<std::vector<int64_t>> shapes_;
  std::deque<std::vector<WireTensorView>> views_;
};

TEST_F(SessionStateTest, ARestoredSessionTakesTheSameStepsBitForBit) {
  std::shared_ptr<Session> original = Make();
  for (int i = 1; i <= 5; ++i) ASSERT_OK(original->StepAndWait(RandomStep("w1", i)));
  SessionState state = original->Snapshot();
  EXPECT_EQ(state.version, 5);
  absl::StatusOr<std::shared_ptr<Session>> restored = Session::Restore(state);
  ASSERT_OK(restored);
  EXPECT_EQ(Values(**restored), Values(*original));
  const SessionInfo a = original->Info(), b = (*restored)->Info();
  EXPECT_EQ(b.version, 5);
  EXPECT_EQ(b.learning_rate, a.learning_rate);
  EXPECT_EQ(b.optimizer_state_bytes, a.optimizer_state_bytes);
  EXPECT_EQ(b.create_time, a.create_time);
  for (int i = 6; i <= 10; ++i) {
    const StepInput in = RandomStep("w1", i);
    absl::StatusOr<StepOutput> x = original->StepAndWait(in);
    absl::StatusOr<StepOutput> y = (*restored)->StepAndWait(in);
    ASSERT_OK(x);
    ASSERT_OK(y);
    EXPECT_EQ(x->version, y->version);
    EXPECT_EQ(x->learning_rate, y->learning_rate);
    EXPECT_EQ(x->gradient_norm, y->gradient_norm);
  }
  EXPECT_EQ(Values(**restored), Values(*original));
}

TEST_F(SessionStateTest, ARestoredSessionRemembersAppliedSteps) {
  std::shared_ptr<Session> original = Make();
  const StepInput first = RandomStep("w1", 41);
  ASSERT_OK(original->StepAndWait(first));
  absl::StatusOr<std::shared_ptr<Session>> restored = Session::Restore(original->Snapshot());
  ASSERT_OK(restored);
  absl::StatusOr<StepOutput> retry = (*restored)->StepAndWait(first);
  ASSERT_OK(retry);
  EXPECT_TRUE(retry->duplicate);
  EXPECT_EQ(retry->version, 1);
  EXPECT_EQ((*restored)->Info().version, 1);  // not applied again
}

TEST_F(SessionStateTest, TheSnapshotIsACutAtOneVersion) {
  std::shared_ptr<Session> s = Make();
  ASSERT_OK(s->StepAndWait(RandomStep("w1", 1)));
  const SessionState state = s->Snapshot();
  const std::vector<float> at_snapshot = Values(*s);
  ASSERT_OK(s->StepAndWait(RandomStep("w1", 2)));  // later steps do not reach the snapshot
  std::vector<float> in_state;
  for (const SharedFloats& p : state.parameters)
    in_state.insert(in_state.end(), p->begin(), p->end());
  EXPECT_EQ(in_state, at_snapshot);
  EXPECT_EQ(state.version, 1);
  EXPECT_EQ(state.optimizer.tensors[0].step, 1);
}

// A finite gradient can drive parameters to inf (issue #11): the step reports it, and the session
// still checkpoints and restores exactly, infinities included.
TEST_F(SessionStateTest, AStepThatLeavesParametersInfiniteIsReportedAndStillRestores) {
  SessionConfig config;
  SgdOptions sgd;
  sgd.lr = 10;
  config.optimizer = sgd;
  auto s = Session::Create("inf", config, {View("w", {2}, {0, 1})});
  ASSERT_OK(s);
  StepInput in;
  std::vector<WireTensorView> g = {View("w", {2}, {3e38f, 0})};
  in.gradients = g;
  absl::StatusOr<StepOutput> out = (*s)->StepAndWait(in);
  ASSERT_OK(out);
  EXPECT_EQ(out->non_finite_parameters, 1);
  EXPECT_THAT(out->non_finite_tensors, ::testing::ElementsAre("w"));
  absl::StatusOr<std::shared_ptr<Session>> restored = Session::Restore((*s)->Snapshot());
  ASSERT_OK(restored);
  EXPECT_EQ(Values(**restored), Values(**s));
}

TEST_F(SessionStateTest, RefusesAStateThatDoesNotFit) {
  std::shared_ptr<Session> s = Make();
  ASSERT_OK(s->StepAndWait(RandomStep("w1", 1)));
  struct Case {
    std::string name;
    std::function<void(SessionState&)> spoil;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"id", [](SessionState& st) { st.id = "bad id"; }, "session_id \"bad id\""},
      {"parameter count", [](SessionState& st) { st.parameters.pop_back(); },
       "parameters has 1 tensors; the session has 2"},
      {"parameter length",
       [](SessionState& st) { st.parameters[1] = std::make_shared<std::vector<float>>(2); },
       "have 2 values; its shape [3] has 3"},
      {"optimizer state", [](SessionState& st) { st.optimizer.tensors[0].arrays.pop_back(); },
       "optimizer state of tensor 0 has 2 arrays"},
      {"schedule", [](SessionState& st) { st.schedule.step = -3; }, "step"},
      {"version", [](SessionState& st) { st.version = -1; }, "version = -1"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    SessionState state = s->Snapshot();
    c.spoil(state);
    EXPECT_THAT(Session::Restore(state),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)));
  }
}

// UpdateSession with new options and a state: when the state does not fit, neither the options
// nor the state change.
TEST_F(SessionStateTest, AnImportThatDoesNotFitLeavesTheOptionsAsTheyWere) {
  std::shared_ptr<Session> s = Make();
  ASSERT_OK(s->StepAndWait(RandomStep("w1", 1)));
  const SessionState before = s->Snapshot();
  SessionUpdate update;
  update.optimizer = [](OptimizerOptions* o) {
    std::get<AdamOptions>(*o).lr = 0.5;
    return absl::OkStatus();
  };
  update.optimizer_state = before.optimizer;
  update.optimizer_state->tensors[1].arrays.pop_back();  // b without max_exp_avg_sq
  EXPECT_THAT(s->Update(update), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(std::get<AdamOptions>(s->Info().config.optimizer).lr, 0.01);
  EXPECT_EQ(s->Snapshot().optimizer.tensors[1].arrays.size(), 3u);

  update.optimizer_state = before.optimizer;
  ASSERT_OK(s->Update(update));
  EXPECT_EQ(std::get<AdamOptions>(s->Info().config.optimizer).lr, 0.5);
}

// Options that keep less state give back the memory reserved for the rest: the session then
// accounts for exactly what a session restored from its snapshot does.
TEST_F(SessionStateTest, OptionsThatKeepLessStateGiveTheirReservationBack) {
  MemoryBudget budget(1 << 20);
  SessionEnv env;
  env.budget = &budget;
  std::vector<WireTensorView> views = {View("w", {4, 3}, std::vector<float>(12, 0.5f))};
  SessionConfig config;
  SgdOptions sgd;
  sgd.momentum = 0.9;
  config.optimizer = sgd;
  absl::StatusOr<std::shared_ptr<Session>> s = Session::Create("less", config, views, env);
  ASSERT_OK(s);
  EXPECT_EQ((*s)->Info().memory.reserved_state_bytes, 12 * 4);  // the momentum buffer, to come
  SessionUpdate update;
  update.optimizer = [](OptimizerOptions* o) {
    std::get<SgdOptions>(*o).momentum = 0;
    return absl::OkStatus();
  };
  ASSERT_OK((*s)->Update(update));
  EXPECT_EQ((*s)->Info().memory.reserved_state_bytes, 0);
  EXPECT_EQ(budget.in_use(), 12 * 4);  // the parameters alone
  absl::StatusOr<std::shared_ptr<Session>> restored = Session::Restore((*s)->Snapshot(), env);
  ASSERT_OK(restored);
  EXPECT_EQ((*restored)->Info().memory.total(), (*s)->Info().memory.total());
}

}  // namespace
}  // namespace optd
