#include "server/optim/lion.h"

#include <variant>
#include <vector>

#include "gtest/gtest.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

LionOptions LionWith(double lr, double weight_decay) {
  LionOptions o;
  o.lr = lr;
  o.weight_decay = weight_decay;
  return o;
}

// The reference formulas of reference/optimizers.md section 1.9, in double, on the golden sequence
// (its gradients do not depend on the params, so no sign can flip between implementations):
//   c = 0.9 m + 0.1 g;  p = p (1 - lr wd) - lr sign(c);  m = 0.99 m + 0.01 g
// With m = 0 at step 1, c = 0.1 g: every nonzero element moves by lr against its gradient, and the
// zero element never moves (sign(0) = 0); the momentum keeps the signs of g here.
TEST(LionTest, MatchesTheReferenceFormulas) {
  Lion lion(LionWith(0.01, 0.1), {4});
  ExpectGoldenTrajectory(lion, 0.01,
                         {{{0.989, -1.988, 0.4895, 0.0},
                           {0.978011, -1.9760119999999999, 0.4790105, 0.0},
                           {0.967032989, -1.9640359879999998, 0.4685314895, 0.0}}});
}

TEST(LionTest, MatchesTheReferenceFormulasWithoutWeightDecay) {
  Lion lion(LionWith(0.01, 0.0), {4});
  ExpectGoldenTrajectory(
      lion, 0.01, {{{0.99, -1.99, 0.49, 0.0}, {0.98, -1.98, 0.48, 0.0}, {0.97, -1.97, 0.47, 0.0}}});
}

TEST(LionTest, EveryStepHasLengthLrWhateverTheGradientMagnitude) {
  Lion lion(LionWith(0.5, 0.0), {3});
  std::vector<float> p = {0.0f, 0.0f, 0.0f};
  ASSERT_OK(StepOne(lion, p, {1e-30f, -1e30f, 3.0f}, 0.5));
  EXPECT_EQ(p, (std::vector<float>{-0.5f, 0.5f, -0.5f}));
}

TEST(LionTest, TheUpdateInterpolatesWithBeta1AndTheStateWithBeta2) {
  Lion lion(LionWith(0.1, 0.0), {1});  // beta1 = 0.9, beta2 = 0.99
  std::vector<float> p = {0.0f};
  ASSERT_OK(StepOne(lion, p, {1.0f}, 0.1));  // c = 0.1 > 0; then m = 0.01
  EXPECT_FLOAT_EQ(p[0], -0.1f);
  // c = 0.9 * 0.01 + 0.1 * (-0.5) = -0.041 < 0: p goes up. Had m been updated with beta1
  // (m = 0.1), c would be 0.09 - 0.05 > 0.
  ASSERT_OK(StepOne(lion, p, {-0.5f}, 0.1));
  EXPECT_FLOAT_EQ(p[0], 0.0f);
}

TEST(LionTest, ZeroGradientAndZeroMomentumGiveNoStep) {
  Lion lion(LionWith(0.1, 0.0), {2});
  std::vector<float> p = {1.0f, -2.0f};
  ASSERT_OK(StepOne(lion, p, {0.0f, 0.0f}, 0.1));
  EXPECT_EQ(p, (std::vector<float>{1.0f, -2.0f}));
}

TEST(LionTest, ZeroGradientAfterNonzeroStepStillMovesByMomentum) {
  Lion lion(LionWith(0.1, 0.0), {1});
  std::vector<float> p = {0.0f};
  ASSERT_OK(StepOne(lion, p, {1.0f}, 0.1));
  ASSERT_OK(StepOne(lion, p, {0.0f}, 0.1));  // c = 0.9 m > 0
  EXPECT_FLOAT_EQ(p[0], -0.2f);
}

TEST(LionTest, DecoupledWeightDecayUsesTheLrPassedToStep) {
  Lion lion(LionWith(0.1, 0.5), {1});
  std::vector<float> p = {2.0f};
  ASSERT_OK(StepOne(lion, p, {0.0f}, 0.1));  // sign(0) = 0: decay only
  EXPECT_FLOAT_EQ(p[0], 1.9f);               // 2 * (1 - 0.1 * 0.5)
  ASSERT_OK(StepOne(lion, p, {0.0f}, 0.2));
  EXPECT_FLOAT_EQ(p[0], 1.71f);  // 1.9 * (1 - 0.2 * 0.5)
}

TEST(LionTest, DecayIsAppliedBeforeTheSignStep) {
  Lion lion(LionWith(0.1, 0.5), {1});
  std::vector<float> p = {2.0f};
  ASSERT_OK(StepOne(lion, p, {1.0f}, 0.1));
  EXPECT_FLOAT_EQ(p[0], 1.8f);  // 2 * 0.95 - 0.1; (2 - 0.1) * 0.95 would be 1.805
}

TEST(LionTest, StateIsAllocatedOnFirstStep) {
  Lion lion(LionOptions{}, {3, 5});
  EXPECT_EQ(lion.StateBytesPerElement(), 4);
  EXPECT_EQ(lion.StateBytes(), 0);
  std::vector<float> p0(3, 1.0f), g0(3, 1.0f), p1(5, 1.0f), g1(5, 1.0f);
  ASSERT_OK(StepTwo(lion, p0, g0, p1, g1, 1e-4));
  EXPECT_EQ(lion.StateBytes(), 8 * 4);
}

TEST(LionTest, OptionsReturnsTheOptionsInForce) {
  LionOptions o = LionWith(3e-4, 0.1);
  o.beta1 = 0.95;
  o.beta2 = 0.98;
  const OptimizerOptions got = Lion(o, {1}).options();
  ASSERT_TRUE(std::holds_alternative<LionOptions>(got));
  const LionOptions& l = std::get<LionOptions>(got);
  EXPECT_EQ(l.lr, 3e-4);
  EXPECT_EQ(l.beta1, 0.95);
  EXPECT_EQ(l.beta2, 0.98);
  EXPECT_EQ(l.weight_decay, 0.1);
}

}  // namespace
}  // namespace optd
