#include "server/optim/rmsprop.h"

#include <cmath>
#include <variant>
#include <vector>

#include "gtest/gtest.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

RmspropOptions RmspropWith(double lr, double alpha) {
  RmspropOptions o;
  o.lr = lr;
  o.alpha = alpha;
  return o;
}

TEST(RmspropTest, MatchesTorchGolden) {
  Rmsprop rmsprop(RmspropWith(0.01, 0.99), {4});
  ExpectGoldenTrajectory(rmsprop, 0.01,
                         {{{0.9000000999999, -1.900000049999975, 0.40000003333332224, 0.0},
                           {0.8104678438728734, -1.8291119546247607, 0.3550987212674847, 0.0},
                           {0.7301174159932009, -1.7710870629827284, 0.3262892567459646, 0.0}}});
}

TEST(RmspropTest, MatchesTorchGoldenCenteredWithMomentumAndWeightDecay) {
  RmspropOptions o = RmspropWith(0.01, 0.9);
  o.centered = true;
  o.momentum = 0.9;
  o.weight_decay = 0.01;
  Rmsprop rmsprop(o, {4});
  ExpectGoldenTrajectory(rmsprop, 0.01,
                         {{{0.9666666767676737, -1.966666671717171, 0.46666667030965353, 0.0},
                           {0.9055228631576498, -1.9111943604467165, 0.42029280607098696, 0.0},
                           {0.821084975887862, -1.8388170046263066, 0.3671653910700173, 0.0}}});
}

// Not in the reference goldens: torch 1.13 float32, RMSprop(lr=0.01, alpha=0.9, eps=1e-8,
// centered=True, momentum=0.9, weight_decay=0.01, maximize=True).
TEST(RmspropTest, MatchesTorchCenteredWithMomentumWeightDecayAndMaximize) {
  RmspropOptions o = RmspropWith(0.01, 0.9);
  o.centered = true;
  o.momentum = 0.9;
  o.weight_decay = 0.01;
  o.maximize = true;
  Rmsprop rmsprop(o, {4});
  ExpectGoldenTrajectory(rmsprop, 0.01,
                         {{{1.0333333015441895, -2.0333333015441895, 0.5333333611488342, 0.0},
                           {1.0949718952178955, -2.088801622390747, 0.579267680644989, 0.0},
                           {1.180241584777832, -2.1611649990081787, 0.6313632726669312, 0.0}}},
                         5e-7);
}

// Not in the reference goldens: torch 1.13 float32, RMSprop(lr=0.01, alpha=0.99, momentum=0.5)
// over 20 steps of the golden sequence.
TEST(RmspropTest, MatchesTorchWithMomentumOverTwentySteps) {
  RmspropOptions o = RmspropWith(0.01, 0.99);
  o.momentum = 0.5;
  Rmsprop rmsprop(o, {4});
  ExpectGoldenCheckpoints(
      rmsprop, 0.01,
      {{1, {0.9000000953674316, -1.9000000953674316, 0.40000003576278687, 0.0}},
       {10, {-0.2826668918132782, -1.0558664798736572, -0.011996887624263763, 0.0}},
       {20, {-1.1759846210479736, -0.501775324344635, -0.13587871193885803, 0.0}}},
      1e-5);
}

TEST(RmspropTest, FirstStepFollowsTheFormula) {
  const double lr = 0.01, alpha = 0.99, eps = 1e-8, g = 0.3;
  Rmsprop rmsprop(RmspropWith(lr, alpha), {1});
  std::vector<float> p = {1.0f};
  ASSERT_OK(StepOne(rmsprop, p, {static_cast<float>(g)}, lr));
  EXPECT_NEAR(p[0], 1.0 - lr * g / (std::sqrt((1 - alpha) * g * g) + eps), 1e-7);
}

TEST(RmspropTest, CenteredFirstStepDividesByTheStandardDeviation) {
  const double lr = 0.01, alpha = 0.9, eps = 1e-8, g = 0.3;
  RmspropOptions o = RmspropWith(lr, alpha);
  o.centered = true;
  Rmsprop rmsprop(o, {1});
  std::vector<float> p = {1.0f};
  ASSERT_OK(StepOne(rmsprop, p, {static_cast<float>(g)}, lr));
  // square_avg - grad_avg^2 = (1 - alpha) g^2 - (1 - alpha)^2 g^2 = alpha (1 - alpha) g^2.
  EXPECT_NEAR(p[0], 1.0 - lr * g / (std::sqrt(alpha * (1 - alpha) * g * g) + eps), 1e-6);
}

TEST(RmspropTest, MomentumBufferStartsAtZerosAndLrStaysOutsideIt) {
  const double lr = 0.01, alpha = 0.99, momentum = 0.9;
  RmspropOptions o = RmspropWith(lr, alpha);
  o.momentum = momentum;
  Rmsprop with_momentum(o, {1}), without(RmspropWith(lr, alpha), {1});
  std::vector<float> p = {1.0f}, p_without = {1.0f};
  ASSERT_OK(StepOne(with_momentum, p, {1.0f}, lr));
  ASSERT_OK(StepOne(without, p_without, {1.0f}, lr));
  // buf = momentum * 0 + d / avg: the first step equals the step without momentum.
  EXPECT_EQ(p, p_without);
  const double buf1 = 1.0 / (std::sqrt(1 - alpha) + 1e-8);
  // Step 2 with lr = 0 still moves nothing: lr multiplies the whole buffer.
  const float before = p[0];
  ASSERT_OK(StepOne(with_momentum, p, {0.0f}, 0.0));
  EXPECT_EQ(p[0], before);
  // Step 3 with a zero gradient: buf = momentum^2 * buf1 (+ 0), p -= lr * buf.
  ASSERT_OK(StepOne(with_momentum, p, {0.0f}, lr));
  EXPECT_NEAR(p[0], before - lr * momentum * momentum * buf1, 1e-6);
}

TEST(RmspropTest, CenteredStaysFiniteWhenRoundingMakesTheVarianceNegative) {
  // torch 1.13 float32, RMSprop(lr=0.01, alpha=0.5, centered=True) with g = 0.3 on every step:
  // at step 24 square_avg - grad_avg^2 rounds to -7.45e-09 and torch's param becomes NaN.
  RmspropOptions o = RmspropWith(0.01, 0.5);
  o.centered = true;
  Rmsprop rmsprop(o, {1});
  std::vector<float> p = {1.0f};
  for (int t = 1; t <= 30; ++t) {
    ASSERT_OK(StepOne(rmsprop, p, {0.3f}, 0.01));
    ASSERT_TRUE(std::isfinite(p[0])) << "step " << t;
  }
}

TEST(RmspropTest, ZeroGradientLeavesParamsUnchanged) {
  for (bool centered : {false, true}) {
    RmspropOptions o;
    o.centered = centered;
    o.momentum = 0.5;
    Rmsprop rmsprop(o, {2});
    std::vector<float> p = {1.0f, -2.0f};
    ASSERT_OK(StepOne(rmsprop, p, {0.0f, 0.0f}, 0.01));
    EXPECT_EQ(p, (std::vector<float>{1.0f, -2.0f})) << "centered " << centered;
  }
}

TEST(RmspropTest, MaximizeAscendsTheGradient) {
  RmspropOptions o;
  o.maximize = true;
  Rmsprop descend(RmspropOptions{}, {1}), ascend(o, {1});
  std::vector<float> p_descend = {0.0f}, p_ascend = {0.0f};
  ASSERT_OK(StepOne(descend, p_descend, {1.0f}, 0.01));
  ASSERT_OK(StepOne(ascend, p_ascend, {1.0f}, 0.01));
  EXPECT_LT(p_descend[0], 0.0f);
  EXPECT_EQ(p_ascend[0], -p_descend[0]);
}

TEST(RmspropTest, CoupledWeightDecayIsAddedToTheGradient) {
  RmspropOptions with_decay;
  with_decay.weight_decay = 0.5;
  Rmsprop decayed(with_decay, {1}), plain(RmspropOptions{}, {1});
  std::vector<float> p_decayed = {2.0f}, p_plain = {2.0f};
  ASSERT_OK(StepOne(decayed, p_decayed, {0.0f}, 0.01));  // d = 0.5 * 2
  ASSERT_OK(StepOne(plain, p_plain, {1.0f}, 0.01));      // d = 1
  EXPECT_EQ(p_decayed[0], p_plain[0]);
  EXPECT_LT(p_decayed[0], 2.0f);
}

TEST(RmspropTest, StateBytesCountTheBuffersInUse) {
  RmspropOptions o;
  EXPECT_EQ(Rmsprop(o, {1}).StateBytesPerElement(), 4);
  o.momentum = 0.9;
  EXPECT_EQ(Rmsprop(o, {1}).StateBytesPerElement(), 8);
  o.centered = true;
  EXPECT_EQ(Rmsprop(o, {1}).StateBytesPerElement(), 12);
  o.momentum = 0.0;
  EXPECT_EQ(Rmsprop(o, {1}).StateBytesPerElement(), 8);

  o.momentum = 0.9;
  Rmsprop rmsprop(o, {3, 5});
  EXPECT_EQ(rmsprop.StateBytes(), 0);
  std::vector<float> p0(3, 1.0f), g0(3, 1.0f), p1(5, 1.0f), g1(5, 1.0f);
  ASSERT_OK(StepTwo(rmsprop, p0, g0, p1, g1, 0.01));
  EXPECT_EQ(rmsprop.StateBytes(), 8 * 12);
}

TEST(RmspropTest, OptionsReturnsTheOptionsInForce) {
  RmspropOptions o = RmspropWith(0.02, 0.9);
  o.eps = 1e-6;
  o.weight_decay = 0.1;
  o.momentum = 0.5;
  o.centered = true;
  o.maximize = true;
  const OptimizerOptions got = Rmsprop(o, {1}).options();
  ASSERT_TRUE(std::holds_alternative<RmspropOptions>(got));
  const RmspropOptions& r = std::get<RmspropOptions>(got);
  EXPECT_EQ(r.lr, 0.02);
  EXPECT_EQ(r.alpha, 0.9);
  EXPECT_EQ(r.eps, 1e-6);
  EXPECT_EQ(r.weight_decay, 0.1);
  EXPECT_EQ(r.momentum, 0.5);
  EXPECT_TRUE(r.centered);
  EXPECT_TRUE(r.maximize);
}

}  // namespace
}  // namespace optd
