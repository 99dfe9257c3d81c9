#include "server/optim/nadam.h"

#include <cmath>
#include <variant>
#include <vector>

#include "gtest/gtest.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

NadamOptions NadamWithLr(double lr) {
  NadamOptions o;
  o.lr = lr;
  return o;
}

TEST(NadamTest, MatchesTorchGolden) {
  Nadam nadam(NadamWithLr(0.01), {4});
  ExpectGoldenTrajectory(nadam, 0.01,
                         {{{0.9895046893534388, -1.9895046888286734, 0.4895046886537515, 0.0},
                           {0.9799227329626621, -1.981717076266618, 0.48431134764733424, 0.0},
                           {0.9703327922045349, -1.9744241827820668, 0.4802310037561738, 0.0}}});
}

// Not in the reference goldens: torch 1.13 float32, NAdam(lr=0.01).
TEST(NadamTest, MatchesTorchFloat32) {
  Nadam nadam(NadamWithLr(0.01), {4});
  ExpectGoldenTrajectory(nadam, 0.01,
                         {{{0.9895046949386597, -1.9895046949386597, 0.48950469493865967, 0.0},
                           {0.9799227118492126, -1.9817171096801758, 0.4843113422393799, 0.0},
                           {0.9703327417373657, -1.9744242429733276, 0.48023101687431335, 0.0}}},
                         2e-7);
}

// Not in the reference goldens: torch 1.13 float32,
// NAdam(lr=0.01, weight_decay=0.1, momentum_decay=0.01) over 50 steps of the golden sequence.
TEST(NadamTest, MatchesTorchWithWeightDecayAndMomentumDecay) {
  NadamOptions o = NadamWithLr(0.01);
  o.weight_decay = 0.1;
  o.momentum_decay = 0.01;
  Nadam nadam(o, {4});
  ExpectGoldenCheckpoints(
      nadam, 0.01,
      {{1, {0.9895043969154358, -1.9895044565200806, 0.4895043969154358, 0.0}},
       {2, {0.9805169105529785, -1.9817266464233398, 0.4838373363018036, 0.0}},
       {3, {0.9715185165405273, -1.974448561668396, 0.479081392288208, 0.0}},
       {50, {0.32966920733451843, -1.5443689823150635, 0.2553554177284241, 0.0}}},
      1e-5);
}

TEST(NadamTest, FirstStepFollowsTheFormula) {
  const double lr = 0.01, beta1 = 0.9, psi = 4e-3, eps = 1e-8, g = 0.3;
  Nadam nadam(NadamWithLr(lr), {1});
  std::vector<float> p = {1.0f};
  ASSERT_OK(StepOne(nadam, p, {static_cast<float>(g)}, lr));
  const double mu = beta1 * (1 - 0.5 * std::pow(0.96, psi));
  const double mu_next = beta1 * (1 - 0.5 * std::pow(0.96, 2 * psi));
  // torch 1.13: mu_product = mu and mu_product_next = mu_product * mu * mu_next.
  const double mu_product_next = mu * mu * mu_next;
  const double denom = g + eps;  // sqrt(v / (1 - beta2)) = |g|
  const double want = 1.0 - lr * (1 - mu) / (1 - mu) * g / denom -
                      lr * mu_next / (1 - mu_product_next) * (1 - beta1) * g / denom;
  EXPECT_NEAR(p[0], want, 1e-7);
}

TEST(NadamTest, ZeroGradientOnFirstStepLeavesParamsUnchanged) {
  Nadam nadam(NadamWithLr(0.01), {2});
  std::vector<float> p = {1.0f, -2.0f};
  ASSERT_OK(StepOne(nadam, p, {0.0f, 0.0f}, 0.01));
  EXPECT_EQ(p, (std::vector<float>{1.0f, -2.0f}));
}

TEST(NadamTest, ZeroGradientAfterNonzeroStepStillMovesByMomentum) {
  Nadam nadam(NadamWithLr(0.01), {1});
  std::vector<float> p = {1.0f};
  ASSERT_OK(StepOne(nadam, p, {1.0f}, 0.01));
  const float after_first = p[0];
  ASSERT_OK(StepOne(nadam, p, {0.0f}, 0.01));
  EXPECT_LT(p[0], after_first);
}

TEST(NadamTest, CoupledWeightDecayIsAddedToTheGradient) {
  NadamOptions with_decay = NadamWithLr(0.01);
  with_decay.weight_decay = 0.5;
  Nadam decayed(with_decay, {1}), plain(NadamWithLr(0.01), {1});
  std::vector<float> p_decayed = {2.0f}, p_plain = {2.0f};
  ASSERT_OK(StepOne(decayed, p_decayed, {0.0f}, 0.01));  // d = 0.5 * 2
  ASSERT_OK(StepOne(plain, p_plain, {1.0f}, 0.01));      // d = 1
  EXPECT_EQ(p_decayed[0], p_plain[0]);
  EXPECT_LT(p_decayed[0], 2.0f);
}

TEST(NadamTest, ZeroMomentumDecayKeepsMuConstant) {
  // psi = 0: mu = mu_next = beta1 / 2 on every step; the first step is then
  // lr * (1 + (beta1 / 2) (1 - beta1) / (1 - (beta1 / 2)^3)) * sign(g).
  const double lr = 0.01, beta1 = 0.9;
  NadamOptions o = NadamWithLr(lr);
  o.momentum_decay = 0.0;
  Nadam nadam(o, {1});
  std::vector<float> p = {0.0f};
  ASSERT_OK(StepOne(nadam, p, {2.0f}, lr));
  const double mu = beta1 / 2;
  EXPECT_NEAR(p[0], -lr * (1 + mu * (1 - beta1) / (1 - mu * mu * mu)), 1e-7);
}

TEST(NadamTest, StepUsesTheLrPassedToStep) {
  Nadam nadam(NadamWithLr(0.01), {1}), reference(NadamWithLr(0.05), {1});
  std::vector<float> p = {1.0f}, p_reference = {1.0f};
  ASSERT_OK(StepOne(nadam, p, {1.0f}, 0.05));
  ASSERT_OK(StepOne(reference, p_reference, {1.0f}, 0.05));
  EXPECT_EQ(p, p_reference);
}

TEST(NadamTest, StateIsAllocatedOnFirstStep) {
  Nadam nadam(NadamOptions{}, {3, 5});
  EXPECT_EQ(nadam.StateBytesPerElement(), 8);
  EXPECT_EQ(nadam.StateBytes(), 0);
  std::vector<float> p0(3, 1.0f), g0(3, 1.0f), p1(5, 1.0f), g1(5, 1.0f);
  ASSERT_OK(StepTwo(nadam, p0, g0, p1, g1, 0.01));
  EXPECT_EQ(nadam.StateBytes(), 8 * 8);
}

TEST(NadamTest, OptionsReturnsTheOptionsInForce) {
  NadamOptions o = NadamWithLr(0.02);
  o.beta1 = 0.8;
  o.beta2 = 0.99;
  o.eps = 1e-6;
  o.weight_decay = 0.1;
  o.momentum_decay = 0.01;
  const OptimizerOptions got = Nadam(o, {1}).options();
  ASSERT_TRUE(std::holds_alternative<NadamOptions>(got));
  const NadamOptions& n = std::get<NadamOptions>(got);
  EXPECT_EQ(n.lr, 0.02);
  EXPECT_EQ(n.beta1, 0.8);
  EXPECT_EQ(n.beta2, 0.99);
  EXPECT_EQ(n.eps, 1e-6);
  EXPECT_EQ(n.weight_decay, 0.1);
  EXPECT_EQ(n.momentum_decay, 0.01);
}

}  // namespace
}  // namespace optd
