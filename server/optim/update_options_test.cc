// Optimizer::UpdateOptions: hyperparameters change for the next step and the state is kept, as
// changing a torch param_group does; changes that would need state without history are refused.

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/optim/optimizer.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<Optimizer> Make(const OptimizerOptions& options, int64_t n = 3) {
  auto o = CreateOptimizer(options, {n});
  EXPECT_TRUE(o.ok()) << o.status();
  return *std::move(o);
}

void StepOnce(Optimizer& o, std::vector<float>& p, const std::vector<float>& g, double lr) {
  std::vector<TensorGrad> t = {{absl::MakeSpan(p), g}};
  ASSERT_TRUE(o.Step(t, lr).ok());
}

TEST(UpdateOptionsTest, AdamBetaChangeKeepsMomentsAndStepCount) {
  // Two Adams take the same first step; one then changes beta2. Its second step must equal a
  // hand computation that uses the old moments, the new beta2 and step count 2.
  AdamOptions a;
  a.lr = 0.1;
  auto changed = Make(a, 1);
  std::vector<float> p = {1.0f};
  StepOnce(*changed, p, {0.5f}, 0.1);
  AdamOptions b = a;
  b.beta2 = 0.9;
  ASSERT_TRUE(changed->UpdateOptions(b).ok());
  EXPECT_DOUBLE_EQ(std::get<AdamOptions>(changed->options()).beta2, 0.9);
  StepOnce(*changed, p, {0.5f}, 0.1);
  // m1 = 0.05, v1 = 0.001 * 0.25; step 2: m2 = 0.9 m1 + 0.1 * 0.5, v2 = 0.9 v1 + 0.1 * 0.25.
  const double m2 = 0.9 * 0.05 + 0.1 * 0.5, v2 = 0.9 * 0.00025 + 0.1 * 0.25;
  const double p1 = 1.0 - 0.1 * (0.05 / 0.1) / (std::sqrt(0.00025) / std::sqrt(0.001) + 1e-8);
  const double p2 = p1 - (0.1 / (1 - 0.81)) * m2 / (std::sqrt(v2) / std::sqrt(1 - 0.81) + 1e-8);
  EXPECT_NEAR(p[0], p2, 1e-6);
}

TEST(UpdateOptionsTest, SgdMomentumCanBeTurnedOnLikeTorch) {
  // torch creates the momentum buffer at the first step that has momentum: clone of the gradient.
  SgdOptions s;
  s.lr = 1;
  auto o = Make(s, 1);
  std::vector<float> p = {0.0f};
  StepOnce(*o, p, {1.0f}, 1.0);
  s.momentum = 0.5;
  ASSERT_TRUE(o->UpdateOptions(s).ok());
  StepOnce(*o, p, {1.0f}, 1.0);  // buf = 1 -> p = -2
  StepOnce(*o, p, {1.0f}, 1.0);  // buf = 0.5 + 1 -> p = -3.5
  EXPECT_FLOAT_EQ(p[0], -3.5f);
}

TEST(UpdateOptionsTest, RefusesAnotherKindInvalidValuesAndStructuralChanges) {
  AdamOptions a;
  auto o = Make(a);
  absl::Status kind = o->UpdateOptions(SgdOptions{});
  EXPECT_EQ(kind.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(kind.message(), HasSubstr("kind cannot change"));
  AdamOptions bad = a;
  bad.beta1 = 1.0;
  EXPECT_THAT(o->UpdateOptions(bad).message(), HasSubstr("adam.beta1 = 1"));
  AdamOptions ams = a;
  ams.amsgrad = true;
  EXPECT_THAT(o->UpdateOptions(ams).message(), HasSubstr("adam.amsgrad cannot change"));
  EXPECT_DOUBLE_EQ(std::get<AdamOptions>(o->options()).beta1, 0.9);  // unchanged
  EXPECT_FALSE(std::get<AdamOptions>(o->options()).amsgrad);

  RmspropOptions r;
  auto rms = Make(r);
  RmspropOptions centered = r;
  centered.centered = true;
  EXPECT_THAT(rms->UpdateOptions(centered).message(), HasSubstr("rmsprop.centered cannot change"));
  RmspropOptions momentum = r;
  momentum.momentum = 0.9;
  EXPECT_THAT(rms->UpdateOptions(momentum).message(), HasSubstr("rmsprop.momentum cannot change"));
  RmspropOptions alpha = r;
  alpha.alpha = 0.9;
  EXPECT_TRUE(rms->UpdateOptions(alpha).ok());
}

TEST(UpdateOptionsTest, EveryOptimizerAcceptsAnLrChange) {
  const std::vector<OptimizerOptions> all = {
      SgdOptions{},     AdamOptions{},    AdamWOptions{},  AdagradOptions{},
      NormalizedGdOptions{}, AdadeltaOptions{}, RmspropOptions{}, NadamOptions{},
      RadamOptions{},   LionOptions{},    LambOptions{},   LarsOptions{}};
  for (OptimizerOptions options : all) {
    auto o = Make(options);
    std::visit([](auto& x) { x.lr = 0.125; }, options);
    ASSERT_TRUE(o->UpdateOptions(options).ok()) << OptimizerName(options);
    EXPECT_DOUBLE_EQ(BaseLearningRate(o->options()), 0.125) << OptimizerName(options);
  }
}

}  // namespace
}  // namespace optd
