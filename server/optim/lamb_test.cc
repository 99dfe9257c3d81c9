#include "server/optim/lamb.h"

#include <cmath>
#include <variant>
#include <vector>

#include "gtest/gtest.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

LambOptions LambWith(double lr, double weight_decay) {
  LambOptions o;
  o.lr = lr;
  o.weight_decay = weight_decay;
  return o;
}

// The reference formulas of reference/optimizers.md section 1.10 (optax lamb), in double, on the
// golden sequence:
//   m, v as Adam;  u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd p
//   trust = ||p|| / ||u|| (1 if either is 0);  p -= lr trust u
// Step 1 by hand (wd = 0): u = g / (|g| + eps) = [1, -1, 1, 0] - O(eps), ||u|| = sqrt(3),
// ||p|| = sqrt(5.25), so p -= 0.01 * sqrt(5.25 / 3) * u: 1 -> 0.98677, -2 -> -1.98677.
TEST(LambTest, MatchesTheReferenceFormulas) {
  Lamb lamb(LambWith(0.01, 0.0), {4});
  ExpectGoldenTrajectory(lamb, 0.01,
                         {{{0.9867712948894862, -1.9867712287462913, 0.4867712066984128, 0.0},
                           {0.9736726709383712, -1.9732000671021463, 0.4741204362332584, 0.0},
                           {0.9605012602578584, -1.9594512268642408, 0.4621155185285158, 0.0}}});
}

TEST(LambTest, MatchesTheReferenceFormulasWithWeightDecay) {
  Lamb lamb(LambWith(0.01, 0.1), {4});
  ExpectGoldenTrajectory(lamb, 0.01,
                         {{{0.9869890079698531, -1.9858061206191675, 0.48758034322077165, 0.0},
                           {0.974133452111933, -1.9713228793630213, 0.4757270234130606, 0.0},
                           {0.961246455113948, -1.9567054569589677, 0.46448456467672067, 0.0}}});
}

TEST(LambTest, FirstStepMovesTheTensorByLrTimesItsNorm) {
  // Step 1: u = g / (|g| + eps) ~ sign(g), so ||lr trust u|| = lr ||p||.
  const double lr = 0.01;
  Lamb lamb(LambWith(lr, 0.0), {2});
  std::vector<float> p = {3.0f, 4.0f};
  ASSERT_OK(StepOne(lamb, p, {1.0f, 1.0f}, lr));
  const double trust = 5.0 / std::sqrt(2.0);
  EXPECT_NEAR(p[0], 3.0 - lr * trust, 1e-5);
  EXPECT_NEAR(p[1], 4.0 - lr * trust, 1e-5);
}

TEST(LambTest, ZeroParamsGiveATrustRatioOfOne) {
  const double lr = 0.01;
  Lamb lamb(LambWith(lr, 0.0), {2});
  std::vector<float> p = {0.0f, 0.0f};
  ASSERT_OK(StepOne(lamb, p, {2.0f, -0.5f}, lr));
  // First step: u = g / (|g| + eps), and with ||p|| = 0 the trust ratio is 1.
  EXPECT_NEAR(p[0], -lr * 2.0 / (2.0 + 1e-6), 1e-9);
  EXPECT_NEAR(p[1], lr * 0.5 / (0.5 + 1e-6), 1e-9);
}

TEST(LambTest, ZeroGradientGivesNoUpdate) {
  // m = v = 0: u = 0 / (0 + eps) = 0, ||u|| = 0, trust 1, p -= 0.
  Lamb lamb(LambWith(0.01, 0.0), {2});
  std::vector<float> p = {1.0f, -2.0f};
  ASSERT_OK(StepOne(lamb, p, {0.0f, 0.0f}, 0.01));
  EXPECT_EQ(p, (std::vector<float>{1.0f, -2.0f}));
}

TEST(LambTest, WeightDecayIsInsideTheTrustRatio) {
  // With g = 0, u = wd p, so trust = 1 / wd and p -= lr p: the factor is 1 - lr whatever wd.
  for (double weight_decay : {0.01, 0.5, 3.0}) {
    Lamb lamb(LambWith(0.1, weight_decay), {2});
    std::vector<float> p = {2.0f, -4.0f};
    ASSERT_OK(StepOne(lamb, p, {0.0f, 0.0f}, 0.1));
    EXPECT_FLOAT_EQ(p[0], 1.8f) << "weight_decay " << weight_decay;
    EXPECT_FLOAT_EQ(p[1], -3.6f) << "weight_decay " << weight_decay;
  }
}

TEST(LambTest, TrustRatioIsPerTensor) {
  // Two tensors stepped together get exactly what each gets alone.
  Lamb together(LambWith(0.01, 0.1), {4, 4});
  Lamb first(LambWith(0.01, 0.1), {4}), second(LambWith(0.01, 0.1), {4});
  std::vector<float> p0 = GoldenInitialParams(), p1 = {10.0f, 0.0f, -3.0f, 0.25f};
  std::vector<float> q0 = p0, q1 = p1;
  for (int t = 1; t <= 3; ++t) {
    const std::vector<float> g0 = GoldenGradient(t), g1 = {0.5f, -1.0f, 0.0f, 2.0f};
    ASSERT_OK(StepTwo(together, p0, g0, p1, g1, 0.01));
    ASSERT_OK(StepOne(first, q0, g0, 0.01));
    ASSERT_OK(StepOne(second, q1, g1, 0.01));
  }
  EXPECT_EQ(p0, q0);
  EXPECT_EQ(p1, q1);
}

TEST(LambTest, TinyGradientStaysFinite) {
  // Step 1: u = g / eps = 2e-36 and ||p|| = 1000, so lr * trust = 5e38 does not fit a float; the
  // update must still be lr * ||p|| * u / ||u|| = 1000.
  Lamb lamb(LambWith(1.0, 0.0), {1});
  std::vector<float> p = {1000.0f};
  ASSERT_OK(StepOne(lamb, p, {2e-42f}, 1.0));
  EXPECT_TRUE(std::isfinite(p[0]));
  EXPECT_NEAR(p[0], 0.0f, 1e-2);
}

TEST(LambTest, StepUsesTheLrPassedToStep) {
  Lamb lamb(LambWith(0.01, 0.0), {1}), reference(LambWith(0.05, 0.0), {1});
  std::vector<float> p = {1.0f}, p_reference = {1.0f};
  ASSERT_OK(StepOne(lamb, p, {1.0f}, 0.05));
  ASSERT_OK(StepOne(reference, p_reference, {1.0f}, 0.05));
  EXPECT_EQ(p, p_reference);
}

TEST(LambTest, StateIsAllocatedOnFirstStep) {
  Lamb lamb(LambOptions{}, {3, 5});
  EXPECT_EQ(lamb.StateBytesPerElement(), 8);
  EXPECT_EQ(lamb.StateBytes(), 0);
  std::vector<float> p0(3, 1.0f), g0(3, 1.0f), p1(5, 1.0f), g1(5, 1.0f);
  ASSERT_OK(StepTwo(lamb, p0, g0, p1, g1, 1e-3));
  EXPECT_EQ(lamb.StateBytes(), 8 * 8);
}

TEST(LambTest, OptionsReturnsTheOptionsInForce) {
  LambOptions o = LambWith(0.002, 0.01);
  o.beta1 = 0.8;
  o.beta2 = 0.99;
  o.eps = 1e-8;
  const OptimizerOptions got = Lamb(o, {1}).options();
  ASSERT_TRUE(std::holds_alternative<LambOptions>(got));
  const LambOptions& l = std::get<LambOptions>(got);
  EXPECT_EQ(l.lr, 0.002);
  EXPECT_EQ(l.beta1, 0.8);
  EXPECT_EQ(l.beta2, 0.99);
  EXPECT_EQ(l.eps, 1e-8);
  EXPECT_EQ(l.weight_decay, 0.01);
}

}  // namespace
}  // namespace optd
