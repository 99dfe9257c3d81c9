#include "server/optim/normalized_gd.h"

#include <cmath>
#include <limits>
#include <variant>
#include <vector>

#include "gtest/gtest.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

using Norm = NormalizedGdOptions::Norm;
using Guard = NormalizedGdOptions::Guard;

NormalizedGdOptions Options(double lr, double eps, Norm norm = Norm::kGlobal,
                            Guard guard = Guard::kAddEps) {
  NormalizedGdOptions o;
  o.lr = lr;
  o.eps = eps;
  o.norm = norm;
  o.guard = guard;
  return o;
}

TEST(NormalizedGdTest, GlobalNormDividesEveryTensorByTheNormOfAllGradients) {
  NormalizedGd ngd(Options(1.0, 1e-6), {2, 1});
  std::vector<float> p0 = {1.0f, 1.0f}, p1 = {1.0f};
  ASSERT_OK(StepTwo(ngd, p0, {3.0f, 0.0f}, p1, {4.0f}, 1.0));
  const double coef = 1.0 / (5.0 + 1e-6);  // ||(3, 0, 4)|| = 5
  EXPECT_NEAR(p0[0], 1.0 - 3 * coef, 1e-7);
  EXPECT_EQ(p0[1], 1.0f);
  EXPECT_NEAR(p1[0], 1.0 - 4 * coef, 1e-7);
}

TEST(NormalizedGdTest, PerTensorNormDividesEachTensorByItsOwnNorm) {
  NormalizedGd ngd(Options(1.0, 1e-6, Norm::kPerTensor), {2, 2});
  std::vector<float> p0 = {1.0f, 1.0f}, p1 = {1.0f, 1.0f};
  ASSERT_OK(StepTwo(ngd, p0, {3.0f, 4.0f}, p1, {0.0f, 2.0f}, 1.0));
  const double coef0 = 1.0 / (5.0 + 1e-6), coef1 = 1.0 / (2.0 + 1e-6);
  EXPECT_NEAR(p0[0], 1.0 - 3 * coef0, 1e-7);
  EXPECT_NEAR(p0[1], 1.0 - 4 * coef0, 1e-7);
  EXPECT_EQ(p1[0], 1.0f);
  EXPECT_NEAR(p1[1], 1.0 - 2 * coef1, 1e-7);
}

TEST(NormalizedGdTest, StepLengthIsLrWhenTheNormIsLarge) {
  NormalizedGd ngd(Options(0.1, 1e-6), {2});
  std::vector<float> p = {0.0f, 0.0f};
  ASSERT_OK(StepOne(ngd, p, {300.0f, 400.0f}, 0.1));
  EXPECT_NEAR(std::hypot(p[0], p[1]), 0.1, 1e-7);
}

TEST(NormalizedGdTest, StepUsesTheLrPassedToStep) {
  NormalizedGd ngd(Options(0.1, 0.0), {1});
  std::vector<float> p = {1.0f};
  ASSERT_OK(StepOne(ngd, p, {-7.0f}, 0.5));
  EXPECT_FLOAT_EQ(p[0], 1.5f);
}

TEST(NormalizedGdTest, ZeroGradientGivesExactlyNoUpdateWithPositiveEps) {
  NormalizedGd ngd(Options(0.1, 1e-6), {2});
  std::vector<float> p = {1.0f, -2.0f};
  ASSERT_OK(StepOne(ngd, p, {0.0f, 0.0f}, 0.1));
  EXPECT_EQ(p, (std::vector<float>{1.0f, -2.0f}));
}

TEST(NormalizedGdTest, ZeroGradientGivesExactlyNoUpdateWithZeroEps) {
  for (Guard guard : {Guard::kAddEps, Guard::kMaxEps}) {
    for (Norm norm : {Norm::kGlobal, Norm::kPerTensor}) {
      NormalizedGd ngd(Options(0.1, 0.0, norm, guard), {2, 1});
      std::vector<float> p0 = {1.0f, -2.0f}, p1 = {3.0f};
      ASSERT_OK(StepTwo(ngd, p0, {0.0f, 0.0f}, p1, {0.0f}, 0.1));
      EXPECT_EQ(p0, (std::vector<float>{1.0f, -2.0f}));  // not NaN
      EXPECT_EQ(p1, (std::vector<float>{3.0f}));
    }
  }
}

TEST(NormalizedGdTest, PerTensorLeavesAZeroGradientTensorUnchangedAndMovesTheOthers) {
  NormalizedGd ngd(Options(1.0, 0.0, Norm::kPerTensor), {1, 1});
  std::vector<float> p0 = {1.0f}, p1 = {1.0f};
  ASSERT_OK(StepTwo(ngd, p0, {0.0f}, p1, {0.5f}, 1.0));
  EXPECT_EQ(p0[0], 1.0f);
  EXPECT_EQ(p1[0], 0.0f);
}

TEST(NormalizedGdTest, MaxEpsGuardDividesByEpsBelowEps) {
  NormalizedGd ngd(Options(0.1, 1.0, Norm::kGlobal, Guard::kMaxEps), {2});
  std::vector<float> p = {0.0f, 0.0f};
  ASSERT_OK(StepOne(ngd, p, {0.3f, 0.4f}, 0.1));  // ||g|| = 0.5 < eps = 1
  EXPECT_NEAR(p[0], -0.03f, 1e-8);
  EXPECT_NEAR(p[1], -0.04f, 1e-8);
}

TEST(NormalizedGdTest, MaxEpsGuardTakesExactlyLrLengthStepsAboveEps) {
  NormalizedGd ngd(Options(0.1, 1.0, Norm::kGlobal, Guard::kMaxEps), {2});
  std::vector<float> p = {0.0f, 0.0f};
  ASSERT_OK(StepOne(ngd, p, {3.0f, 4.0f}, 0.1));  // ||g|| = 5 > eps: / 5, not / (5 + 1)
  EXPECT_NEAR(p[0], -0.06f, 1e-8);
  EXPECT_NEAR(p[1], -0.08f, 1e-8);
}

TEST(NormalizedGdTest, TinyGradientWithZeroEpsStaysFinite) {
  NormalizedGd ngd(Options(1.0, 0.0), {1});
  std::vector<float> p = {5.0f};
  // lr / ||g|| overflows a float here; the update must still be the unit step.
  ASSERT_OK(StepOne(ngd, p, {std::numeric_limits<float>::denorm_min()}, 1.0));
  EXPECT_EQ(p[0], 4.0f);
}

TEST(NormalizedGdTest, HasNoState) {
  NormalizedGd ngd(Options(0.1, 1e-6), {3});
  std::vector<float> p(3, 1.0f);
  ASSERT_OK(StepOne(ngd, p, std::vector<float>(3, 1.0f), 0.1));
  EXPECT_EQ(ngd.StateBytes(), 0);
  EXPECT_EQ(ngd.StateBytesPerElement(), 0);
}

TEST(NormalizedGdTest, OptionsReturnsTheOptionsInForce) {
  const OptimizerOptions got =
      NormalizedGd(Options(0.2, 1e-3, Norm::kPerTensor, Guard::kMaxEps), {1}).options();
  ASSERT_TRUE(std::holds_alternative<NormalizedGdOptions>(got));
  const NormalizedGdOptions& o = std::get<NormalizedGdOptions>(got);
  EXPECT_EQ(o.lr, 0.2);
  EXPECT_EQ(o.eps, 1e-3);
  EXPECT_EQ(o.norm, Norm::kPerTensor);
  EXPECT_EQ(o.guard, Guard::kMaxEps);
}

}  // namespace
}  // namespace optd
