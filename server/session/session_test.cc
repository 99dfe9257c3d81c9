#include "server/session/session.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/session/deadline_scheduler.h"

namespace optd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A tensor that owns its bytes and can lend a WireTensorView.
struct OwnedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::string data;
  WireTensorView view() const {
    return {name, shape, WireDType::kF32, TensorBytes::Borrowed(data)};
  }
};

OwnedTensor Make(std::string name, std::vector<int64_t> shape, std::vector<float> values) {
  OwnedTensor t{std::move(name), std::move(shape), {}};
  EncodeFloats(WireDType::kF32, values, &t.data);
  return t;
}

std::vector<float> Floats(const WireTensor& t) {
  std::vector<float> v;
  const std::string bytes = t.data.Flatten(t.dtype);
  EXPECT_TRUE(
      DecodeFloats(t.name, t.dtype, bytes, bytes.size() / BytesPerElement(t.dtype), &v).ok());
  return v;
}

SessionConfig Sgd(double lr) {
  SgdOptions o;
  o.lr = lr;
  return {o};
}

std::shared_ptr<Session> MakeSession(std::vector<OwnedTensor> tensors, SessionConfig config) {
  std::vector<WireTensorView> views;
  for (const OwnedTensor& t : tensors) views.push_back(t.view());
  absl::StatusOr<std::shared_ptr<Session>> s = Session::Create("s1", std::move(config), views);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

absl::StatusOr<StepOutput> StepWith(Session& s, const std::vector<OwnedTensor>& grads) {
  std::vector<WireTensorView> views;
  for (const OwnedTensor& g : grads) views.push_back(g.view());
  StepInput in;
  in.gradients = views;
  return s.StepAndWait(in);
}

absl::Status CreateStatus(std::string id, std::vector<OwnedTensor> tensors,
                          SessionConfig config = Sgd(0.1)) {
  std::vector<WireTensorView> views;
  for (const OwnedTensor& t : tensors) views.push_back(t.view());
  return Session::Create(std::move(id), std::move(config), views).status();
}

TEST(SessionTest, CreateDescribesTensorsAndStartsAtVersionZero) {
  auto s = MakeSession({Make("w", {2, 3}, std::vector<float>(6, 1.0f)), Make("b", {}, {0.5f})},
                       Sgd(0.1));
  SessionInfo info = s->Info();
  EXPECT_EQ(info.id, "s1");
  EXPECT_EQ(info.version, 0);
  EXPECT_EQ(info.num_parameters, 7);
  EXPECT_EQ(info.parameter_bytes, 28);
  ASSERT_EQ(info.tensors.size(), 2u);
  EXPECT_EQ(info.tensors[0].name, "w");
  EXPECT_THAT(info.tensors[0].shape, ElementsAre(2, 3));
  EXPECT_EQ(info.tensors[1].num_elements, 1);
}

TEST(SessionTest, StepAppliesTheOptimizerAndReturnsNewParameters) {
  auto s = MakeSession({Make("w", {2}, {1.0f, 2.0f}), Make("b", {1}, {0.0f})}, Sgd(0.5));
  absl::StatusOr<StepOutput> out =
      StepWith(*s, {Make("b", {1}, {4.0f}), Make("w", {2}, {2.0f, -2.0f})});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->version, 1);
  EXPECT_DOUBLE_EQ(out->gradient_norm, std::sqrt(24.0));  // sqrt(16 + 4 + 4)
  EXPECT_DOUBLE_EQ(out->learning_rate, 0.5);
  ASSERT_EQ(out->parameters.size(), 2u);
  EXPECT_EQ(out->parameters[0].name, "w");  // creation order, not request order
  EXPECT_THAT(Floats(out->parameters[0]), ElementsAre(0.0f, 3.0f));
  EXPECT_THAT(Floats(out->parameters[1]), ElementsAre(-2.0f));
}

// A partial step (torch: some .grad are None): the tensors sent step, the others, and their
// state, stay exactly as they were; a global quantity (the gradient norm, clipping) is over the
// tensors sent; the reply still carries every tensor.
TEST(SessionTest, APartialStepLeavesTheTensorsNotSentAndTheirStateAlone) {
  SgdOptions sgd;
  sgd.lr = 0.5;
  sgd.momentum = 0.9;
  sgd.weight_decay = 0.1;
  SessionConfig config{sgd};
  config.clipping.max_norm = 1.0;
  auto s = MakeSession({Make("w", {2}, {1.0f, 2.0f}), Make("b", {1}, {3.0f})}, config);
  ASSERT_TRUE(StepWith(*s, {Make("w", {2}, {0.0f, 0.0f}), Make("b", {1}, {1.0f})}).ok());
  auto pull = [&s] { return s->Pull({}, WireDType::kF32, {}, true).value(); };
  const PullOutput before = pull();
  const std::vector<float> b_after_one = Floats(before.tensors[1]);
  const OptimizerState& state_before = *before.optimizer_state;
  absl::StatusOr<StepOutput> out = StepWith(*s, {Make("w", {2}, {3.0f, 4.0f})});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->version, 2);
  EXPECT_DOUBLE_EQ(out->gradient_norm, 5.0);  // of w alone (then clipped to 1)
  ASSERT_EQ(out->parameters.size(), 2u);
  EXPECT_EQ(Floats(out->parameters[1]), b_after_one);  // no weight decay, no momentum
  const PullOutput after = pull();
  const OptimizerState& state_after = *after.optimizer_state;
  EXPECT_EQ(state_after.tensors[1].arrays[0].values, state_before.tensors[1].arrays[0].values);
  EXPECT_NE(state_after.tensors[0].arrays[0].values, state_before.tensors[0].arrays[0].values);
}

TEST(SessionTest, SyncSessionsRefusePartialSteps) {
  SessionConfig config = Sgd(1);
  config.consistency.mode = ConsistencyOptions::Mode::kSync;
  config.consistency.workers = 2;
  DeadlineScheduler scheduler;
  SessionEnv env;
  env.scheduler = &scheduler;
  const OwnedTensor w0 = Make("w", {2}, {1.0f, 2.0f}), b0 = Make("b", {1}, {3.0f});
  std::vector<WireTensorView> init = {w0.view(), b0.view()};
  absl::StatusOr<std::shared_ptr<Session>> created = Session::Create("s1", config, init, env);
  ASSERT_TRUE(created.ok()) << created.status();
  std::shared_ptr<Session> s = *created;
  const OwnedTensor w = Make("w", {2}, {1.0f, 1.0f});
  std::vector<WireTensorView> views = {w.view()};
  StepInput in;
  in.gradients = views;
  in.worker_id = "a";
  in.version = 0;
  absl::StatusOr<StepOutput> out = s->StepAndWait(in);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("no entry for tensor \"b\"; a SYNC step"));
  EXPECT_EQ(s->Info().version, 0);
}

// Records the parameter copies each applied step reports.
class CopyRecorder : public SessionObserver {
 public:
  void OnStep(const StepEvent& event) override { copied.push_back(event.parameter_bytes_copied); }
  std::vector<int64_t> copied;
};

TEST(SessionTest, F32RepliesShareTheParametersAndLaterStepsNeverChangeThem) {
  CopyRecorder recorder;
  const OwnedTensor w = Make("w", {2}, {1.0f, 2.0f});
  const std::vector<WireTensorView> init = {w.view()};
  absl::StatusOr<std::shared_ptr<Session>> created =
      Session::Create("cow", Sgd(1), init, {Clock::Real(), &recorder});
  ASSERT_TRUE(created.ok()) << created.status();
  std::shared_ptr<Session> s = *created;
  std::vector<OwnedTensor> g = {Make("w", {2}, {0.5f, 0.5f})};
  std::vector<WireTensorView> views = {g[0].view()};
  StepInput in;
  in.gradients = views;
  absl::StatusOr<StepOutput> first = s->StepAndWait(in);
  ASSERT_TRUE(first.ok());
  ASSERT_EQ(first->parameters[0].data.kind(), TensorBytes::Kind::kShared);  // no copy
  EXPECT_THAT(Floats(first->parameters[0]), ElementsAre(0.5f, 1.5f));
  // The next step writes a copy: the values the first reply holds stay those of version 1.
  absl::StatusOr<StepOutput> second = s->StepAndWait(in);
  ASSERT_TRUE(second.ok());
  EXPECT_THAT(Floats(first->parameters[0]), ElementsAre(0.5f, 1.5f));
  EXPECT_THAT(Floats(second->parameters[0]), ElementsAre(0.0f, 1.0f));
  EXPECT_NE(first->parameters[0].data.shared().get(), second->parameters[0].data.shared().get());
  // Once no reply holds them, steps write the parameters where they are: no copy per step.
  const std::vector<float>* buffer = second->parameters[0].data.shared().get();
  first->parameters.clear();
  second->parameters.clear();
  absl::StatusOr<StepOutput> third = s->StepAndWait(in);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(third->parameters[0].data.shared().get(), buffer);
  EXPECT_THAT(Floats(third->parameters[0]), ElementsAre(-0.5f, 0.5f));
  // Only the second step copied (the first reply still held the buffer), and it says so.
  EXPECT_THAT(recorder.copied, ElementsAre(0, 8, 0));
}

TEST(SessionTest, StepCanReturnNothingOrOtherDTypes) {
  auto s = MakeSession({Make("w", {2}, {1.0f, 2.0f})}, Sgd(1));
  std::vector<OwnedTensor> g = {Make("w", {2}, {0.5f, 0.5f})};
  std::vector<WireTensorView> views = {g[0].view()};
  StepInput in;
  in.gradients = views;
  in.return_mode = ReturnMode::kNone;
  absl::StatusOr<StepOutput> out = s->StepAndWait(in);
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE(out->parameters.empty());
  in.return_mode = ReturnMode::kAll;
  in.return_dtype = WireDType::kBf16;
  out = s->StepAndWait(in);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->parameters[0].data.size(out->parameters[0].dtype), 4);
  EXPECT_THAT(Floats(out->parameters[0]), ElementsAre(0.0f, 1.0f));
}

TEST(SessionTest, GradientsInBf16AndF16AreDecoded) {
  auto s = MakeSession({Make("w", {2}, {1.0f, 2.0f})}, Sgd(1));
  OwnedTensor g{"w", {2}, {}};
  EncodeFloats(WireDType::kF16, {0.5f, -1.0f}, &g.data);
  WireTensorView v = g.view();
  v.dtype = WireDType::kF16;
  StepInput in;
  in.gradients = absl::MakeConstSpan(&v, 1);
  absl::StatusOr<StepOutput> out = s->StepAndWait(in);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT(Floats(out->parameters[0]), ElementsAre(0.5f, 3.0f));
}

struct BadStep {
  const char* what;
  std::vector<OwnedTensor> grads;
  const char* message;
};

TEST(SessionTest, MalformedStepsAreRefusedAndChangeNothing) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<BadStep> cases = {
      {"empty", {}, "gradients is empty"},
      {"unknown",
       {Make("w", {2}, {1, 1}), Make("b", {1}, {1}), Make("x", {1}, {1})},
       "gradients[2].name \"x\" is not a tensor of session s1"},
      {"repeated", {Make("w", {2}, {1, 1}), Make("w", {2}, {1, 1})}, "is repeated"},
      {"shape",
       {Make("w", {1, 2}, {1, 1}), Make("b", {1}, {1})},
       "gradients[0].shape [1, 2] of \"w\" must be [2]"},
      {"nan",
       {Make("w", {2}, {1, nan}), Make("b", {1}, {1})},
       "gradients[0] \"w\" element 1 is nan; every value must be finite"},
      {"inf", {Make("w", {2}, {1, 1}), Make("b", {1}, {-inf})}, "element 0 is -inf"},
  };
  OwnedTensor short_bytes = Make("b", {1}, {1});
  short_bytes.data.resize(3);
  cases.push_back(
      {"bytes", {Make("w", {2}, {1, 1}), short_bytes}, "gradients[1].data has 3 bytes; must be 4"});

  auto s = MakeSession({Make("w", {2}, {1.0f, 2.0f}), Make("b", {1}, {3.0f})}, Sgd(1));
  for (const BadStep& c : cases) {
    absl::StatusOr<StepOutput> out = StepWith(*s, c.grads);
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << c.what;
    EXPECT_THAT(out.status().message(), HasSubstr(c.message)) << c.what;
  }
  absl::StatusOr<PullOutput> pulled = s->Pull({}, WireDType::kF32);
  ASSERT_TRUE(pulled.ok());
  EXPECT_EQ(pulled->version, 0);
  EXPECT_THAT(Floats(pulled->tensors[0]), ElementsAre(1.0f, 2.0f));
  EXPECT_THAT(Floats(pulled->tensors[1]), ElementsAre(3.0f));
}

TEST(SessionTest, PullReturnsNamedTensorsInRequestOrder) {
  auto s = MakeSession({Make("w", {2}, {1, 2}), Make("b", {1}, {3})}, Sgd(1));
  std::vector<absl::string_view> names = {"b", "w"};
  absl::StatusOr<PullOutput> out = s->Pull(names, WireDType::kF32);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->tensors[0].name, "b");
  EXPECT_THAT(Floats(out->tensors[1]), ElementsAre(1.0f, 2.0f));

  names = {"nope"};
  EXPECT_THAT(s->Pull(names, WireDType::kF32).status().message(),
              HasSubstr("names[0] \"nope\" is not a tensor"));
  names = {"w", "w"};
  EXPECT_EQ(s->Pull(names, WireDType::kF32).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SessionTest, CreateValidatesIdTensorsAndOptimizer) {
  auto one = [] { return std::vector<OwnedTensor>{Make("w", {1}, {0})}; };
  EXPECT_THAT(CreateStatus("", one()).message(), HasSubstr("session_id \"\" has length 0"));
  EXPECT_THAT(CreateStatus("a b", one()).message(), HasSubstr("invalid character"));
  EXPECT_THAT(CreateStatus(std::string(129, 'a'), one()).message(),
              HasSubstr("must be 1 to 128 characters"));
  EXPECT_THAT(CreateStatus("s", {}).message(), HasSubstr("tensors has 0 entries"));
  EXPECT_THAT(CreateStatus("s", {Make("", {1}, {0})}).message(),
              HasSubstr("tensors[0].name \"\" has length 0"));
  EXPECT_THAT(CreateStatus("s", {Make("w", {1}, {0}), Make("w", {1}, {0})}).message(),
              HasSubstr("tensors[1].name \"w\" is repeated"));
  EXPECT_THAT(CreateStatus("s", {Make("w", {2, 0}, {})}).message(), HasSubstr("dimension 1 is 0"));
  EXPECT_THAT(CreateStatus("s", {Make("w", std::vector<int64_t>(9, 1), {0})}).message(),
              HasSubstr("has rank 9; must be at most 8"));
  EXPECT_THAT(CreateStatus("s", {Make("w", {int64_t{1} << 40, int64_t{1} << 40}, {0})}).message(),
              HasSubstr("the product at most"));
  EXPECT_THAT(CreateStatus("s", {Make("w", {2}, {0})}).message(),
              HasSubstr("tensors[0].data has 4 bytes; must be 8"));
  EXPECT_THAT(CreateStatus("s", {Make("w", {1}, {std::nanf("")})}).message(),
              HasSubstr("tensors[0] \"w\" element 0 is nan"));
  EXPECT_THAT(CreateStatus("s", one(), Sgd(-1)).message(), HasSubstr("sgd.lr = -1"));
  for (const absl::Status& s :
       {CreateStatus("", one()), CreateStatus("s", {}), CreateStatus("s", one(), Sgd(-1))}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(SessionTest, ConcurrentStepsAreAtomicAndExact) {
  // lr a power of two and small-integer gradients: every float sum is exact, so the result does
  // not depend on the order the threads win the lock.
  constexpr int kThreads = 8;
  constexpr int kSteps = 200;
  auto s = MakeSession({Make("w", {3}, {0, 0, 0}), Make("b", {1}, {0})}, Sgd(0.25));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kSteps; ++i) {
        const float g = static_cast<float>(t + 1);
        ASSERT_TRUE(StepWith(*s, {Make("w", {3}, {g, -g, 2 * g}), Make("b", {1}, {1})}).ok());
        if (i % 50 == 0) {
          ASSERT_TRUE(s->Pull({}, WireDType::kF32).ok());
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const float sum = kSteps * (kThreads * (kThreads + 1) / 2);  // sum over t of (t+1), per step
  absl::StatusOr<PullOutput> out = s->Pull({}, WireDType::kF32);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->version, kThreads * kSteps);
  EXPECT_THAT(Floats(out->tensors[0]), ElementsAre(-0.25f * sum, 0.25f * sum, -0.5f * sum));
  EXPECT_THAT(Floats(out->tensors[1]), ElementsAre(-0.25f * kThreads * kSteps));
}

// Records what the session reports.
class RecordingObserver : public SessionObserver {
 public:
  bool WantsStepNorms(absl::string_view id, int64_t num_parameters) override {
    asked_norms_of.push_back(num_parameters);
    return wants_norms;
  }
  void OnStep(const StepEvent& e) override {
    steps.push_back({std::string(e.session_id), std::string(e.optimizer), e.version,
                     e.gradient_norm, e.learning_rate, e.loss.value_or(-1), e.update_norm,
                     e.parameter_norm});
  }
  void OnRequest(const RequestEvent& e) override {
    bytes_in += e.bytes_received;
    bytes_out += e.bytes_sent;
  }
  void OnRefused(absl::string_view id, RefusalReason reason) override {
    refused.push_back(std::string(RefusalReasonName(reason)));
  }
  struct Step {
    std::string id, optimizer;
    int64_t version;
    double gradient_norm, lr, loss, update_norm, parameter_norm;
  };
  std::vector<Step> steps;
  std::vector<std::string> refused;
  int64_t bytes_in = 0, bytes_out = 0;
  bool wants_norms = true;
  std::vector<int64_t> asked_norms_of;
};

TEST(SessionObserverTest, ReportsAppliedStepsAndRefusalsWithTheirReason) {
  RecordingObserver observer;
  OwnedTensor init = Make("w", {2}, {1, 2});
  std::vector<WireTensorView> views = {init.view()};
  auto s = Session::Create("obs", Sgd(0.5), views, {Clock::Real(), &observer});
  ASSERT_TRUE(s.ok());

  OwnedTensor g = Make("w", {2}, {3, 4});
  std::vector<WireTensorView> grads = {g.view()};
  StepInput in;
  in.gradients = grads;
  in.loss = 0.25;
  ASSERT_TRUE((*s)->StepAndWait(in).ok());
  ASSERT_EQ(observer.steps.size(), 1u);
  EXPECT_EQ(observer.steps[0].id, "obs");
  EXPECT_EQ(observer.steps[0].optimizer, "sgd");
  EXPECT_EQ(observer.steps[0].version, 1);
  EXPECT_DOUBLE_EQ(observer.steps[0].gradient_norm, 5.0);
  EXPECT_DOUBLE_EQ(observer.steps[0].lr, 0.5);
  EXPECT_DOUBLE_EQ(observer.steps[0].loss, 0.25);
  EXPECT_DOUBLE_EQ(observer.steps[0].update_norm, 2.5);     // w moved by -0.5 * (3, 4)
  EXPECT_DOUBLE_EQ(observer.steps[0].parameter_norm, 0.5);  // w = (-0.5, 0)
  EXPECT_EQ(observer.bytes_in, 8);
  EXPECT_EQ(observer.bytes_out, 8);

  OwnedTensor nan = Make("w", {2}, {std::nanf(""), 0});
  grads = {nan.view()};
  in.gradients = grads;
  EXPECT_FALSE((*s)->StepAndWait(in).ok());
  OwnedTensor wrong = Make("v", {2}, {0, 0});
  grads = {wrong.view()};
  in.gradients = grads;
  EXPECT_FALSE((*s)->StepAndWait(in).ok());
  EXPECT_THAT(observer.refused, ElementsAre("non_finite", "invalid"));
  EXPECT_EQ(observer.steps.size(), 1u);
}

TEST(SessionObserverTest, StepsMeasureNormsOnlyWhenTheObserverAsks) {
  RecordingObserver observer;
  OwnedTensor init = Make("w", {4}, std::vector<float>(4, 1.0f));
  std::vector<WireTensorView> views = {init.view()};
  auto s = Session::Create("sampled", Sgd(0.5), views, {Clock::Real(), &observer});
  ASSERT_TRUE(s.ok());
  OwnedTensor g = Make("w", {4}, std::vector<float>(4, 1.0f));
  std::vector<WireTensorView> grads = {g.view()};
  StepInput in;
  in.gradients = grads;
  observer.wants_norms = false;
  ASSERT_TRUE((*s)->StepAndWait(in).ok());
  observer.wants_norms = true;
  ASSERT_TRUE((*s)->StepAndWait(in).ok());
  ASSERT_EQ(observer.steps.size(), 2u);
  EXPECT_EQ(observer.asked_norms_of, (std::vector<int64_t>{4, 4}));
  // Not asked: not measured (-1); the gradient norm is always reported.
  EXPECT_EQ(observer.steps[0].update_norm, -1);
  EXPECT_EQ(observer.steps[0].parameter_norm, -1);
  EXPECT_DOUBLE_EQ(observer.steps[0].gradient_norm, 2.0);
  // Asked: every element moved by 0.5 (from 0.5 to 0).
  EXPECT_DOUBLE_EQ(observer.steps[1].update_norm, 1.0);
  EXPECT_DOUBLE_EQ(observer.steps[1].parameter_norm, 0.0);
}

}  // namespace
}  // namespace optd
