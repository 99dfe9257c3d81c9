#include "server/optim/lars.h"

#include <cmath>
#include <limits>
#include <variant>
#include <vector>

#include "gtest/gtest.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

LarsOptions LarsWith(double lr, double momentum, double weight_decay, double trust_coefficient,
                     double eps) {
  LarsOptions o;
  o.lr = lr;
  o.momentum = momentum;
  o.weight_decay = weight_decay;
  o.trust_coefficient = trust_coefficient;
  o.eps = eps;
  return o;
}

// The reference formulas of reference/optimizers.md section 1.11 (optax lars), in double, on the
// golden sequence:
//   u = g + wd p;  trust = tc ||p|| / (||u|| + eps) (1 if either norm is 0)
//   buf = momentum buf + lr trust u;  p -= nesterov ? lr trust u + momentum buf : buf
// Step 1 by hand with the defaults (lr 1, tc 1e-3): ||p|| = sqrt(5.25), ||g|| = sqrt(0.14), so
// p -= 1e-3 * sqrt(5.25 / 0.14) * g = 6.1237e-3 g: 1 -> 0.99938763.
TEST(LarsTest, MatchesTheReferenceFormulasWithDefaults) {
  Lars lars(LarsOptions{}, {4});
  ExpectGoldenTrajectory(lars, 1.0,
                         {{{0.9993876275643042, -1.9987752551286084, 0.4981628826929126, 0.0},
                           {0.9974062211158536, -1.9962427134880316, 0.4954367736742907, 0.0},
                           {0.9937901714102476, -1.9927415700768454, 0.49237234759019743, 0.0}}});
}

TEST(LarsTest, MatchesTheReferenceFormulasWithWeightDecayEpsAndNesterov) {
  LarsOptions o = LarsWith(0.5, 0.9, 0.1, 0.01, 1e-3);
  o.nesterov = true;
  Lars lars(o, {4});
  ExpectGoldenTrajectory(lars, 0.5,
                         {{{0.9923474827759848, -1.9846949655519697, 0.4866080948579734, 0.0},
                           {0.9770696288694738, -1.9621700529950836, 0.47292189281280017, 0.0},
                           {0.9544385733341397, -1.9349587138778286, 0.4589859142858102, 0.0}}});
}

TEST(LarsTest, MatchesTheReferenceFormulasWithoutMomentum) {
  Lars lars(LarsWith(0.5, 0.0, 0.1, 0.01, 0.0), {4});
  ExpectGoldenTrajectory(lars, 0.5,
                         {{{0.9959652670760704, -1.9919305341521407, 0.49293921738312313, 0.0},
                           {0.989607566740488, -1.983459308408803, 0.48871002605357283, 0.0},
                           {0.9818423676655464, -1.97570607603713, 0.48581246544797874, 0.0}}});
}

TEST(LarsTest, TrustRatioScalesTheStepToTrustCoefficientTimesTheParamNorm) {
  Lars lars(LarsWith(1.0, 0.9, 0.0, 1e-3, 0.0), {2});
  std::vector<float> p = {3.0f, 4.0f};
  ASSERT_OK(StepOne(lars, p, {0.6f, 0.8f}, 1.0));  // ||g|| = 1: trust = 1e-3 * 5
  EXPECT_NEAR(p[0], 3.0 - 5e-3 * 0.6, 1e-7);
  EXPECT_NEAR(p[1], 4.0 - 5e-3 * 0.8, 1e-7);
}

TEST(LarsTest, TrustRatioDividesByTheNormOfTheDecayedGradient) {
  // u = g + wd p = [0.5, 1]: trust = tc ||p|| / ||u||, not tc ||p|| / (||g|| + wd ||p||).
  const double tc = 0.1, wd = 0.5;
  Lars lars(LarsWith(1.0, 0.0, wd, tc, 0.0), {2});
  std::vector<float> p = {2.0f, 0.0f};
  ASSERT_OK(StepOne(lars, p, {-0.5f, 1.0f}, 1.0));
  const double trust = tc * 2.0 / std::sqrt(1.25);
  EXPECT_NEAR(p[0], 2.0 - trust * 0.5, 1e-7);
  EXPECT_NEAR(p[1], -trust * 1.0, 1e-7);
}

TEST(LarsTest, ZeroParamsGiveATrustRatioOfOne) {
  Lars lars(LarsWith(0.1, 0.9, 0.0, 1e-3, 0.0), {2});
  std::vector<float> p = {0.0f, 0.0f};
  ASSERT_OK(StepOne(lars, p, {2.0f, -0.5f}, 0.1));
  EXPECT_FLOAT_EQ(p[0], -0.2f);  // p -= lr * 1 * g
  EXPECT_FLOAT_EQ(p[1], 0.05f);
}

TEST(LarsTest, ZeroGradientGivesNoUpdateOnFirstStep) {
  Lars lars(LarsOptions{}, {2});
  std::vector<float> p = {1.0f, -2.0f};
  ASSERT_OK(StepOne(lars, p, {0.0f, 0.0f}, 1.0));
  EXPECT_EQ(p, (std::vector<float>{1.0f, -2.0f}));
}

TEST(LarsTest, LrIsInsideTheMomentumBuffer) {
  // optax's trace comes after the learning rate: a step with lr = 0 still moves p by
  // momentum * buf (torch SGD, with lr outside, would not move).
  Lars lars(LarsWith(1.0, 0.9, 0.0, 1e-3, 0.0), {2});
  std::vector<float> p = {3.0f, 4.0f};
  ASSERT_OK(StepOne(lars, p, {0.6f, 0.8f}, 1.0));  // buf = 5e-3 g
  ASSERT_OK(StepOne(lars, p, {0.6f, 0.8f}, 0.0));  // buf = 0.9 * 5e-3 g
  EXPECT_NEAR(p[0], 3.0 - 1.9 * 5e-3 * 0.6, 1e-6);
  EXPECT_NEAR(p[1], 4.0 - 1.9 * 5e-3 * 0.8, 1e-6);
}

TEST(LarsTest, TrustRatioIsPerTensor) {
  LarsOptions o = LarsWith(0.5, 0.9, 0.1, 0.01, 1e-3);
  Lars together(o, {4, 4});
  Lars first(o, {4}), second(o, {4});
  std::vector<float> p0 = GoldenInitialParams(), p1 = {10.0f, 0.0f, -3.0f, 0.25f};
  std::vector<float> q0 = p0, q1 = p1;
  for (int t = 1; t <= 3; ++t) {
    const std::vector<float> g0 = GoldenGradient(t), g1 = {0.5f, -1.0f, 0.0f, 2.0f};
    ASSERT_OK(StepTwo(together, p0, g0, p1, g1, 0.5));
    ASSERT_OK(StepOne(first, q0, g0, 0.5));
    ASSERT_OK(StepOne(second, q1, g1, 0.5));
  }
  EXPECT_EQ(p0, q0);
  EXPECT_EQ(p1, q1);
}

TEST(LarsTest, TinyGradientStaysFinite) {
  // ||u|| = denorm_min: lr * trust = 1e-3 / 1.4e-45 does not fit a float; the update must still be
  // lr * tc * ||p|| * u / ||u|| = 1e-3.
  Lars lars(LarsWith(1.0, 0.0, 0.0, 1e-3, 0.0), {1});
  std::vector<float> p = {1.0f};
  ASSERT_OK(StepOne(lars, p, {std::numeric_limits<float>::denorm_min()}, 1.0));
  EXPECT_FLOAT_EQ(p[0], 0.999f);
}

TEST(LarsTest, StateBytesCountTheMomentumBuffer) {
  Lars lars(LarsOptions{}, {3, 5});
  EXPECT_EQ(lars.StateBytesPerElement(), 4);
  EXPECT_EQ(lars.StateBytes(), 0);
  std::vector<float> p0(3, 1.0f), g0(3, 1.0f), p1(5, 1.0f), g1(5, 1.0f);
  ASSERT_OK(StepTwo(lars, p0, g0, p1, g1, 1.0));
  EXPECT_EQ(lars.StateBytes(), 8 * 4);

  Lars without_momentum(LarsWith(1.0, 0.0, 0.0, 1e-3, 0.0), {3});
  EXPECT_EQ(without_momentum.StateBytesPerElement(), 0);
  ASSERT_OK(StepOne(without_momentum, p0, g0, 1.0));
  EXPECT_EQ(without_momentum.StateBytes(), 0);
}

TEST(LarsTest, OptionsReturnsTheOptionsInForce) {
  LarsOptions o = LarsWith(0.3, 0.95, 1e-4, 0.02, 1e-9);
  o.nesterov = true;
  const OptimizerOptions got = Lars(o, {1}).options();
  ASSERT_TRUE(std::holds_alternative<LarsOptions>(got));
  const LarsOptions& l = std::get<LarsOptions>(got);
  EXPECT_EQ(l.lr, 0.3);
  EXPECT_EQ(l.momentum, 0.95);
  EXPECT_EQ(l.weight_decay, 1e-4);
  EXPECT_EQ(l.trust_coefficient, 0.02);
  EXPECT_EQ(l.eps, 1e-9);
  EXPECT_TRUE(l.nesterov);
}

}  // namespace
}  // namespace optd
