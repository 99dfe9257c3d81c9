#include "server/optim/schedule.h"

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

using ::testing::HasSubstr;

constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kPi = 3.141592653589793;

// Default options of type T, changed by `mutate`.
template <typename T, typename F>
ScheduleOptions With(F mutate) {
  T options;
  mutate(options);
  return options;
}

LrSchedule MakeSchedule(const ScheduleOptions& options, double base_lr) {
  absl::StatusOr<LrSchedule> schedule = LrSchedule::Create(options, base_lr);
  EXPECT_OK(schedule);
  return *std::move(schedule);
}

// The first n lrs (Current() before each Advance), advancing without a loss.
std::vector<double> Lrs(LrSchedule schedule, int n) {
  std::vector<double> lrs;
  for (int k = 0; k < n; ++k) {
    lrs.push_back(schedule.Current());
    schedule.Advance();
  }
  return lrs;
}

// ---------------------------------------------------------------------------------------------
// Parity with torch.optim.lr_scheduler 1.13 over 1000 updates.
//
// The expected values were recorded from Debian's python3-torch 1.13 (torch.__version__ ==
// "1.13.0a0") with /usr/bin/python3 and this script (one line per case below):
//
//   import math, torch
//   from torch.optim import lr_scheduler as S
//   def run(base, make, losses=None, n=1000):
//       p = torch.nn.Parameter(torch.zeros(1))
//       opt = torch.optim.SGD([p], lr=base)
//       sch = make(opt)
//       out = []
//       for k in range(n):
//           out.append(opt.param_groups[0]["lr"])  # the lr optimizer step k uses
//           opt.step()
//           if losses is None: sch.step()
//           else: sch.step(losses[k])
//       return out
//   def loss(k):  # PlateauLoss() below
//       seg, r = k // 25, k % 25
//       level = 1.0 / (1 + seg)
//       if seg % 3 == 0: return level + (25 - r) * 1e-3
//       if seg % 3 == 1: return level
//       return level * (1 - 5e-5 * r)
//   def inv_sqrt(W, timescale=None):  # transformers.get_inverse_sqrt_schedule's lambda
//       if timescale is None: timescale = W or 10_000
//       def lam(s):
//           if s < W: return float(s) / float(max(1, W))
//           shift = timescale - W
//           return 1.0 / math.sqrt((s + shift) / timescale)
//       return lam
//   L = [loss(k) for k in range(1000)]
//
// The whole 1000-value sequences were compared once (max relative difference 2.3e-13, from
// CosineAnnealingLR, whose chainable form accumulates rounding; OneCycle, ReduceLROnPlateau and
// LambdaLR match bit for bit); the checkpoints below are a sample including every phase boundary.

// Must produce exactly the Python loss(k) above: every operation is one IEEE double operation.
double PlateauLoss(int64_t k) {
  const int64_t seg = k / 25;
  const int64_t r = k % 25;
  const double level = 1.0 / static_cast<double>(1 + seg);
  if (seg % 3 == 0) return level + static_cast<double>(25 - r) * 1e-3;
  if (seg % 3 == 1) return level;
  return level * (1 - 5e-5 * static_cast<double>(r));
}

enum class Losses { kNone, kPlateau, kNegatedPlateau, kOne };

struct Checkpoint {
  int64_t k;
  double lr;
};

struct TorchCase {
  std::string name;
  std::string python;  // the torch call that produced `want`
  ScheduleOptions options;
  double base_lr;
  Losses losses;
  std::vector<Checkpoint> want;
};

void PrintTo(const TorchCase& c, std::ostream* os) { *os << c.name << ": " << c.python; }

class TorchParityTest : public ::testing::TestWithParam<TorchCase> {};

TEST_P(TorchParityTest, MatchesTorchAtCheckpoints) {
  const TorchCase& c = GetParam();
  LrSchedule schedule = MakeSchedule(c.options, c.base_lr);
  size_t next = 0;
  for (int64_t k = 0; next < c.want.size(); ++k) {
    ASSERT_EQ(schedule.steps(), k);
    if (c.want[next].k == k) {
      const double want = c.want[next].lr;
      // 1e-12 relative; torch's exact zeros (cosine minima) must be reproduced exactly.
      EXPECT_NEAR(schedule.Current(), want, 1e-12 * std::abs(want)) << "k = " << k;
      ++next;
    }
    switch (c.losses) {
      case Losses::kNone:
        schedule.Advance();
        break;
      case Losses::kPlateau:
        schedule.Advance(PlateauLoss(k));
        break;
      case Losses::kNegatedPlateau:
        schedule.Advance(-PlateauLoss(k));
        break;
      case Losses::kOne:
        schedule.Advance(1.0);
        break;
    }
  }
}

using Plateau = ReduceOnPlateauScheduleOptions;

INSTANTIATE_TEST_SUITE_P(
    Torch113, TorchParityTest,
    ::testing::Values(
        TorchCase{"StepA",
                  "run(0.1, lambda o: S.StepLR(o, step_size=30, gamma=0.1))",
                  With<StepScheduleOptions>([](auto& o) {
                    o.step_size = 30;
                    o.gamma = 0.1;
                  }),
                  0.1,
                  Losses::kNone,
                  {{0, 0.1},
                   {1, 0.1},
                   {2, 0.1},
                   {5, 0.1},
                   {10, 0.1},
                   {29, 0.1},
                   {30, 0.010000000000000002},
                   {59, 0.010000000000000002},
                   {60, 0.0010000000000000002},
                   {99, 0.00010000000000000003},
                   {500, 1.000000000000001e-17},
                   {999, 1.0000000000000019e-34}}},
        TorchCase{"StepB",
                  "run(0.37, lambda o: S.StepLR(o, step_size=7, gamma=0.5))",
                  With<StepScheduleOptions>([](auto& o) {
                    o.step_size = 7;
                    o.gamma = 0.5;
                  }),
                  0.37,
                  Losses::kNone,
                  {{0, 0.37},
                   {1, 0.37},
                   {2, 0.37},
                   {5, 0.37},
                   {6, 0.37},
                   {7, 0.185},
                   {10, 0.185},
                   {13, 0.185},
                   {14, 0.0925},
                   {99, 2.25830078125e-05},
                   {500, 1.5670109524204556e-22},
                   {999, 6.636549527042334e-44}}},
        TorchCase{"MultiStepA",
                  "run(0.1, lambda o: S.MultiStepLR(o, milestones=[30, 80, 500], gamma=0.1))",
                  With<MultiStepScheduleOptions>([](auto& o) {
                    o.milestones = {30, 80, 500};
                  }),
                  0.1,
                  Losses::kNone,
                  {{0, 0.1},
                   {1, 0.1},
                   {2, 0.1},
                   {5, 0.1},
                   {10, 0.1},
                   {29, 0.1},
                   {30, 0.010000000000000002},
                   {79, 0.010000000000000002},
                   {80, 0.0010000000000000002},
                   {99, 0.0010000000000000002},
                   {499, 0.0010000000000000002},
                   {500, 0.00010000000000000003},
                   {999, 0.00010000000000000003}}},
        TorchCase{"MultiStepBUnsortedWithRepeats",
                  "run(0.37, lambda o: S.MultiStepLR(o, milestones=[200, 5, 5, 100, 999], "
                  "gamma=0.5))",
                  With<MultiStepScheduleOptions>([](auto& o) {
                    o.milestones = {200, 5, 5, 100, 999};
                    o.gamma = 0.5;
                  }),
                  0.37,
                  Losses::kNone,
                  {{0, 0.37},
                   {1, 0.37},
                   {2, 0.37},
                   {4, 0.37},
                   {5, 0.0925},
                   {6, 0.0925},
                   {10, 0.0925},
                   {99, 0.0925},
                   {100, 0.04625},
                   {200, 0.023125},
                   {500, 0.023125},
                   {998, 0.023125},
                   {999, 0.0115625}}},
        TorchCase{"ExponentialA",
                  "run(0.1, lambda o: S.ExponentialLR(o, gamma=0.99))",
                  With<ExponentialScheduleOptions>([](auto& o) { o.gamma = 0.99; }),
                  0.1,
                  Losses::kNone,
                  {{0, 0.1},
                   {1, 0.099},
                   {2, 0.09801},
                   {5, 0.09509900499},
                   {10, 0.09043820750088044},
                   {99, 0.03697296376497267},
                   {500, 0.0006570483042414618},
                   {999, 4.360732061682621e-06}}},
        TorchCase{"ExponentialB",
                  "run(0.37, lambda o: S.ExponentialLR(o, gamma=0.95))",
                  With<ExponentialScheduleOptions>([](auto& o) { o.gamma = 0.95; }),
                  0.37,
                  Losses::kNone,
                  {{0, 0.37},
                   {1, 0.3515},
                   {2, 0.33392499999999997},
                   {5, 0.2862989468749999},
                   {10, 0.22153266751820005},
                   {99, 0.0023058903279195575},
                   {500, 2.691561877732454e-12},
                   {999, 2.0610257017532435e-23}}},
        TorchCase{"CosineAPeriodicPastTMax",
                  "run(0.1, lambda o: S.CosineAnnealingLR(o, T_max=100))",
                  With<CosineAnnealingScheduleOptions>([](auto& o) { o.t_max = 100; }),
                  0.1,
                  Losses::kNone,
                  {{0, 0.1},
                   {1, 0.09997532801828658},
                   {2, 0.09990133642141358},
                   {5, 0.09938441702975688},
                   {10, 0.09755282581475769},
                   {50, 0.05000000000000004},
                   {99, 2.4671981713420017e-05},
                   {100, 0.0},
                   {150, 0.04999999999999995},
                   {200, 0.09999999999999994},
                   {301, 2.467198171342e-05},
                   {500, 0.0},
                   {999, 0.09997532801828675}}},
        TorchCase{"CosineBWithEtaMin",
                  "run(0.37, lambda o: S.CosineAnnealingLR(o, T_max=37, eta_min=0.01))",
                  With<CosineAnnealingScheduleOptions>([](auto& o) {
                    o.t_max = 37;
                    o.eta_min = 0.01;
                  }),
                  0.37,
                  Losses::kNone,
                  {{0, 0.37},
                   {1, 0.36935154793765473},
                   {2, 0.3674108638625875},
                   {5, 0.35402112826986437},
                   {10, 0.30892145021021455},
                   {36, 0.010648452062345225},
                   {37, 0.01},
                   {74, 0.36999999999999916},
                   {75, 0.3693515479376539},
                   {99, 0.09562468895969792},
                   {500, 0.1976394165753112},
                   {999, 0.01}}},
        TorchCase{"LinearADefaults",
                  "run(0.1, lambda o: S.LinearLR(o))",
                  LinearWarmupScheduleOptions{},
                  0.1,
                  Losses::kNone,
                  {{0, 0.03333333333333333},
                   {1, 0.04666666666666667},
                   {2, 0.060000000000000005},
                   {3, 0.07333333333333335},
                   {4, 0.08666666666666668},
                   {5, 0.1},
                   {6, 0.1},
                   {10, 0.1},
                   {99, 0.1},
                   {500, 0.1},
                   {999, 0.1}}},
        TorchCase{"LinearBDecay",
                  "run(0.37, lambda o: S.LinearLR(o, start_factor=1.0, end_factor=0.05, "
                  "total_iters=300))",
                  With<LinearWarmupScheduleOptions>([](auto& o) {
                    o.start_factor = 1.0;
                    o.end_factor = 0.05;
                    o.total_iters = 300;
                  }),
                  0.37,
                  Losses::kNone,
                  {{0, 0.37},
                   {1, 0.3688283333333333},
                   {2, 0.3676566666666667},
                   {5, 0.36414166666666664},
                   {10, 0.3582833333333333},
                   {99, 0.25400499999999926},
                   {150, 0.19424999999999942},
                   {299, 0.019671666666666636},
                   {300, 0.018499999999999968},
                   {301, 0.018499999999999968},
                   {500, 0.018499999999999968},
                   {999, 0.018499999999999968}}},
        TorchCase{"OneCycleADefaults",
                  "run(0.5, lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=1000, "
                  "cycle_momentum=False))",
                  With<OneCycleScheduleOptions>([](auto& o) {
                    o.max_lr = 0.1;
                    o.total_steps = 1000;
                  }),
                  0.5,
                  Losses::kNone,
                  {{0, 0.0040000000000000036},
                   {1, 0.00400264950421679},
                   {2, 0.004010597724372428},
                   {5, 0.004066222981815026},
                   {10, 0.004264709198788408},
                   {99, 0.027709412669592093},
                   {298, 0.09999735049578322},
                   {299, 0.1},
                   {300, 0.09999949645161448},
                   {301, 0.09999798581660033},
                   {500, 0.08099881015401794},
                   {998, 9.035483855369959e-07},
                   {999, 4e-07}}},
        TorchCase{"OneCycleBThreePhaseLinear",
                  "run(0.5, lambda o: S.OneCycleLR(o, max_lr=0.37, total_steps=1000, "
                  "pct_start=0.25, anneal_strategy='linear', div_factor=10.0, "
                  "final_div_factor=100.0, three_phase=True, cycle_momentum=False))",
                  With<OneCycleScheduleOptions>([](auto& o) {
                    o.max_lr = 0.37;
                    o.total_steps = 1000;
                    o.pct_start = 0.25;
                    o.anneal_strategy = OneCycleScheduleOptions::Anneal::kLinear;
                    o.div_factor = 10.0;
                    o.final_div_factor = 100.0;
                    o.three_phase = true;
                  }),
                  0.5,
                  Losses::kNone,
                  {{0, 0.037},
                   {1, 0.038337349397590356},
                   {2, 0.03967469879518072},
                   {5, 0.0436867469879518},
                   {10, 0.05037349397590361},
                   {99, 0.1693975903614458},
                   {248, 0.3686626506024096},
                   {249, 0.37},
                   {250, 0.36866265060240966},
                   {498, 0.03699999999999998},
                   {499, 0.036926886227544906},
                   {500, 0.03685377245508982},
                   {501, 0.03678065868263473},
                   {998, 0.00044311377245509487},
                   {999, 0.00037000000000000227}}},
        TorchCase{"OneCycleCTwentyStepsAll",
                  "run(0.5, lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=20, "
                  "cycle_momentum=False), n=20)",
                  With<OneCycleScheduleOptions>([](auto& o) {
                    o.max_lr = 1.0;
                    o.total_steps = 20;
                  }),
                  0.5,
                  Losses::kNone,
                  {{0, 0.040000000000000036},
                   {1, 0.1316718427000253},
                   {2, 0.3716718427000253},
                   {3, 0.6683281572999747},
                   {4, 0.9083281572999747},
                   {5, 1.0},
                   {6, 0.9874640062350873},
                   {7, 0.9504846320134737},
                   {8, 0.89091617757105},
                   {9, 0.8117456539497631},
                   {10, 0.7169430017913008},
                   {11, 0.6112620219362893},
                   {12, 0.500002},
                   {13, 0.38874197806371075},
                   {14, 0.28306099820869923},
                   {15, 0.18825834605023697},
                   {16, 0.10908782242895004},
                   {17, 0.049519367986526286},
                   {18, 0.012539993764912554},
                   {19, 4e-06}}},
        TorchCase{"PlateauAMinRelCooldown",
                  "run(0.1, lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=2, "
                  "cooldown=1), L)",
                  With<Plateau>([](auto& o) {
                    o.factor = 0.5;
                    o.patience = 2;
                    o.cooldown = 1;
                  }),
                  0.1,
                  Losses::kPlateau,
                  {{0, 0.1},
                   {1, 0.1},
                   {2, 0.1},
                   {5, 0.1},
                   {10, 0.1},
                   {28, 0.1},
                   {29, 0.05},
                   {33, 0.025},
                   {49, 0.0015625},
                   {99, 0.0015625},
                   {103, 0.0015625},
                   {104, 0.00078125},
                   {152, 1.220703125e-05},
                   {239, 1.1920928955078126e-08},  // lr - lr * factor < eps: no more reductions
                   {240, 1.1920928955078126e-08},
                   {500, 1.1920928955078126e-08},
                   {999, 1.1920928955078126e-08}}},
        TorchCase{"PlateauBMaxAbsMinLr",
                  "run(0.37, lambda o: S.ReduceLROnPlateau(o, mode='max', factor=0.8, "
                  "patience=4, threshold=0.001, threshold_mode='abs', cooldown=3, min_lr=1e-3), "
                  "[-x for x in L])",
                  With<Plateau>([](auto& o) {
                    o.mode = Plateau::Mode::kMax;
                    o.factor = 0.8;
                    o.patience = 4;
                    o.threshold = 0.001;
                    o.threshold_mode = Plateau::ThresholdMode::kAbs;
                    o.cooldown = 3;
                    o.min_lr = 1e-3;
                  }),
                  0.37,
                  Losses::kNegatedPlateau,
                  {{0, 0.37},
                   {1, 0.37},
                   {2, 0.37},
                   {5, 0.37},
                   {10, 0.37},
                   {30, 0.37},
                   {31, 0.296},
                   {39, 0.2368},
                   {99, 0.09699328000000002},
                   {106, 0.07759462400000001},
                   {181, 0.02034096511385601},
                   {304, 0.0011182563831435334},
                   {305, 0.001},  // clamped at min_lr
                   {306, 0.001},
                   {500, 0.001},
                   {999, 0.001}}},
        TorchCase{"PlateauFlatSpecExample",
                  "run(1.0, lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=2, "
                  "cooldown=1), [1.0] * 12, n=12)",
                  With<Plateau>([](auto& o) {
                    o.factor = 0.5;
                    o.patience = 2;
                    o.cooldown = 1;
                  }),
                  1.0,
                  Losses::kOne,
                  {{0, 1.0},
                   {1, 1.0},
                   {2, 1.0},
                   {3, 1.0},
                   {4, 0.5},
                   {5, 0.5},
                   {6, 0.5},
                   {7, 0.5},
                   {8, 0.25},
                   {9, 0.25},
                   {10, 0.25},
                   {11, 0.25}}},
        TorchCase{"InverseSqrtA",
                  "run(0.1, lambda o: S.LambdaLR(o, inv_sqrt(100)))",
                  With<InverseSqrtScheduleOptions>([](auto& o) { o.warmup_steps = 100; }),
                  0.1,
                  Losses::kNone,
                  {{0, 0.0},
                   {1, 0.001},
                   {2, 0.002},
                   {5, 0.005000000000000001},
                   {10, 0.010000000000000002},
                   {50, 0.05},
                   {99, 0.099},
                   {100, 0.1},
                   {101, 0.09950371902099893},
                   {500, 0.044721359549995794},
                   {999, 0.03163859985841663}}},
        TorchCase{"InverseSqrtBNoWarmup",
                  "run(0.37, lambda o: S.LambdaLR(o, inv_sqrt(0)))",
                  InverseSqrtScheduleOptions{},
                  0.37,
                  Losses::kNone,
                  {{0, 0.37},
                   {1, 0.36998150138738445},
                   {2, 0.3699630055490752},
                   {5, 0.36990753467305315},
                   {10, 0.36981513863447607},
                   {99, 0.36818198765994975},
                   {500, 0.36108302699095723},
                   {999, 0.35279719462146475}}},
        TorchCase{"InverseSqrtCTimescale",
                  "run(0.37, lambda o: S.LambdaLR(o, inv_sqrt(50, 20)))",
                  With<InverseSqrtScheduleOptions>([](auto& o) {
                    o.warmup_steps = 50;
                    o.timescale = 20;
                  }),
                  0.37,
                  Losses::kNone,
                  {{0, 0.0},
                   {1, 0.0074},
                   {2, 0.0148},
                   {5, 0.037},
                   {10, 0.074},
                   {49, 0.3626},
                   {50, 0.37},
                   {51, 0.36108302699095723},
                   {99, 0.19920130376152123},
                   {500, 0.0763251722231507},
                   {999, 0.05315631096354258}}}),
    [](const ::testing::TestParamInfo<TorchCase>& info) { return info.param.name; });

// ---------------------------------------------------------------------------------------------
// Behaviour of individual schedules beyond the torch sequences.

TEST(ConstantScheduleTest, IsTheBaseLr) {
  EXPECT_THAT(Lrs(MakeSchedule(ConstantScheduleOptions{}, 0.25), 4),
              ::testing::ElementsAre(0.25, 0.25, 0.25, 0.25));
}

TEST(CosineAnnealingScheduleTest, IsPeriodicWithPeriodTwoTMax) {
  CosineAnnealingScheduleOptions o;
  o.t_max = 10;
  o.eta_min = 0.1;
  const std::vector<double> lrs = Lrs(MakeSchedule(o, 1.0), 41);
  EXPECT_NEAR(lrs[10], 0.1, 1e-15);
  EXPECT_NEAR(lrs[20], 1.0, 1e-15);
  EXPECT_NEAR(lrs[30], 0.1, 1e-15);
  EXPECT_NEAR(lrs[40], 1.0, 1e-15);
  EXPECT_NEAR(lrs[15], lrs[5], 1e-15);
}

TEST(MultiStepScheduleTest, MilestoneZeroAppliesToTheFirstUpdate) {
  MultiStepScheduleOptions o;
  o.milestones = {2, 0, 2};
  o.gamma = 0.5;
  EXPECT_THAT(Lrs(MakeSchedule(o, 1.0), 4), ::testing::ElementsAre(0.5, 0.5, 0.125, 0.125));
}

TEST(MultiStepScheduleTest, NoMilestonesIsConstant) {
  EXPECT_THAT(Lrs(MakeSchedule(MultiStepScheduleOptions{}, 0.3), 3),
              ::testing::ElementsAre(0.3, 0.3, 0.3));
}

TEST(LinearWarmupScheduleTest, StartFactorZeroWarmsUpFromZero) {
  // torch 1.13's chainable form raises ZeroDivisionError here; the closed form is used.
  LinearWarmupScheduleOptions o;
  o.start_factor = 0.0;
  o.total_iters = 4;
  EXPECT_THAT(Lrs(MakeSchedule(o, 2.0), 6), ::testing::ElementsAre(0.0, 0.5, 1.0, 1.5, 2.0, 2.0));
}

TEST(WarmupCosineScheduleTest, MatchesTheSpecExample) {
  // reference/optimizers.md 3.2: init 0, peak 1, W 4, D 10, end 0.1 (4 significant digits).
  WarmupCosineScheduleOptions o;
  o.warmup_steps = 4;
  o.decay_steps = 10;
  o.end_factor = 0.1;
  const std::vector<double> want = {0,     0.25, 0.5,   0.75,   1,   0.9397,
                                    0.775, 0.55, 0.325, 0.1603, 0.1, 0.1};
  const std::vector<double> lrs = Lrs(MakeSchedule(o, 1.0), static_cast<int>(want.size()) + 20);
  for (size_t k = 0; k < want.size(); ++k) EXPECT_NEAR(lrs[k], want[k], 5e-5) << "k = " << k;
  for (size_t k = want.size(); k < lrs.size(); ++k) EXPECT_DOUBLE_EQ(lrs[k], 0.1) << "k = " << k;
  // Exact values of the formula where the cosine is exact.
  EXPECT_DOUBLE_EQ(lrs[4], 1.0);
  EXPECT_DOUBLE_EQ(lrs[7], 0.1 + 0.9 * 0.5);  // cos(pi / 2) = 0
  EXPECT_DOUBLE_EQ(lrs[5], 0.1 + 0.9 * 0.5 * (1 + std::cos(kPi / 6)));
}

TEST(WarmupCosineScheduleTest, ScalesWithTheBaseAndAppliesInitFactorAndExponent) {
  WarmupCosineScheduleOptions o;
  o.init_factor = 0.1;
  o.warmup_steps = 4;
  o.decay_steps = 10;
  o.end_factor = 0.1;
  o.exponent = 2;
  const std::vector<double> lrs = Lrs(MakeSchedule(o, 0.37), 12);
  EXPECT_DOUBLE_EQ(lrs[0], 0.37 * 0.1);
  EXPECT_DOUBLE_EQ(lrs[2], 0.37 * (0.1 + 0.9 * 2.0 / 4.0));
  EXPECT_DOUBLE_EQ(lrs[4], 0.37);
  // k = 6: c = 2 of 6, cosd = (1 + cos(pi / 3)) / 2 = 0.75, squared 0.5625.
  EXPECT_DOUBLE_EQ(lrs[6], 0.37 * (0.9 * 0.5625 + 0.1));
  EXPECT_DOUBLE_EQ(lrs[11], 0.37 * 0.1);
}

TEST(WarmupCosineScheduleTest, NoWarmupStartsAtThePeak) {
  WarmupCosineScheduleOptions o;
  o.decay_steps = 4;
  const std::vector<double> lrs = Lrs(MakeSchedule(o, 2.0), 6);
  EXPECT_DOUBLE_EQ(lrs[0], 2.0);
  EXPECT_DOUBLE_EQ(lrs[2], 1.0);
  EXPECT_DOUBLE_EQ(lrs[4], 0.0);
  EXPECT_DOUBLE_EQ(lrs[5], 0.0);
}

TEST(InverseSqrtScheduleTest, HandFormula) {
  InverseSqrtScheduleOptions o;  // W = 0: timescale 10000 (HF's fallback)
  LrSchedule schedule = MakeSchedule(o, 0.5);
  for (int k = 0; k < 5000; ++k) schedule.Advance();
  EXPECT_DOUBLE_EQ(schedule.Current(), 0.5 / std::sqrt(1.5));

  o.warmup_steps = 8;  // timescale 8: lr(k) = base * sqrt(8 / k) for k >= 8
  schedule = MakeSchedule(o, 1.0);
  const std::vector<double> lrs = Lrs(schedule, 33);
  EXPECT_DOUBLE_EQ(lrs[0], 0.0);
  EXPECT_DOUBLE_EQ(lrs[4], 0.5);
  EXPECT_DOUBLE_EQ(lrs[8], 1.0);
  EXPECT_DOUBLE_EQ(lrs[32], 0.5);
}

TEST(OneCycleScheduleTest, KeepsTheFinalLrPastTotalSteps) {
  // torch would extrapolate at k = total_steps and raise after; the service keeps min_lr.
  OneCycleScheduleOptions o;
  o.max_lr = 1.0;
  o.total_steps = 20;
  const std::vector<double> lrs = Lrs(MakeSchedule(o, 0.5), 100);
  for (int k = 19; k < 100; ++k) EXPECT_EQ(lrs[k], 4e-06) << "k = " << k;

  o.anneal_strategy = OneCycleScheduleOptions::Anneal::kLinear;  // torch: lr(20) = -0.0714...
  const std::vector<double> linear = Lrs(MakeSchedule(o, 0.5), 30);
  for (int k = 20; k < 30; ++k) EXPECT_EQ(linear[k], linear[19]) << "k = " << k;
  EXPECT_NEAR(linear[19], 4e-06, 1e-15);
}

TEST(OneCycleScheduleTest, IgnoresTheBaseLr) {
  OneCycleScheduleOptions o;
  o.max_lr = 1.0;
  o.total_steps = 20;
  LrSchedule a = MakeSchedule(o, 0.5);
  LrSchedule b = MakeSchedule(o, 123.0);
  for (int k = 0; k < 10; ++k) {
    a.Advance();
    b.Advance();
  }
  EXPECT_EQ(a.Current(), b.Current());
  const double before = a.Current();
  ASSERT_OK(a.SetBaseLr(7.0));
  EXPECT_EQ(a.Current(), before);
  EXPECT_EQ(a.base_lr(), 7.0);
}

TEST(OneCycleScheduleTest, ZeroLengthPhaseTakesItsEndValue) {
  // pct_start * total_steps = 1: phase 1 ends at step 0 (torch: ZeroDivisionError).
  OneCycleScheduleOptions o;
  o.max_lr = 1.0;
  o.total_steps = 10;
  o.pct_start = 0.1;
  const std::vector<double> lrs = Lrs(MakeSchedule(o, 0.5), 12);
  EXPECT_EQ(lrs[0], 1.0);
  for (int k = 1; k < 10; ++k) EXPECT_LT(lrs[k], lrs[k - 1]) << "k = " << k;
  for (int k = 10; k < 12; ++k) EXPECT_EQ(lrs[k], lrs[9]) << "k = " << k;
  EXPECT_NEAR(lrs[9], 1.0 / 25 / 1e4, 1e-18);

  o.total_steps = 1;  // a single step, pct_start 1: lr(0) = max_lr
  o.pct_start = 1.0;
  EXPECT_THAT(Lrs(MakeSchedule(o, 0.5), 3), ::testing::ElementsAre(1.0, 1.0, 1.0));
}

TEST(OneCycleScheduleTest, ExtremeFactorsNeverGiveANegativeLr) {
  OneCycleScheduleOptions o;
  o.max_lr = 0.37;
  o.total_steps = 7;
  o.div_factor = 1.0;
  o.final_div_factor = 1e300;
  o.anneal_strategy = OneCycleScheduleOptions::Anneal::kLinear;
  for (double lr : Lrs(MakeSchedule(o, 0.5), 10)) EXPECT_GE(lr, 0.0);
}

// ---------------------------------------------------------------------------------------------
// ReduceOnPlateau specifics.

ReduceOnPlateauScheduleOptions FlatPlateau() {
  ReduceOnPlateauScheduleOptions o;
  o.factor = 0.5;
  o.patience = 2;
  o.cooldown = 1;
  return o;
}

TEST(ReduceOnPlateauScheduleTest, StepsWithoutALossAreNotCounted) {
  LrSchedule with_gaps = MakeSchedule(FlatPlateau(), 1.0);
  LrSchedule dense = MakeSchedule(FlatPlateau(), 1.0);
  for (int i = 0; i < 12; ++i) {
    with_gaps.Advance(std::nullopt);
    with_gaps.Advance(std::nullopt);
    with_gaps.Advance(1.0);
    dense.Advance(1.0);
    EXPECT_EQ(with_gaps.Current(), dense.Current()) << "after loss " << i;
  }
  EXPECT_EQ(with_gaps.steps(), 36);
  EXPECT_EQ(dense.steps(), 12);
  EXPECT_EQ(dense.Current(), 0.125);
}

TEST(ReduceOnPlateauScheduleTest, NanLossCountsAsBad) {
  LrSchedule schedule = MakeSchedule(FlatPlateau(), 1.0);
  schedule.Advance(1.0);  // best = 1
  for (int i = 0; i < 3; ++i) schedule.Advance(kNan);
  EXPECT_EQ(schedule.Current(), 0.5);
  EXPECT_EQ(schedule.state().plateau_best, 1.0);
}

TEST(ReduceOnPlateauScheduleTest, ImprovementResetsPatience) {
  LrSchedule schedule = MakeSchedule(FlatPlateau(), 1.0);
  const double losses[] = {5, 5, 5, 4, 4, 4, 3};  // never 3 bad in a row
  for (double loss : losses) schedule.Advance(loss);
  EXPECT_EQ(schedule.Current(), 1.0);
  EXPECT_EQ(schedule.state().plateau_best, 3.0);
  EXPECT_EQ(schedule.state().bad_epochs, 0);
}

TEST(ReduceOnPlateauScheduleTest, ClosedFormSchedulesIgnoreTheLoss) {
  StepScheduleOptions o;
  o.step_size = 2;
  LrSchedule schedule = MakeSchedule(o, 1.0);
  EXPECT_FALSE(schedule.uses_loss());
  schedule.Advance(kNan);
  schedule.Advance(3.0);
  EXPECT_NEAR(schedule.Current(), 0.1, 1e-17);
  EXPECT_TRUE(MakeSchedule(FlatPlateau(), 1.0).uses_loss());
}

// ---------------------------------------------------------------------------------------------
// Run-time base lr changes.

TEST(SetBaseLrTest, ClosedFormKeepsTheMultiplierAtTheCurrentStep) {
  StepScheduleOptions o;
  o.step_size = 10;
  o.gamma = 0.5;
  LrSchedule schedule = MakeSchedule(o, 0.1);
  for (int k = 0; k < 15; ++k) schedule.Advance();
  EXPECT_DOUBLE_EQ(schedule.Current(), 0.05);
  ASSERT_OK(schedule.SetBaseLr(1.0));
  EXPECT_EQ(schedule.steps(), 15);
  EXPECT_DOUBLE_EQ(schedule.Current(), 0.5);
  for (int k = 15; k < 20; ++k) schedule.Advance();
  EXPECT_DOUBLE_EQ(schedule.Current(), 0.25);
}

TEST(SetBaseLrTest, CosineUsesTheNewBaseWithTheSameEtaMin) {
  CosineAnnealingScheduleOptions o;
  o.t_max = 10;
  o.eta_min = 0.1;
  LrSchedule schedule = MakeSchedule(o, 1.0);
  for (int k = 0; k < 5; ++k) schedule.Advance();
  ASSERT_OK(schedule.SetBaseLr(2.1));
  EXPECT_DOUBLE_EQ(schedule.Current(), 0.1 + 2.0 * 0.5);
}

TEST(SetBaseLrTest, PlateauSetsTheCurrentLrAndKeepsItsCounters) {
  LrSchedule schedule = MakeSchedule(FlatPlateau(), 1.0);
  for (int i = 0; i < 6; ++i) schedule.Advance(1.0);  // reduced once at the 4th, cooling down
  EXPECT_EQ(schedule.Current(), 0.5);
  const LrScheduleState before = schedule.state();
  ASSERT_OK(schedule.SetBaseLr(0.8));
  EXPECT_EQ(schedule.Current(), 0.8);
  EXPECT_EQ(schedule.state().bad_epochs, before.bad_epochs);
  EXPECT_EQ(schedule.state().plateau_best, before.plateau_best);
  for (int i = 0; i < 2; ++i) schedule.Advance(1.0);  // the 8th flat loss reduces again
  EXPECT_EQ(schedule.Current(), 0.4);
}

TEST(SetBaseLrTest, RejectsInvalidValuesAndChangesNothing) {
  LrSchedule schedule = MakeSchedule(FlatPlateau(), 1.0);
  for (double bad : {-1.0, kNan, kInf, -kInf}) {
    const absl::Status status = schedule.SetBaseLr(bad);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(status.message(), HasSubstr("schedule.base_lr = "));
  }
  EXPECT_EQ(schedule.Current(), 1.0);
  EXPECT_EQ(schedule.base_lr(), 1.0);
  EXPECT_OK(schedule.SetBaseLr(0.0));
  EXPECT_EQ(schedule.Current(), 0.0);
}

// ---------------------------------------------------------------------------------------------
// State for checkpoints.

TEST(LrScheduleStateTest, RestoredScheduleContinuesIdentically) {
  ReduceOnPlateauScheduleOptions o = FlatPlateau();
  LrSchedule original = MakeSchedule(o, 0.3);
  for (int64_t k = 0; k < 60; ++k) original.Advance(PlateauLoss(k));
  LrSchedule restored = MakeSchedule(o, 0.3);
  ASSERT_OK(restored.RestoreState(original.state()));
  EXPECT_EQ(restored.steps(), 60);
  for (int64_t k = 60; k < 200; ++k) {
    EXPECT_EQ(restored.Current(), original.Current()) << "k = " << k;
    original.Advance(PlateauLoss(k));
    restored.Advance(PlateauLoss(k));
  }
  const LrScheduleState a = original.state();
  const LrScheduleState b = restored.state();
  EXPECT_EQ(a.step, b.step);
  EXPECT_EQ(a.base_lr, b.base_lr);
  EXPECT_EQ(a.plateau_best, b.plateau_best);
  EXPECT_EQ(a.bad_epochs, b.bad_epochs);
  EXPECT_EQ(a.cooldown_counter, b.cooldown_counter);
  EXPECT_EQ(a.plateau_lr, b.plateau_lr);
}

TEST(LrScheduleStateTest, RestoresStepAndBaseOfClosedForms) {
  ExponentialScheduleOptions o;
  o.gamma = 0.9;
  LrSchedule original = MakeSchedule(o, 0.1);
  for (int k = 0; k < 7; ++k) original.Advance();
  ASSERT_OK(original.SetBaseLr(0.2));
  LrSchedule restored = MakeSchedule(o, 0.1);
  ASSERT_OK(restored.RestoreState(original.state()));
  EXPECT_EQ(restored.Current(), original.Current());
  EXPECT_DOUBLE_EQ(restored.Current(), 0.2 * std::pow(0.9, 7));
}

TEST(LrScheduleStateTest, InitialState) {
  const LrScheduleState min_state = MakeSchedule(FlatPlateau(), 0.3).state();
  EXPECT_EQ(min_state.step, 0);
  EXPECT_EQ(min_state.base_lr, 0.3);
  EXPECT_EQ(min_state.plateau_best, kInf);
  EXPECT_EQ(min_state.plateau_lr, 0.3);
  ReduceOnPlateauScheduleOptions max_options;
  max_options.mode = ReduceOnPlateauScheduleOptions::Mode::kMax;
  EXPECT_EQ(MakeSchedule(max_options, 0.3).state().plateau_best, -kInf);
}

TEST(LrScheduleStateTest, RejectsInvalidStateAndChangesNothing) {
  LrSchedule schedule = MakeSchedule(FlatPlateau(), 1.0);
  const std::vector<std::pair<std::function<void(LrScheduleState&)>, std::string>> cases = {
      {[](LrScheduleState& s) { s.step = -1; }, "schedule state.step = -1"},
      {[](LrScheduleState& s) { s.base_lr = -0.5; }, "schedule state.base_lr = -0.5"},
      {[](LrScheduleState& s) { s.base_lr = kInf; }, "schedule state.base_lr = inf"},
      {[](LrScheduleState& s) { s.plateau_best = kNan; }, "schedule state.plateau_best = nan"},
      {[](LrScheduleState& s) { s.bad_epochs = -2; }, "schedule state.bad_epochs = -2"},
      {[](LrScheduleState& s) { s.cooldown_counter = -3; }, "schedule state.cooldown_counter = -3"},
      {[](LrScheduleState& s) { s.plateau_lr = kNan; }, "schedule state.plateau_lr = nan"},
  };
  for (const auto& [mutate, message] : cases) {
    LrScheduleState state = schedule.state();
    state.step = 5;
    mutate(state);
    const absl::Status status = schedule.RestoreState(state);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << message;
    EXPECT_THAT(status.message(), HasSubstr(message));
  }
  EXPECT_EQ(schedule.steps(), 0);
  EXPECT_EQ(schedule.Current(), 1.0);
}

// ---------------------------------------------------------------------------------------------
// Creation and validation.

TEST(LrScheduleCreateTest, RejectsInvalidOptionsAndBaseLr) {
  const absl::StatusOr<LrSchedule> bad_options =
      LrSchedule::Create(StepScheduleOptions{}, 0.1);  // step_size is required
  EXPECT_EQ(bad_options.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad_options.status().message(),
            "schedule.step.step_size = 0 is out of range: must be >= 1");
  for (double bad : {-0.1, kNan, kInf}) {
    const absl::StatusOr<LrSchedule> bad_base = LrSchedule::Create(ConstantScheduleOptions{}, bad);
    EXPECT_EQ(bad_base.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(LrSchedule::Create(ConstantScheduleOptions{}, -0.1).status().message(),
            "schedule.base_lr = -0.1 is out of range: must be finite and >= 0");
}

TEST(ScheduleOptionsTest, DefaultsAreTorchs) {
  EXPECT_EQ(StepScheduleOptions{}.gamma, 0.1);
  EXPECT_EQ(MultiStepScheduleOptions{}.gamma, 0.1);
  EXPECT_EQ(CosineAnnealingScheduleOptions{}.eta_min, 0.0);
  EXPECT_EQ(LinearWarmupScheduleOptions{}.start_factor, 1.0 / 3.0);
  EXPECT_EQ(LinearWarmupScheduleOptions{}.end_factor, 1.0);
  EXPECT_EQ(LinearWarmupScheduleOptions{}.total_iters, 5);
  const OneCycleScheduleOptions one_cycle;
  EXPECT_EQ(one_cycle.pct_start, 0.3);
  EXPECT_EQ(one_cycle.anneal_strategy, OneCycleScheduleOptions::Anneal::kCos);
  EXPECT_EQ(one_cycle.div_factor, 25.0);
  EXPECT_EQ(one_cycle.final_div_factor, 1e4);
  EXPECT_FALSE(one_cycle.three_phase);
  const ReduceOnPlateauScheduleOptions plateau;
  EXPECT_EQ(plateau.mode, ReduceOnPlateauScheduleOptions::Mode::kMin);
  EXPECT_EQ(plateau.factor, 0.1);
  EXPECT_EQ(plateau.patience, 10);
  EXPECT_EQ(plateau.threshold, 1e-4);
  EXPECT_EQ(plateau.threshold_mode, ReduceOnPlateauScheduleOptions::ThresholdMode::kRel);
  EXPECT_EQ(plateau.cooldown, 0);
  EXPECT_EQ(plateau.min_lr, 0.0);
  EXPECT_EQ(plateau.eps, 1e-8);
}

TEST(ScheduleOptionsTest, DefaultsWithoutRequiredFieldsAreValid) {
  EXPECT_OK(Validate(ConstantScheduleOptions{}));
  EXPECT_OK(Validate(MultiStepScheduleOptions{}));
  EXPECT_OK(Validate(LinearWarmupScheduleOptions{}));
  EXPECT_OK(Validate(InverseSqrtScheduleOptions{}));
  EXPECT_OK(Validate(ReduceOnPlateauScheduleOptions{}));
  EXPECT_OK(Validate(ScheduleOptions{}));  // Constant
}

TEST(ScheduleOptionsTest, BoundaryValuesAreValid) {
  EXPECT_OK(Validate(With<StepScheduleOptions>([](auto& o) {
    o.step_size = 1;
    o.gamma = 1;
  })));
  EXPECT_OK(Validate(With<MultiStepScheduleOptions>([](auto& o) { o.milestones = {0, 0}; })));
  EXPECT_OK(Validate(With<ExponentialScheduleOptions>([](auto& o) { o.gamma = 1; })));
  EXPECT_OK(Validate(With<CosineAnnealingScheduleOptions>([](auto& o) { o.t_max = 1; })));
  EXPECT_OK(Validate(With<LinearWarmupScheduleOptions>([](auto& o) {
    o.start_factor = 0;
    o.end_factor = 0;
    o.total_iters = 1;
  })));
  EXPECT_OK(Validate(With<WarmupCosineScheduleOptions>([](auto& o) {
    o.init_factor = 1;
    o.warmup_steps = 0;
    o.decay_steps = 1;
    o.end_factor = 1;
    o.exponent = 1e-3;
  })));
  EXPECT_OK(Validate(With<OneCycleScheduleOptions>([](auto& o) {
    o.max_lr = 1e-6;
    o.total_steps = 1;
    o.pct_start = 0;
  })));
  EXPECT_OK(Validate(With<OneCycleScheduleOptions>([](auto& o) {
    o.max_lr = 1;
    o.total_steps = 1;
    o.pct_start = 1;
  })));
  EXPECT_OK(Validate(With<ReduceOnPlateauScheduleOptions>([](auto& o) {
    o.factor = 0;
    o.patience = 0;
    o.threshold = 0;
    o.eps = 0;
  })));
}

TEST(ScheduleOptionsTest, Names) {
  EXPECT_EQ(ScheduleName(ConstantScheduleOptions{}), "constant");
  EXPECT_EQ(ScheduleName(StepScheduleOptions{}), "step");
  EXPECT_EQ(ScheduleName(MultiStepScheduleOptions{}), "multi_step");
  EXPECT_EQ(ScheduleName(ExponentialScheduleOptions{}), "exponential");
  EXPECT_EQ(ScheduleName(CosineAnnealingScheduleOptions{}), "cosine_annealing");
  EXPECT_EQ(ScheduleName(LinearWarmupScheduleOptions{}), "linear_warmup");
  EXPECT_EQ(ScheduleName(WarmupCosineScheduleOptions{}), "warmup_cosine");
  EXPECT_EQ(ScheduleName(InverseSqrtScheduleOptions{}), "inverse_sqrt");
  EXPECT_EQ(ScheduleName(OneCycleScheduleOptions{}), "one_cycle");
  EXPECT_EQ(ScheduleName(ReduceOnPlateauScheduleOptions{}), "reduce_on_plateau");
}

// Every field rejects a value outside its range with the exact message.

struct OutOfRangeCase {
  std::string name;  // test name suffix
  ScheduleOptions options;
  std::string message;
};

void PrintTo(const OutOfRangeCase& c, std::ostream* os) { *os << c.name; }

class ScheduleOutOfRangeTest : public ::testing::TestWithParam<OutOfRangeCase> {};

TEST_P(ScheduleOutOfRangeTest, IsInvalidArgumentNamingFieldValueAndRange) {
  const OutOfRangeCase& c = GetParam();
  const absl::Status status = Validate(c.options);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), c.message);
  // Creation refuses the same options with the same message.
  EXPECT_EQ(LrSchedule::Create(c.options, 0.1).status().message(), c.message);
}

// Valid options of each kind whose required fields are set.
StepScheduleOptions ValidStep() {
  StepScheduleOptions o;
  o.step_size = 10;
  return o;
}
ExponentialScheduleOptions ValidExponential() {
  ExponentialScheduleOptions o;
  o.gamma = 0.9;
  return o;
}
CosineAnnealingScheduleOptions ValidCosine() {
  CosineAnnealingScheduleOptions o;
  o.t_max = 100;
  return o;
}
WarmupCosineScheduleOptions ValidWarmupCosine() {
  WarmupCosineScheduleOptions o;
  o.warmup_steps = 10;
  o.decay_steps = 100;
  return o;
}
OneCycleScheduleOptions ValidOneCycle() {
  OneCycleScheduleOptions o;
  o.max_lr = 0.1;
  o.total_steps = 100;
  return o;
}

template <typename T, typename F>
ScheduleOptions From(T options, F mutate) {
  mutate(options);
  return options;
}

INSTANTIATE_TEST_SUITE_P(
    AllFields, ScheduleOutOfRangeTest,
    ::testing::Values(
        OutOfRangeCase{"StepGammaAboveOne", From(ValidStep(), [](auto& o) { o.gamma = 1.5; }),
                       "schedule.step.gamma = 1.5 is out of range: must be in (0, 1]"},
        OutOfRangeCase{"StepGammaZero", From(ValidStep(), [](auto& o) { o.gamma = 0; }),
                       "schedule.step.gamma = 0 is out of range: must be in (0, 1]"},
        OutOfRangeCase{"StepGammaNan", From(ValidStep(), [](auto& o) { o.gamma = kNan; }),
                       "schedule.step.gamma = nan is out of range: must be finite and in (0, 1]"},
        OutOfRangeCase{"StepSizeZero", From(ValidStep(), [](auto& o) { o.step_size = 0; }),
                       "schedule.step.step_size = 0 is out of range: must be >= 1"},
        OutOfRangeCase{"StepSizeNegative", From(ValidStep(), [](auto& o) { o.step_size = -3; }),
                       "schedule.step.step_size = -3 is out of range: must be >= 1"},
        OutOfRangeCase{"MultiStepNegativeMilestone", With<MultiStepScheduleOptions>([](auto& o) {
                         o.milestones = {5, 10, -1};
                       }),
                       "schedule.multi_step.milestones[2] = -1 is out of range: must be >= 0"},
        OutOfRangeCase{"MultiStepGammaAboveOne",
                       With<MultiStepScheduleOptions>([](auto& o) { o.gamma = 1.0000001; }),
                       "schedule.multi_step.gamma = 1.0000001 is out of range: must be in (0, 1]"},
        OutOfRangeCase{"MultiStepGammaNegative",
                       With<MultiStepScheduleOptions>([](auto& o) { o.gamma = -0.1; }),
                       "schedule.multi_step.gamma = -0.1 is out of range: must be in (0, 1]"},
        OutOfRangeCase{"ExponentialGammaUnset", ExponentialScheduleOptions{},
                       "schedule.exponential.gamma = 0 is out of range: must be in (0, 1]"},
        OutOfRangeCase{"ExponentialGammaAboveOne",
                       From(ValidExponential(), [](auto& o) { o.gamma = 1.01; }),
                       "schedule.exponential.gamma = 1.01 is out of range: must be in (0, 1]"},
        OutOfRangeCase{
            "ExponentialGammaInf", From(ValidExponential(), [](auto& o) { o.gamma = kInf; }),
            "schedule.exponential.gamma = inf is out of range: must be finite and in (0, 1]"},
        OutOfRangeCase{"CosineTMaxUnset", CosineAnnealingScheduleOptions{},
                       "schedule.cosine_annealing.t_max = 0 is out of range: must be >= 1"},
        OutOfRangeCase{"CosineNegativeEtaMin",
                       From(ValidCosine(), [](auto& o) { o.eta_min = -1e-08; }),
                       "schedule.cosine_annealing.eta_min = -1e-08 is out of range: must be >= 0"},
        OutOfRangeCase{
            "CosineEtaMinNan", From(ValidCosine(), [](auto& o) { o.eta_min = kNan; }),
            "schedule.cosine_annealing.eta_min = nan is out of range: must be finite and >= 0"},
        OutOfRangeCase{
            "LinearStartFactorAboveOne",
            With<LinearWarmupScheduleOptions>([](auto& o) { o.start_factor = 1.5; }),
            "schedule.linear_warmup.start_factor = 1.5 is out of range: must be in [0, 1]"},
        OutOfRangeCase{
            "LinearStartFactorNegative",
            With<LinearWarmupScheduleOptions>([](auto& o) { o.start_factor = -0.1; }),
            "schedule.linear_warmup.start_factor = -0.1 is out of range: must be in [0, 1]"},
        OutOfRangeCase{"LinearEndFactorAboveOne",
                       With<LinearWarmupScheduleOptions>([](auto& o) { o.end_factor = 2; }),
                       "schedule.linear_warmup.end_factor = 2 is out of range: must be in [0, 1]"},
        OutOfRangeCase{
            "LinearEndFactorNegativeInf",
            With<LinearWarmupScheduleOptions>([](auto& o) { o.end_factor = -kInf; }),
            "schedule.linear_warmup.end_factor = -inf is out of range: must be finite and in "
            "[0, 1]"},
        OutOfRangeCase{"LinearTotalItersZero",
                       With<LinearWarmupScheduleOptions>([](auto& o) { o.total_iters = 0; }),
                       "schedule.linear_warmup.total_iters = 0 is out of range: must be >= 1"},
        OutOfRangeCase{
            "WarmupCosineInitFactorAboveOne",
            From(ValidWarmupCosine(), [](auto& o) { o.init_factor = 1.5; }),
            "schedule.warmup_cosine.init_factor = 1.5 is out of range: must be in [0, 1]"},
        OutOfRangeCase{"WarmupCosineNegativeWarmup",
                       From(ValidWarmupCosine(), [](auto& o) { o.warmup_steps = -1; }),
                       "schedule.warmup_cosine.warmup_steps = -1 is out of range: must be >= 0"},
        OutOfRangeCase{"WarmupCosineDecayStepsUnset", WarmupCosineScheduleOptions{},
                       "schedule.warmup_cosine.decay_steps = 0 is out of range: must be >= 1"},
        OutOfRangeCase{"WarmupCosineDecayStepsNotAfterWarmup",
                       From(ValidWarmupCosine(), [](auto& o) { o.decay_steps = 10; }),
                       "schedule.warmup_cosine.decay_steps = 10 is out of range: must be > "
                       "schedule.warmup_cosine.warmup_steps = 10"},
        OutOfRangeCase{
            "WarmupCosineEndFactorNegative",
            From(ValidWarmupCosine(), [](auto& o) { o.end_factor = -0.5; }),
            "schedule.warmup_cosine.end_factor = -0.5 is out of range: must be in [0, 1]"},
        OutOfRangeCase{"WarmupCosineExponentZero",
                       From(ValidWarmupCosine(), [](auto& o) { o.exponent = 0; }),
                       "schedule.warmup_cosine.exponent = 0 is out of range: must be > 0"},
        OutOfRangeCase{"InverseSqrtNegativeWarmup",
                       With<InverseSqrtScheduleOptions>([](auto& o) { o.warmup_steps = -5; }),
                       "schedule.inverse_sqrt.warmup_steps = -5 is out of range: must be >= 0"},
        OutOfRangeCase{"InverseSqrtNegativeTimescale",
                       With<InverseSqrtScheduleOptions>([](auto& o) { o.timescale = -1; }),
                       "schedule.inverse_sqrt.timescale = -1 is out of range: must be >= 0"},
        OutOfRangeCase{"OneCycleMaxLrUnset",
                       With<OneCycleScheduleOptions>([](auto& o) { o.total_steps = 10; }),
                       "schedule.one_cycle.max_lr = 0 is out of range: must be > 0"},
        OutOfRangeCase{"OneCycleMaxLrInf", From(ValidOneCycle(), [](auto& o) { o.max_lr = kInf; }),
                       "schedule.one_cycle.max_lr = inf is out of range: must be finite and > 0"},
        OutOfRangeCase{"OneCycleTotalStepsUnset",
                       With<OneCycleScheduleOptions>([](auto& o) { o.max_lr = 0.1; }),
                       "schedule.one_cycle.total_steps = 0 is out of range: must be >= 1"},
        OutOfRangeCase{"OneCyclePctStartAboveOne",
                       From(ValidOneCycle(), [](auto& o) { o.pct_start = 1.1; }),
                       "schedule.one_cycle.pct_start = 1.1 is out of range: must be in [0, 1]"},
        OutOfRangeCase{"OneCyclePctStartNegative",
                       From(ValidOneCycle(), [](auto& o) { o.pct_start = -0.3; }),
                       "schedule.one_cycle.pct_start = -0.3 is out of range: must be in [0, 1]"},
        OutOfRangeCase{"OneCycleBadAnnealStrategy",
                       From(ValidOneCycle(),
                            [](auto& o) {
                              o.anneal_strategy = static_cast<OneCycleScheduleOptions::Anneal>(7);
                            }),
                       "schedule.one_cycle.anneal_strategy = 7 is out of range: must be cos or "
                       "linear"},
        OutOfRangeCase{"OneCycleDivFactorZero",
                       From(ValidOneCycle(), [](auto& o) { o.div_factor = 0; }),
                       "schedule.one_cycle.div_factor = 0 is out of range: must be > 0"},
        OutOfRangeCase{"OneCycleFinalDivFactorNegative",
                       From(ValidOneCycle(), [](auto& o) { o.final_div_factor = -1e4; }),
                       "schedule.one_cycle.final_div_factor = -10000 is out of range: must be > 0"},
        OutOfRangeCase{"OneCycleMinLrUnderflows",
                       From(ValidOneCycle(),
                            [](auto& o) {
                              o.div_factor = 1e200;
                              o.final_div_factor = 1e200;
                            }),
                       "schedule.one_cycle.max_lr / div_factor / final_div_factor = 0.1 / 1e+200 "
                       "/ 1e+200 = 0 is out of range: must be finite and > 0"},
        OutOfRangeCase{"PlateauBadMode", With<ReduceOnPlateauScheduleOptions>([](auto& o) {
                         o.mode = static_cast<ReduceOnPlateauScheduleOptions::Mode>(2);
                       }),
                       "schedule.reduce_on_plateau.mode = 2 is out of range: must be min or max"},
        OutOfRangeCase{"PlateauFactorOne",
                       With<ReduceOnPlateauScheduleOptions>([](auto& o) { o.factor = 1; }),
                       "schedule.reduce_on_plateau.factor = 1 is out of range: must be in [0, 1)"},
        OutOfRangeCase{
            "PlateauFactorNegative",
            With<ReduceOnPlateauScheduleOptions>([](auto& o) { o.factor = -0.5; }),
            "schedule.reduce_on_plateau.factor = -0.5 is out of range: must be in [0, 1)"},
        OutOfRangeCase{"PlateauNegativePatience",
                       With<ReduceOnPlateauScheduleOptions>([](auto& o) { o.patience = -1; }),
                       "schedule.reduce_on_plateau.patience = -1 is out of range: must be >= 0"},
        OutOfRangeCase{
            "PlateauNegativeThreshold",
            With<ReduceOnPlateauScheduleOptions>([](auto& o) { o.threshold = -1e-4; }),
            "schedule.reduce_on_plateau.threshold = -0.0001 is out of range: must be >= 0"},
        OutOfRangeCase{"PlateauBadThresholdMode", With<ReduceOnPlateauScheduleOptions>([](auto& o) {
                         o.threshold_mode =
                             static_cast<ReduceOnPlateauScheduleOptions::ThresholdMode>(-1);
                       }),
                       "schedule.reduce_on_plateau.threshold_mode = -1 is out of range: must be "
                       "rel or abs"},
        OutOfRangeCase{"PlateauNegativeCooldown",
                       With<ReduceOnPlateauScheduleOptions>([](auto& o) { o.cooldown = -2; }),
                       "schedule.reduce_on_plateau.cooldown = -2 is out of range: must be >= 0"},
        OutOfRangeCase{"PlateauNegativeMinLr",
                       With<ReduceOnPlateauScheduleOptions>([](auto& o) { o.min_lr = -1; }),
                       "schedule.reduce_on_plateau.min_lr = -1 is out of range: must be >= 0"},
        OutOfRangeCase{
            "PlateauMinLrNan",
            With<ReduceOnPlateauScheduleOptions>([](auto& o) { o.min_lr = kNan; }),
            "schedule.reduce_on_plateau.min_lr = nan is out of range: must be finite and >= 0"},
        OutOfRangeCase{"PlateauNegativeEps",
                       With<ReduceOnPlateauScheduleOptions>([](auto& o) { o.eps = -1e-8; }),
                       "schedule.reduce_on_plateau.eps = -1e-08 is out of range: must be >= 0"}),
    [](const ::testing::TestParamInfo<OutOfRangeCase>& info) { return info.param.name; });

// Every double field rejects NaN, +Inf and -Inf, naming the field.

struct DoubleField {
  std::string name;  // "schedule.step.gamma"
  std::function<ScheduleOptions(double)> make;
};

void PrintTo(const DoubleField& f, std::ostream* os) { *os << f.name; }

template <typename T>
DoubleField Field(T valid, std::string name, double T::*member) {
  return {absl::StrCat("schedule.", T::kName, ".", name), [valid, member](double v) {
            T options = valid;
            options.*member = v;
            return ScheduleOptions(options);
          }};
}

class ScheduleNonFiniteTest : public ::testing::TestWithParam<DoubleField> {};

TEST_P(ScheduleNonFiniteTest, IsRejected) {
  for (double v : {kNan, kInf, -kInf}) {
    const absl::Status status = Validate(GetParam().make(v));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << v;
    EXPECT_THAT(status.message(), HasSubstr(GetParam().name + " = "));
    EXPECT_THAT(status.message(), HasSubstr("must be finite and "));
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllDoubleFields, ScheduleNonFiniteTest,
    ::testing::Values(
        Field(ValidStep(), "gamma", &StepScheduleOptions::gamma),
        Field(MultiStepScheduleOptions{}, "gamma", &MultiStepScheduleOptions::gamma),
        Field(ValidExponential(), "gamma", &ExponentialScheduleOptions::gamma),
        Field(ValidCosine(), "eta_min", &CosineAnnealingScheduleOptions::eta_min),
        Field(LinearWarmupScheduleOptions{}, "start_factor",
              &LinearWarmupScheduleOptions::start_factor),
        Field(LinearWarmupScheduleOptions{}, "end_factor",
              &LinearWarmupScheduleOptions::end_factor),
        Field(ValidWarmupCosine(), "init_factor", &WarmupCosineScheduleOptions::init_factor),
        Field(ValidWarmupCosine(), "end_factor", &WarmupCosineScheduleOptions::end_factor),
        Field(ValidWarmupCosine(), "exponent", &WarmupCosineScheduleOptions::exponent),
        Field(ValidOneCycle(), "max_lr", &OneCycleScheduleOptions::max_lr),
        Field(ValidOneCycle(), "pct_start", &OneCycleScheduleOptions::pct_start),
        Field(ValidOneCycle(), "div_factor", &OneCycleScheduleOptions::div_factor),
        Field(ValidOneCycle(), "final_div_factor", &OneCycleScheduleOptions::final_div_factor),
        Field(ReduceOnPlateauScheduleOptions{}, "factor", &ReduceOnPlateauScheduleOptions::factor),
        Field(ReduceOnPlateauScheduleOptions{}, "threshold",
              &ReduceOnPlateauScheduleOptions::threshold),
        Field(ReduceOnPlateauScheduleOptions{}, "min_lr", &ReduceOnPlateauScheduleOptions::min_lr),
        Field(ReduceOnPlateauScheduleOptions{}, "eps", &ReduceOnPlateauScheduleOptions::eps)),
    [](const ::testing::TestParamInfo<DoubleField>& info) {
      std::string name = info.param.name.substr(std::string("schedule.").size());
      for (char& ch : name) {
        if (ch == '.') ch = '_';
      }
      return name;
    });

}  // namespace
}  // namespace optd
