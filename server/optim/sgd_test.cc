#include "server/optim/sgd.h"

#include <variant>
#include <vector>

#include "gtest/gtest.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

SgdOptions Options(double lr) {
  SgdOptions o;
  o.lr = lr;
  return o;
}

TEST(SgdTest, MatchesTorchGoldenWithoutMomentum) {
  Sgd sgd(Options(0.1), {4});
  ExpectGoldenTrajectory(sgd, 0.1,
                         {{{0.99, -1.98, 0.47, 0.0},
                           {0.97, -1.96, 0.45499999999999996, 0.0},
                           {0.94, -1.94, 0.44499999999999995, 0.0}}});
}

TEST(SgdTest, MatchesTorchGoldenWithMomentumDampeningAndWeightDecay) {
  SgdOptions o = Options(0.1);
  o.momentum = 0.9;
  o.dampening = 0.1;
  o.weight_decay = 0.01;
  Sgd sgd(o, {4});
  ExpectGoldenTrajectory(sgd, 0.1,
                         {{{0.989, -1.978, 0.4695, 0.0},
                           {0.9602099, -1.9384198, 0.42812744999999996, 0.0},
                           {0.90643462109, -1.8830530421799998, 0.381506840295, 0.0}}});
}

TEST(SgdTest, MatchesTorchGoldenWithNesterov) {
  SgdOptions o = Options(0.1);
  o.momentum = 0.9;
  o.nesterov = true;
  Sgd sgd(o, {4});
  ExpectGoldenTrajectory(sgd, 0.1,
                         {{{0.981, -1.962, 0.443, 0.0},
                           {0.9349, -1.9078, 0.3902, 0.0},
                           {0.8544099999999999, -1.8390199999999999, 0.33718, 0.0}}});
}

// Not in the reference goldens: torch 1.13 float32, SGD(lr=0.1, momentum=0.9,
// weight_decay=0.01, nesterov=True, maximize=True) on the golden sequence.
TEST(SgdTest, MatchesTorchWithNesterovWeightDecayAndMaximize) {
  SgdOptions o = Options(0.1);
  o.momentum = 0.9;
  o.weight_decay = 0.01;
  o.nesterov = true;
  o.maximize = true;
  Sgd sgd(o, {4});
  ExpectGoldenTrajectory(sgd, 0.1,
                         {{{1.0170999765396118, -2.0341999530792236, 0.5560500025749207, 0.0},
                           {1.060457468032837, -2.0829150676727295, 0.6073884963989258, 0.0},
                           {1.137379765510559, -2.144631862640381, 0.658439576625824, 0.0}}});
}

TEST(SgdTest, FirstStepMovesByLrTimesGradient) {
  Sgd sgd(Options(0.5), {2});
  std::vector<float> p = {1.0f, 2.0f};
  ASSERT_OK(StepOne(sgd, p, {0.25f, -1.0f}, 0.5));
  EXPECT_EQ(p, (std::vector<float>{0.875f, 2.5f}));
}

TEST(SgdTest, StepUsesTheLrPassedToStepNotTheBaseLr) {
  Sgd sgd(Options(0.1), {1});
  std::vector<float> p = {1.0f};
  ASSERT_OK(StepOne(sgd, p, {1.0f}, 0.5));
  EXPECT_EQ(p[0], 0.5f);
}

TEST(SgdTest, FirstMomentumStepCopiesTheGradientWithoutDampening) {
  SgdOptions o = Options(1.0);
  o.momentum = 0.9;
  o.dampening = 0.5;
  Sgd sgd(o, {1});
  std::vector<float> p = {0.0f};
  ASSERT_OK(StepOne(sgd, p, {1.0f}, 1.0));
  EXPECT_EQ(p[0], -1.0f);  // buf = g, not (1 - dampening) * g
  ASSERT_OK(StepOne(sgd, p, {1.0f}, 1.0));
  EXPECT_FLOAT_EQ(p[0], -1.0f - (0.9f * 1.0f + 0.5f * 1.0f));  // buf = 0.9 buf + 0.5 g
}

TEST(SgdTest, MomentumKeepsMovingAfterTheGradientBecomesZero) {
  SgdOptions o = Options(1.0);
  o.momentum = 0.5;
  Sgd sgd(o, {1});
  std::vector<float> p = {0.0f};
  ASSERT_OK(StepOne(sgd, p, {1.0f}, 1.0));
  ASSERT_OK(StepOne(sgd, p, {0.0f}, 1.0));
  EXPECT_EQ(p[0], -1.5f);
}

TEST(SgdTest, ZeroGradientWithoutMomentumLeavesParamsUnchanged) {
  Sgd sgd(Options(0.1), {2});
  std::vector<float> p = {1.0f, -3.0f};
  ASSERT_OK(StepOne(sgd, p, {0.0f, 0.0f}, 0.1));
  EXPECT_EQ(p, (std::vector<float>{1.0f, -3.0f}));
}

TEST(SgdTest, NesterovStepsAlongGradientPlusMomentumTimesBuffer) {
  SgdOptions o = Options(1.0);
  o.momentum = 0.5;
  o.nesterov = true;
  Sgd sgd(o, {1});
  std::vector<float> p = {0.0f};
  ASSERT_OK(StepOne(sgd, p, {1.0f}, 1.0));
  EXPECT_EQ(p[0], -1.5f);  // buf = 1; d = 1 + 0.5 * 1
  ASSERT_OK(StepOne(sgd, p, {1.0f}, 1.0));
  EXPECT_EQ(p[0], -3.25f);  // buf = 0.5 + 1; d = 1 + 0.5 * 1.5
}

TEST(SgdTest, WeightDecayAddsDecayTimesParamToTheGradient) {
  SgdOptions o = Options(0.1);
  o.weight_decay = 0.5;
  Sgd sgd(o, {1});
  std::vector<float> p = {2.0f};
  ASSERT_OK(StepOne(sgd, p, {0.0f}, 0.1));
  EXPECT_FLOAT_EQ(p[0], 1.9f);  // d = 0 + 0.5 * 2
}

TEST(SgdTest, MaximizeAscendsTheGradient) {
  SgdOptions o = Options(0.1);
  o.maximize = true;
  Sgd sgd(o, {1});
  std::vector<float> p = {1.0f};
  ASSERT_OK(StepOne(sgd, p, {1.0f}, 0.1));
  EXPECT_FLOAT_EQ(p[0], 1.1f);
}

TEST(SgdTest, MomentumBufferIsAllocatedOnFirstStep) {
  SgdOptions o = Options(0.1);
  o.momentum = 0.9;
  Sgd sgd(o, {3, 5});
  EXPECT_EQ(sgd.StateBytesPerElement(), 4);
  EXPECT_EQ(sgd.StateBytes(), 0);
  std::vector<float> p0(3, 1.0f), g0(3, 1.0f), p1(5, 1.0f), g1(5, 1.0f);
  ASSERT_OK(StepTwo(sgd, p0, g0, p1, g1, 0.1));
  EXPECT_EQ(sgd.StateBytes(), 8 * 4);
}

TEST(SgdTest, HasNoStateWithoutMomentum) {
  Sgd sgd(Options(0.1), {3});
  EXPECT_EQ(sgd.StateBytesPerElement(), 0);
  std::vector<float> p(3, 1.0f);
  ASSERT_OK(StepOne(sgd, p, std::vector<float>(3, 1.0f), 0.1));
  EXPECT_EQ(sgd.StateBytes(), 0);
}

TEST(SgdTest, OptionsReturnsTheOptionsInForce) {
  SgdOptions o = Options(0.25);
  o.momentum = 0.5;
  o.nesterov = true;
  Sgd sgd(o, {1});
  const OptimizerOptions got = sgd.options();
  ASSERT_TRUE(std::holds_alternative<SgdOptions>(got));
  EXPECT_EQ(std::get<SgdOptions>(got).lr, 0.25);
  EXPECT_EQ(std::get<SgdOptions>(got).momentum, 0.5);
  EXPECT_TRUE(std::get<SgdOptions>(got).nesterov);
}

}  // namespace
}  // namespace optd
