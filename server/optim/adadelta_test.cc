#include "server/optim/adadelta.h"

#include <cmath>
#include <variant>
#include <vector>

#include "gtest/gtest.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

AdadeltaOptions AdadeltaWith(double lr, double rho, double eps) {
  AdadeltaOptions o;
  o.lr = lr;
  o.rho = rho;
  o.eps = eps;
  return o;
}

TEST(AdadeltaTest, MatchesTorchGolden) {
  Adadelta adadelta(AdadeltaWith(1.0, 0.9, 1e-6), {4});
  ExpectGoldenTrajectory(adadelta, 1.0,
                         {{{0.9968393022937949, -1.9968381175504386, 0.496837898007285, 0.0},
                           {0.9928001135261282, -1.9935941052750925, 0.49475291250325876, 0.0},
                           {0.9879325091877365, -1.9902937282932203, 0.4932485513665843, 0.0}}});
}

// Not in the reference goldens: torch 1.13 float32, Adadelta(lr=1.0, rho=0.9, eps=1e-6).
TEST(AdadeltaTest, MatchesTorchFloat32) {
  Adadelta adadelta(AdadeltaWith(1.0, 0.9, 1e-6), {4});
  ExpectGoldenTrajectory(adadelta, 1.0,
                         {{{0.9968392848968506, -1.996838092803955, 0.49683788418769836, 0.0},
                           {0.9928001165390015, -1.9935940504074097, 0.4947528839111328, 0.0},
                           {0.9879325032234192, -1.9902936220169067, 0.49324852228164673, 0.0}}},
                         1e-7);
}

// Not in the reference goldens: torch 1.13 float32,
// Adadelta(lr=0.5, rho=0.95, eps=1e-5, weight_decay=0.05, maximize=True).
TEST(AdadeltaTest, MatchesTorchWithWeightDecayAndMaximize) {
  AdadeltaOptions o = AdadeltaWith(0.5, 0.95, 1e-5);
  o.weight_decay = 0.05;
  o.maximize = true;
  Adadelta adadelta(o, {4});
  ExpectGoldenTrajectory(adadelta, 0.5,
                         {{{1.00680410861969, -2.0070013999938965, 0.5070617198944092, 0.0},
                           {1.0160975456237793, -2.0140788555145264, 0.5112708210945129, 0.0},
                           {1.0275202989578247, -2.0211994647979736, 0.513951301574707, 0.0}}},
                         1e-7);
}

TEST(AdadeltaTest, FirstStepFollowsTheFormula) {
  const double lr = 1.0, rho = 0.9, eps = 1e-6, g = 0.5;
  Adadelta adadelta(AdadeltaWith(lr, rho, eps), {1});
  std::vector<float> p = {1.0f};
  ASSERT_OK(StepOne(adadelta, p, {static_cast<float>(g)}, lr));
  // square_avg = (1 - rho) g^2 and acc_delta = 0: delta = sqrt(eps) / sqrt(square_avg + eps) * g.
  const double delta = std::sqrt(eps) / std::sqrt((1 - rho) * g * g + eps) * g;
  EXPECT_NEAR(p[0], 1.0 - lr * delta, 1e-7);
}

TEST(AdadeltaTest, TheAccumulatorTakesTheDeltaBeforeLr) {
  // acc_delta accumulates the un-scaled delta, so every delta is the same whatever lr, and the
  // displacement is proportional to lr.
  Adadelta full(AdadeltaWith(1.0, 0.9, 1e-6), {4});
  Adadelta half(AdadeltaWith(0.5, 0.9, 1e-6), {4});
  std::vector<float> p_full = GoldenInitialParams(), p_half = GoldenInitialParams();
  for (int t = 1; t <= 5; ++t) {
    ASSERT_OK(StepOne(full, p_full, GoldenGradient(t), 1.0));
    ASSERT_OK(StepOne(half, p_half, GoldenGradient(t), 0.5));
  }
  const std::vector<float> p0 = GoldenInitialParams();
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(p0[i] - p_half[i], 0.5 * (p0[i] - p_full[i]), 5e-7) << "element " << i;
  }
}

TEST(AdadeltaTest, ZeroGradientLeavesParamsUnchanged) {
  Adadelta adadelta(AdadeltaOptions{}, {2});
  std::vector<float> p = {1.0f, -2.0f};
  for (int t = 0; t < 3; ++t) ASSERT_OK(StepOne(adadelta, p, {0.0f, 0.0f}, 1.0));
  EXPECT_EQ(p, (std::vector<float>{1.0f, -2.0f}));
}

TEST(AdadeltaTest, MaximizeAscendsTheGradient) {
  AdadeltaOptions o;
  o.maximize = true;
  Adadelta descend(AdadeltaOptions{}, {1}), ascend(o, {1});
  std::vector<float> p_descend = {0.0f}, p_ascend = {0.0f};
  ASSERT_OK(StepOne(descend, p_descend, {1.0f}, 1.0));
  ASSERT_OK(StepOne(ascend, p_ascend, {1.0f}, 1.0));
  EXPECT_LT(p_descend[0], 0.0f);
  EXPECT_EQ(p_ascend[0], -p_descend[0]);
}

TEST(AdadeltaTest, CoupledWeightDecayIsAddedToTheGradient) {
  AdadeltaOptions with_decay;
  with_decay.weight_decay = 0.5;
  Adadelta decayed(with_decay, {1}), plain(AdadeltaOptions{}, {1});
  std::vector<float> p_decayed = {2.0f}, p_plain = {2.0f};
  ASSERT_OK(StepOne(decayed, p_decayed, {0.0f}, 1.0));  // d = 0.5 * 2
  ASSERT_OK(StepOne(plain, p_plain, {1.0f}, 1.0));      // d = 1
  EXPECT_EQ(p_decayed[0], p_plain[0]);
  EXPECT_LT(p_decayed[0], 2.0f);
}

TEST(AdadeltaTest, StepUsesTheLrPassedToStep) {
  Adadelta adadelta(AdadeltaOptions{}, {1}), reference(AdadeltaWith(0.25, 0.9, 1e-6), {1});
  std::vector<float> p = {1.0f}, p_reference = {1.0f};
  ASSERT_OK(StepOne(adadelta, p, {1.0f}, 0.25));
  ASSERT_OK(StepOne(reference, p_reference, {1.0f}, 0.25));
  EXPECT_EQ(p, p_reference);
  EXPECT_LT(p[0], 1.0f);
}

TEST(AdadeltaTest, StateIsAllocatedOnFirstStep) {
  Adadelta adadelta(AdadeltaOptions{}, {3, 5});
  EXPECT_EQ(adadelta.StateBytesPerElement(), 8);
  EXPECT_EQ(adadelta.StateBytes(), 0);
  std::vector<float> p0(3, 1.0f), g0(3, 1.0f), p1(5, 1.0f), g1(5, 1.0f);
  ASSERT_OK(StepTwo(adadelta, p0, g0, p1, g1, 1.0));
  EXPECT_EQ(adadelta.StateBytes(), 8 * 8);
}

TEST(AdadeltaTest, OptionsReturnsTheOptionsInForce) {
  AdadeltaOptions o = AdadeltaWith(0.5, 0.95, 1e-7);
  o.weight_decay = 0.01;
  o.maximize = true;
  const OptimizerOptions got = Adadelta(o, {1}).options();
  ASSERT_TRUE(std::holds_alternative<AdadeltaOptions>(got));
  const AdadeltaOptions& a = std::get<AdadeltaOptions>(got);
  EXPECT_EQ(a.lr, 0.5);
  EXPECT_EQ(a.rho, 0.95);
  EXPECT_EQ(a.eps, 1e-7);
  EXPECT_EQ(a.weight_decay, 0.01);
  EXPECT_TRUE(a.maximize);
}

}  // namespace
}  // namespace optd
