#include "server/optim/radam.h"

#include <cmath>
#include <variant>
#include <vector>

#include "gtest/gtest.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

RadamOptions RadamWithLr(double lr) {
  RadamOptions o;
  o.lr = lr;
  return o;
}

// rho_t of the reference: rho_inf - 2 t beta2^t / (1 - beta2^t).
double Rho(double beta2, int t) {
  const double rho_inf = 2 / (1 - beta2) - 1;
  return rho_inf - 2 * t * std::pow(beta2, t) / (1 - std::pow(beta2, t));
}

// The rectification term at step t.
double Rect(double beta2, int t) {
  const double rho_inf = 2 / (1 - beta2) - 1;
  const double rho = Rho(beta2, t);
  return std::sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho));
}

TEST(RadamTest, MatchesTorchGoldenAcrossTheRectificationBoundary) {
  Radam radam(RadamWithLr(0.01), {4});
  ExpectGoldenCheckpoints(
      radam, 0.01,
      {{1, {0.999, -1.998, 0.497, 0.0}},
       {2, {0.9974736842105263, -1.996, 0.4947894736842105, 0.0}},
       {3, {0.9954035735094193, -1.994, 0.4930256360458341, 0.0}},
       {5, {0.989562571295758, -1.99, 0.4902997852252778, 0.0}},
       {6, {0.9893104456981439, -1.9897417890388642, 0.490110520497282, 0.0}},
       {7, {0.9889873090879945, -1.98941440109071, 0.4898830676404974, 0.0}},
       {8, {0.9886005265788903, -1.9890270185374443, 0.4896275495604965, 0.0}}});
}

// Not in the reference goldens: torch 1.13 float32, RAdam(lr=0.01, weight_decay=0.1) over 10
// steps of the golden sequence.
TEST(RadamTest, MatchesTorchWithWeightDecay) {
  RadamOptions o = RadamWithLr(0.01);
  o.weight_decay = 0.1;
  Radam radam(o, {4});
  ExpectGoldenCheckpoints(radam, 0.01,
                          {{1, {0.9980000257492065, -1.996000051498413, 0.4964999854564667, 0.0}},
                           {5, {0.9845755100250244, -1.9800217151641846, 0.4878162443637848, 0.0}},
                           {6, {0.9843178391456604, -1.9797636270523071, 0.4876028001308441, 0.0}},
                           {10, {0.982637882232666, -1.978118658065796, 0.4863247573375702, 0.0}}},
                          5e-7);
}

// Not in the reference goldens: torch 1.13 float32, RAdam(lr=0.01, betas=(0.8, 0.99), eps=1e-6).
TEST(RadamTest, MatchesTorchWithOtherBetasAndEps) {
  RadamOptions o = RadamWithLr(0.01);
  o.beta1 = 0.8;
  o.beta2 = 0.99;
  o.eps = 1e-6;
  Radam radam(o, {4});
  ExpectGoldenCheckpoints(
      radam, 0.01,
      {{5, {0.9890848994255066, -1.9900001287460327, 0.4906328618526459, 0.0}},
       {6, {0.9882241487503052, -1.9891833066940308, 0.49009954929351807, 0.0}},
       {10, {0.9824037551879883, -1.9839704036712646, 0.48732054233551025, 0.0}}},
      5e-7);
}

TEST(RadamTest, ThresholdIsStrictAndFirstRectifiedStepIsSix) {
  // With the default beta2 the rectified branch starts at t = 6: rho_5 <= 5 < rho_6.
  EXPECT_LE(Rho(0.999, 5), 5.0);
  EXPECT_GT(Rho(0.999, 6), 5.0);
  // With a constant gradient m_hat = g and sqrt(v) = sqrt(1 - beta2^t) |g|, so each step moves by
  // lr (SGD with bias-corrected momentum) until t = 5, then by about lr * rect_t.
  const double lr = 0.01;
  Radam radam(RadamWithLr(lr), {1});
  std::vector<float> p = {0.0f};
  for (int t = 1; t <= 8; ++t) {
    const float before = p[0];
    ASSERT_OK(StepOne(radam, p, {1.0f}, lr));
    const double want = t <= 5 ? lr : lr * Rect(0.999, t);
    EXPECT_NEAR(before - p[0], want, 1e-7) << "step " << t;
  }
}

TEST(RadamTest, NeverRectifiedWhenBeta2IsAtMostTwoThirds) {
  // beta2 = 0.6: rho_inf = 4 < 5. Every step is lr * m_hat = lr for a constant gradient, even
  // where m_hat / sqrt(v_hat) would differ.
  const double lr = 0.01;
  RadamOptions o = RadamWithLr(lr);
  o.beta2 = 0.6;
  Radam radam(o, {1});
  std::vector<float> p = {0.0f};
  for (int t = 1; t <= 100; ++t) ASSERT_OK(StepOne(radam, p, {2.0f}, lr));
  EXPECT_NEAR(p[0], -100 * lr * 2.0, 1e-5);
}

TEST(RadamTest, EpsIsAddedToTheUncorrectedSqrtOfV) {
  // One element, constant gradient g = 1e-3 with eps = 1e-3: at t = 6 the adaptive factor is
  // sqrt(bc2) / (sqrt(v) + eps) with v = bc2 g^2, not 1 / (sqrt(v / bc2) + eps) (Adam's placement).
  const double lr = 0.01, g = 1e-3, eps = 1e-3, beta2 = 0.999;
  RadamOptions o = RadamWithLr(lr);
  o.eps = eps;
  Radam radam(o, {1});
  std::vector<float> p = {0.0f};
  for (int t = 1; t <= 5; ++t) ASSERT_OK(StepOne(radam, p, {static_cast<float>(g)}, lr));
  const float before = p[0];
  ASSERT_OK(StepOne(radam, p, {static_cast<float>(g)}, lr));
  const double bc2 = 1 - std::pow(beta2, 6);
  const double torch_step = lr * g * std::sqrt(bc2) / (std::sqrt(bc2) * g + eps) * Rect(beta2, 6);
  const double adam_style = lr * g / (g + eps) * Rect(beta2, 6);
  EXPECT_NEAR(before - p[0], torch_step, 1e-8);
  EXPECT_GT(std::abs(torch_step - adam_style), 1e-5);
}

TEST(RadamTest, ZeroGradientOnFirstStepLeavesParamsUnchanged) {
  Radam radam(RadamWithLr(0.01), {2});
  std::vector<float> p = {1.0f, -2.0f};
  ASSERT_OK(StepOne(radam, p, {0.0f, 0.0f}, 0.01));
  EXPECT_EQ(p, (std::vector<float>{1.0f, -2.0f}));
}

TEST(RadamTest, CoupledWeightDecayIsAddedToTheGradient) {
  RadamOptions with_decay = RadamWithLr(0.01);
  with_decay.weight_decay = 0.5;
  Radam radam(with_decay, {1});
  std::vector<float> p = {2.0f};
  ASSERT_OK(StepOne(radam, p, {0.0f}, 0.01));
  EXPECT_FLOAT_EQ(p[0], 1.99f);  // d = 0.5 * 2 = 1, first step p -= lr * d
}

TEST(RadamTest, StateIsAllocatedOnFirstStep) {
  Radam radam(RadamOptions{}, {3, 5});
  EXPECT_EQ(radam.StateBytesPerElement(), 8);
  EXPECT_EQ(radam.StateBytes(), 0);
  std::vector<float> p0(3, 1.0f), g0(3, 1.0f), p1(5, 1.0f), g1(5, 1.0f);
  ASSERT_OK(StepTwo(radam, p0, g0, p1, g1, 0.01));
  EXPECT_EQ(radam.StateBytes(), 8 * 8);
}

TEST(RadamTest, OptionsReturnsTheOptionsInForce) {
  RadamOptions o = RadamWithLr(0.02);
  o.beta1 = 0.8;
  o.beta2 = 0.99;
  o.eps = 0.0;
  o.weight_decay = 0.1;
  const OptimizerOptions got = Radam(o, {1}).options();
  ASSERT_TRUE(std::holds_alternative<RadamOptions>(got));
  const RadamOptions& r = std::get<RadamOptions>(got);
  EXPECT_EQ(r.lr, 0.02);
  EXPECT_EQ(r.beta1, 0.8);
  EXPECT_EQ(r.beta2, 0.99);
  EXPECT_EQ(r.eps, 0.0);
  EXPECT_EQ(r.weight_decay, 0.1);
}

}  // namespace
}  // namespace optd
