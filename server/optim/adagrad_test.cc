#include "server/optim/adagrad.h"

#include <cmath>
#include <variant>
#include <vector>

#include "gtest/gtest.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

AdagradOptions Options(double lr) {
  AdagradOptions o;
  o.lr = lr;
  return o;
}

TEST(AdagradTest, MatchesTorchGolden) {
  AdagradOptions o = Options(0.1);
  o.lr_decay = 0.01;
  o.initial_accumulator_value = 0.1;
  o.eps = 1e-10;
  o.weight_decay = 0.01;
  Adagrad adagrad(o, {4});
  ExpectGoldenTrajectory(adagrad, 0.1,
                         {{{0.9671458769998902, -1.9428908455331966, 0.4305786493967603, 0.0},
                           {0.9145963040664907, -1.8938862285766354, 0.397769432068769, 0.0},
                           {0.8541765002716483, -1.8504753964142207, 0.37640411256149964, 0.0}}});
}

// Not in the reference goldens: torch 1.13 float32, Adagrad(lr=0.1, maximize=True) on the golden
// sequence.
TEST(AdagradTest, MatchesTorchWithMaximize) {
  AdagradOptions o = Options(0.1);
  o.maximize = true;
  Adagrad adagrad(o, {4});
  ExpectGoldenTrajectory(adagrad, 0.1,
                         {{{1.100000023841858, -2.0999999046325684, 0.6000000238418579, 0.0},
                           {1.189442753791809, -2.170710563659668, 0.6447213888168335, 0.0},
                           {1.2696211338043213, -2.228445529937744, 0.6732928156852722, 0.0}}});
}

TEST(AdagradTest, FirstStepWithZeroAccumulatorMovesEachCoordinateByLr) {
  Adagrad adagrad(Options(0.1), {2});
  std::vector<float> p = {1.0f, -1.0f};
  ASSERT_OK(StepOne(adagrad, p, {0.5f, -3.0f}, 0.1));
  EXPECT_NEAR(p[0], 0.9f, 1e-7);  // g / sqrt(g^2) = sign(g)
  EXPECT_NEAR(p[1], -0.9f, 1e-7);
}

TEST(AdagradTest, InitialAccumulatorValueStartsTheSum) {
  AdagradOptions o = Options(1.0);
  o.initial_accumulator_value = 3.0;
  Adagrad adagrad(o, {1});
  std::vector<float> p = {1.0f};
  ASSERT_OK(StepOne(adagrad, p, {1.0f}, 1.0));
  EXPECT_FLOAT_EQ(p[0], 0.5f);  // 1 - 1 / sqrt(3 + 1)
}

TEST(AdagradTest, LrDecayDividesLrByOnePlusStepsTimesDecay) {
  AdagradOptions o = Options(1.0);
  o.lr_decay = 0.5;
  Adagrad adagrad(o, {1});
  std::vector<float> p = {0.0f};
  double expected = 0.0;
  for (int t = 1; t <= 3; ++t) {
    ASSERT_OK(StepOne(adagrad, p, {1.0f}, 1.0));
    const double clr = 1.0 / (1 + (t - 1) * 0.5);
    expected -= clr / (std::sqrt(static_cast<double>(t)) + 1e-10);  // sum = t
    EXPECT_NEAR(p[0], expected, 1e-6) << "after step " << t;
  }
}

TEST(AdagradTest, WeightDecayAddsDecayTimesParamToTheGradient) {
  AdagradOptions o = Options(0.1);
  o.weight_decay = 0.5;
  Adagrad adagrad(o, {1});
  std::vector<float> p = {2.0f};
  ASSERT_OK(StepOne(adagrad, p, {0.0f}, 0.1));
  EXPECT_NEAR(p[0], 1.9f, 1e-7);  // d = 1, sum = 1
}

TEST(AdagradTest, MaximizeAscendsTheGradient) {
  AdagradOptions o = Options(0.1);
  o.maximize = true;
  Adagrad adagrad(o, {1});
  std::vector<float> p = {0.0f};
  ASSERT_OK(StepOne(adagrad, p, {2.0f}, 0.1));
  EXPECT_NEAR(p[0], 0.1f, 1e-7);
}

TEST(AdagradTest, ZeroGradientWithZeroAccumulatorGivesNoUpdate) {
  Adagrad adagrad(Options(0.1), {2});  // eps = 1e-10 keeps 0 / (0 + eps) finite
  std::vector<float> p = {1.0f, -2.0f};
  ASSERT_OK(StepOne(adagrad, p, {0.0f, 0.0f}, 0.1));
  EXPECT_EQ(p, (std::vector<float>{1.0f, -2.0f}));
}

TEST(AdagradTest, SumIsAllocatedOnFirstStep) {
  Adagrad adagrad(Options(0.1), {3, 5});
  EXPECT_EQ(adagrad.StateBytesPerElement(), 4);
  EXPECT_EQ(adagrad.StateBytes(), 0);
  std::vector<float> p0(3, 1.0f), g0(3, 1.0f), p1(5, 1.0f), g1(5, 1.0f);
  ASSERT_OK(StepTwo(adagrad, p0, g0, p1, g1, 0.1));
  EXPECT_EQ(adagrad.StateBytes(), 8 * 4);
}

TEST(AdagradTest, OptionsReturnsTheOptionsInForce) {
  AdagradOptions o = Options(0.3);
  o.lr_decay = 0.1;
  const OptimizerOptions got = Adagrad(o, {1}).options();
  ASSERT_TRUE(std::holds_alternative<AdagradOptions>(got));
  EXPECT_EQ(std::get<AdagradOptions>(got).lr, 0.3);
  EXPECT_EQ(std::get<AdagradOptions>(got).lr_decay, 0.1);
}

}  // namespace
}  // namespace optd
