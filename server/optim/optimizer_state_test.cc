// Optimizer::ExportState and ImportState: an optimizer rebuilt from another's exported state takes
// exactly the steps the original takes, for every optimizer and every kind of state it keeps; a
// state that does not fit is refused, naming what, and changes nothing.

#include "server/optim/optimizer_state.h"

#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/optim/optimizer.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

using ::testing::HasSubstr;

// Every optimizer, with the options that make it keep every kind of state it can.
std::vector<OptimizerOptions> EveryKindOfState() {
  SgdOptions sgd;
  sgd.lr = 0.1;
  sgd.momentum = 0.9;
  AdamOptions amsgrad;
  amsgrad.amsgrad = true;
  RmspropOptions rmsprop;
  rmsprop.momentum = 0.5;
  rmsprop.centered = true;
  SgdOptions plain;
  plain.lr = 0.1;
  return {sgd,
          plain,
          AdamOptions{},
          amsgrad,
          AdamWOptions{},
          AdagradOptions{},
          NormalizedGdOptions{},
          AdadeltaOptions{},
          RmspropOptions{},
          rmsprop,
          NadamOptions{},
          RadamOptions{},
          LionOptions{},
          LambOptions{},
          LarsOptions{}};
}

constexpr int64_t kA = 300, kB = 7;

struct Model {
  std::vector<float> a = std::vector<float>(kA), b = std::vector<float>(kB);
};

void Steps(Optimizer& o, Model& m, std::mt19937& rng, int n, double lr) {
  std::normal_distribution<float> normal;
  for (int i = 0; i < n; ++i) {
    std::vector<float> ga(kA), gb(kB);
    for (float& x : ga) x = normal(rng);
    for (float& x : gb) x = normal(rng);
    const TensorGrad t[] = {{absl::MakeSpan(m.a), ga}, {absl::MakeSpan(m.b), gb}};
    ASSERT_OK(o.Step(t, lr));
  }
}

TEST(OptimizerStateTest, ARestoredOptimizerContinuesBitForBit) {
  for (const OptimizerOptions& options : EveryKindOfState()) {
    SCOPED_TRACE(OptimizerName(options));
    const double lr = BaseLearningRate(options);
    auto original = CreateOptimizer(options, {kA, kB});
    ASSERT_OK(original);
    Model m;
    std::mt19937 rng(3);
    Steps(**original, m, rng, 3, lr);

    const OptimizerState state = (*original)->ExportState();
    EXPECT_EQ(state.ArrayBytes(), (*original)->StateBytes());
    auto restored = CreateOptimizer(options, {kA, kB});
    ASSERT_OK(restored);
    ASSERT_OK((*restored)->ImportState(state));
    EXPECT_EQ((*restored)->StateBytes(), (*original)->StateBytes());

    Model copy = m;
    std::mt19937 rng_copy = rng;
    Steps(**original, m, rng, 3, lr);
    Steps(**restored, copy, rng_copy, 3, lr);
    EXPECT_EQ(m.a, copy.a);
    EXPECT_EQ(m.b, copy.b);
  }
}

TEST(OptimizerStateTest, NamesTheArraysAsTorchDoes) {
  AdamOptions amsgrad;
  amsgrad.amsgrad = true;
  auto adam = CreateOptimizer(amsgrad, {4});
  std::vector<float> p(4, 1.0f), g(4, 0.5f);
  ASSERT_OK(StepOne(**adam, p, g, 0.1));
  const OptimizerState state = (*adam)->ExportState();
  ASSERT_EQ(state.tensors.size(), 1u);
  EXPECT_EQ(state.tensors[0].step, 1);
  ASSERT_EQ(state.tensors[0].arrays.size(), 3u);
  EXPECT_EQ(state.tensors[0].arrays[0].name, "exp_avg");
  EXPECT_EQ(state.tensors[0].arrays[1].name, "exp_avg_sq");
  EXPECT_EQ(state.tensors[0].arrays[2].name, "max_exp_avg_sq");
}

TEST(OptimizerStateTest, BeforeTheFirstStepTheArraysAreEmpty) {
  auto adam = CreateOptimizer(AdamOptions{}, {4, 2});
  const OptimizerState state = (*adam)->ExportState();
  ASSERT_EQ(state.tensors.size(), 2u);
  for (const OptimizerState::Tensor& t : state.tensors) {
    EXPECT_EQ(t.step, 0);
    for (const OptimizerState::Array& a : t.arrays) EXPECT_TRUE(a.values.empty()) << a.name;
  }
  EXPECT_EQ((*adam)->StateBytes(), 0);
}

// A state taken from Adam after one step on tensors {4}.
OptimizerState AdamState() {
  auto adam = CreateOptimizer(AdamOptions{}, {4});
  std::vector<float> p(4, 1.0f), g(4, 0.5f);
  EXPECT_OK(StepOne(**adam, p, g, 0.1));
  return (*adam)->ExportState();
}

TEST(OptimizerStateTest, RefusesAStateThatDoesNotFitAndChangesNothing) {
  struct Case {
    std::string name;
    std::function<void(OptimizerState&)> spoil;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"tensor count", [](OptimizerState& s) { s.tensors.push_back({}); }, "has 2 tensors"},
      {"array name", [](OptimizerState& s) { s.tensors[0].arrays[1].name = "v"; },
       "array 1 is \"v\"; adam keeps \"exp_avg_sq\""},
      {"missing array", [](OptimizerState& s) { s.tensors[0].arrays.pop_back(); },
       "has 1 arrays; adam with these options keeps 2 (exp_avg, exp_avg_sq)"},
      {"length", [](OptimizerState& s) { s.tensors[0].arrays[0].values.push_back(0); },
       "\"exp_avg\" has 5 values at step 1; must be 4"},
      {"negative step", [](OptimizerState& s) { s.tensors[0].step = -1; },
       "step = -1 is out of range"},
      {"arrays at step 0", [](OptimizerState& s) { s.tensors[0].step = 0; },
       "a tensor that has not stepped has no state"},
      {"no arrays after a step",
       [](OptimizerState& s) {
         for (auto& a : s.tensors[0].arrays) a.values.clear();
       },
       "has 0 values at step 1"},
      {"global scalar",
       [](OptimizerState& s) {
         s.scalars.push_back({"d", 1.0});
       },
       "keeps no model-wide scalars"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    auto adam = CreateOptimizer(AdamOptions{}, {4});
    const OptimizerState before = AdamState();
    ASSERT_OK((*adam)->ImportState(before));
    OptimizerState bad = before;
    c.spoil(bad);
    EXPECT_THAT((*adam)->ImportState(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)));
    const OptimizerState after = (*adam)->ExportState();
    EXPECT_EQ(after.tensors[0].step, before.tensors[0].step);
    EXPECT_EQ(after.tensors[0].arrays[0].values, before.tensors[0].arrays[0].values);
  }
}

TEST(OptimizerStateTest, KeepsPerTensorScalars) {
  auto nadam = CreateOptimizer(NadamOptions{}, {3});
  std::vector<float> p(3, 1.0f), g(3, 0.5f);
  ASSERT_OK(StepOne(**nadam, p, g, 0.1));
  const OptimizerState state = (*nadam)->ExportState();
  ASSERT_EQ(state.tensors[0].scalars.size(), 1u);
  EXPECT_EQ(state.tensors[0].scalars[0].first, "mu_product");
  EXPECT_NE(state.tensors[0].scalars[0].second, 1.0f);
}

}  // namespace
}  // namespace optd
