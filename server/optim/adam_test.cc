#include "server/optim/adam.h"

#include <cmath>
#include <variant>
#include <vector>

#include "gtest/gtest.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

AdamOptions AdamWithLr(double lr) {
  AdamOptions o;
  o.lr = lr;
  return o;
}

AdamWOptions AdamWWithLr(double lr, double weight_decay) {
  AdamWOptions o;
  o.lr = lr;
  o.weight_decay = weight_decay;
  return o;
}

TEST(AdamTest, MatchesTorchGolden) {
  Adam adam(AdamWithLr(0.01), {4});
  ExpectGoldenTrajectory(adam, 0.01,
                         {{{0.9900000009999999, -1.9900000005, 0.4900000003333333, 0.0},
                           {0.9803481813521252, -1.980000001, 0.4806782043383197, 0.0},
                           {0.9707681695544842, -1.9700000015, 0.47194661948716454, 0.0}}});
}

TEST(AdamTest, MatchesTorchGoldenWithWeightDecayAndAmsgrad) {
  AdamOptions o = AdamWithLr(0.01);
  o.weight_decay = 0.1;
  o.amsgrad = true;
  Adam adam(o, {4});
  ExpectGoldenTrajectory(adam, 0.01,
                         {{{0.9900000005, -1.99000000025, 0.4900000002857143, 0.0},
                           {0.9800897048601188, -1.9800006607894256, 0.4804964207559223, 0.0},
                           {0.9702142066503179, -1.9700024223607897, 0.47139582051065554, 0.0}}});
}

TEST(AdamWTest, MatchesTorchGolden) {
  Adam adamw(AdamWWithLr(0.01, 0.1), {4});
  ExpectGoldenTrajectory(adamw, 0.01,
                         {{{0.9890000009999999, -1.9880000005, 0.4895000003333333, 0.0},
                           {0.9783591813511252, -1.9760120009995001, 0.4796887043379864, 0.0},
                           {0.9678008103721331, -1.9640359894985007, 0.4704774307824932, 0.0}}});
}

// Not in the reference goldens: torch 1.13 float32,
// AdamW(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True) on the golden sequence.
TEST(AdamWTest, MatchesTorchWithAmsgradAndMaximize) {
  AdamWOptions o = AdamWWithLr(0.01, 0.1);
  o.amsgrad = true;
  o.maximize = true;
  Adam adamw(o, {4});
  ExpectGoldenTrajectory(adamw, 0.01,
                         {{{1.0090000629425049, -2.008000135421753, 0.5095000267028809, 0.0},
                           {1.017642855644226, -2.0159921646118164, 0.5183123350143433, 0.0},
                           {1.02620530128479, -2.0239760875701904, 0.526525616645813, 0.0}}});
}

TEST(AdamTest, FirstStepMovesEachCoordinateByLr) {
  Adam adam(AdamWithLr(0.01), {3});
  std::vector<float> p = {1.0f, -2.0f, 0.5f};
  ASSERT_OK(StepOne(adam, p, {0.3f, -4.0f, 1e-3f}, 0.01));
  // m_hat / sqrt(v_hat) = sign(g) on the first step, whatever |g|.
  EXPECT_NEAR(p[0], 0.99f, 1e-6);
  EXPECT_NEAR(p[1], -1.99f, 1e-6);
  EXPECT_NEAR(p[2], 0.49f, 1e-6);
}

TEST(AdamTest, ZeroGradientOnFirstStepLeavesParamsUnchanged) {
  Adam adam(AdamWithLr(0.01), {2});
  std::vector<float> p = {1.0f, -2.0f};
  ASSERT_OK(StepOne(adam, p, {0.0f, 0.0f}, 0.01));
  EXPECT_EQ(p, (std::vector<float>{1.0f, -2.0f}));
}

TEST(AdamTest, ZeroGradientAfterNonzeroStepStillMovesByMomentum) {
  const double lr = 0.01, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  Adam adam(AdamWithLr(lr), {1});
  std::vector<float> p = {1.0f};
  ASSERT_OK(StepOne(adam, p, {1.0f}, lr));
  const float after_first = p[0];
  ASSERT_OK(StepOne(adam, p, {0.0f}, lr));
  // m = beta1 (1 - beta1), v = beta2 (1 - beta2) after the zero step.
  const double m = beta1 * (1 - beta1), v = beta2 * (1 - beta2);
  const double step =
      lr / (1 - beta1 * beta1) * m / (std::sqrt(v) / std::sqrt(1 - beta2 * beta2) + eps);
  EXPECT_NEAR(p[0], after_first - step, 1e-6);
  EXPECT_LT(p[0], after_first);
}

TEST(AdamTest, MaximizeAscendsTheGradient) {
  AdamOptions o = AdamWithLr(0.01);
  o.maximize = true;
  Adam adam(o, {1});
  std::vector<float> p = {0.0f};
  ASSERT_OK(StepOne(adam, p, {1.0f}, 0.01));
  EXPECT_NEAR(p[0], 0.01f, 1e-7);
}

TEST(AdamTest, CoupledWeightDecayIsAddedToTheGradient) {
  AdamOptions o = AdamWithLr(0.01);
  o.weight_decay = 0.5;
  Adam adam(o, {1});
  std::vector<float> p = {2.0f};
  ASSERT_OK(StepOne(adam, p, {0.0f}, 0.01));
  EXPECT_NEAR(p[0], 1.99f, 1e-6);  // d = 0.5 * 2 > 0: a full lr step downhill
}

TEST(AdamTest, AmsgradDividesByTheMaxOfTheRawSecondMoment) {
  const double lr = 0.1, beta1 = 0.9, beta2 = 0.5;
  AdamOptions o = AdamWithLr(lr);
  o.beta2 = beta2;
  o.amsgrad = true;
  Adam adam(o, {1});
  std::vector<float> p = {0.0f};
  ASSERT_OK(StepOne(adam, p, {1.0f}, lr));
  const float after_first = p[0];
  ASSERT_OK(StepOne(adam, p, {0.0f}, lr));
  // Step 2: v = 0.25 < vmax = v1 = 0.5; the denominator uses vmax with the step-2 bias correction.
  const double m = beta1 * (1 - beta1);
  const double vmax = 1 - beta2;
  const double bc1 = 1 - beta1 * beta1, bc2 = 1 - beta2 * beta2;
  const double with_vmax = lr / bc1 * m / (std::sqrt(vmax) / std::sqrt(bc2) + 1e-8);
  const double with_v = lr / bc1 * m / (std::sqrt(beta2 * vmax) / std::sqrt(bc2) + 1e-8);
  EXPECT_NEAR(p[0], after_first - with_vmax, 1e-6);
  EXPECT_GT(std::abs(with_vmax - with_v), 1e-2);  // the two rules are far apart here
}

TEST(AdamWTest, DecaysTheParamBeforeTheAdamUpdate) {
  Adam adamw(AdamWWithLr(0.1, 0.5), {1});
  std::vector<float> p = {2.0f};
  ASSERT_OK(StepOne(adamw, p, {1.0f}, 0.1));
  // 2 * (1 - 0.1 * 0.5) - 0.1 = 1.8; decaying after the update would give 1.805.
  EXPECT_NEAR(p[0], 1.8f, 1e-6);
}

TEST(AdamWTest, DecayAloneAppliesWithZeroGradient) {
  Adam adamw(AdamWWithLr(0.1, 0.5), {1});
  std::vector<float> p = {2.0f};
  ASSERT_OK(StepOne(adamw, p, {0.0f}, 0.1));
  EXPECT_FLOAT_EQ(p[0], 1.9f);
}

TEST(AdamWTest, DecayUsesTheLrPassedToStep) {
  Adam adamw(AdamWWithLr(0.1, 0.5), {1});
  std::vector<float> p = {2.0f};
  ASSERT_OK(StepOne(adamw, p, {0.0f}, 0.2));
  EXPECT_FLOAT_EQ(p[0], 1.8f);  // 2 * (1 - 0.2 * 0.5)
}

TEST(AdamWTest, ZeroWeightDecayEqualsAdam) {
  Adam adam(AdamWithLr(0.01), {4});
  Adam adamw(AdamWWithLr(0.01, 0.0), {4});
  std::vector<float> p_adam = GoldenInitialParams(), p_adamw = GoldenInitialParams();
  for (int t = 1; t <= 3; ++t) {
    ASSERT_OK(StepOne(adam, p_adam, GoldenGradient(t), 0.01));
    ASSERT_OK(StepOne(adamw, p_adamw, GoldenGradient(t), 0.01));
  }
  EXPECT_EQ(p_adam, p_adamw);
}

TEST(AdamTest, StateIsAllocatedOnFirstStep) {
  Adam adam(AdamWithLr(0.01), {3, 5});
  EXPECT_EQ(adam.StateBytesPerElement(), 8);
  EXPECT_EQ(adam.StateBytes(), 0);
  std::vector<float> p0(3, 1.0f), g0(3, 1.0f), p1(5, 1.0f), g1(5, 1.0f);
  ASSERT_OK(StepTwo(adam, p0, g0, p1, g1, 0.01));
  EXPECT_EQ(adam.StateBytes(), 8 * 8);
}

TEST(AdamTest, AmsgradNeedsTwelveBytesPerElement) {
  AdamOptions o = AdamWithLr(0.01);
  o.amsgrad = true;
  Adam adam(o, {3});
  EXPECT_EQ(adam.StateBytesPerElement(), 12);
  std::vector<float> p(3, 1.0f);
  ASSERT_OK(StepOne(adam, p, std::vector<float>(3, 1.0f), 0.01));
  EXPECT_EQ(adam.StateBytes(), 3 * 12);
}

TEST(AdamWTest, StateBytesPerElementMatchesAdam) {
  AdamWOptions o = AdamWWithLr(0.01, 0.01);
  EXPECT_EQ(Adam(o, {1}).StateBytesPerElement(), 8);
  o.amsgrad = true;
  EXPECT_EQ(Adam(o, {1}).StateBytesPerElement(), 12);
}

TEST(AdamTest, OptionsReturnsAdamOptions) {
  AdamOptions o = AdamWithLr(0.02);
  o.beta2 = 0.99;
  const OptimizerOptions got = Adam(o, {1}).options();
  ASSERT_TRUE(std::holds_alternative<AdamOptions>(got));
  EXPECT_EQ(std::get<AdamOptions>(got).lr, 0.02);
  EXPECT_EQ(std::get<AdamOptions>(got).beta2, 0.99);
}

TEST(AdamWTest, OptionsReturnsAdamWOptions) {
  const OptimizerOptions got = Adam(AdamWWithLr(0.02, 0.3), {1}).options();
  ASSERT_TRUE(std::holds_alternative<AdamWOptions>(got));
  EXPECT_EQ(std::get<AdamWOptions>(got).weight_decay, 0.3);
}

}  // namespace
}  // namespace optd
