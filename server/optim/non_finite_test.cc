// Optimizer::Step's StepResult: every optimizer counts, in the loop that writes them, the
// parameters a step leaves NaN or inf, reports the tensors holding them, and reports the same on
// one thread and on a pool.
//
// How a step drives parameters to inf from finite values with finite gradients: a few parameters
// start at -FLT_MAX, every gradient is 1, and the learning rate is huge (about 1e34, or what gives
// a step that size: LAMB's and LARS's trust ratios grow with ||p||): each update moves a parameter
// by far more than half an ulp of FLT_MAX (about 1e31), so those few overflow to -inf (or, where
// weight decay turns them around, +inf or NaN) while the others, starting at 1, stay finite.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/status_matchers.h"
#include "base/thread_pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/optim/optimizer.h"
#include "server/optim/step_probe.h"

namespace optd {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr float kMax = std::numeric_limits<float>::max();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

using Tensors = std::vector<std::vector<float>>;

ThreadPoolOptions Threads(int n) {
  ThreadPoolOptions o;
  o.num_threads = n;
  return o;
}

template <typename T, typename F>
OptimizerOptions With(F mutate) {
  T options;
  mutate(options);
  return options;
}

// One optimizer configuration under test.
struct Case {
  std::string name;
  OptimizerOptions options;
  double huge_lr;    // drives a parameter at -FLT_MAX with gradient 1 to -inf in one step
  double normal_lr;  // an ordinary step
  int warmup = 0;    // steps at lr 0 before the huge one (RAdam's rectified branch from step 6)
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> Cases() {
  return {
      {"Sgd", With<SgdOptions>([](auto& o) { o.lr = 0.1; }), 1e34, 0.1},
      {"SgdMomentum", With<SgdOptions>([](auto& o) {
         o.lr = 0.1;
         o.momentum = 0.9;
       }),
       1e34, 0.1},
      {"SgdNesterovWeightDecay", With<SgdOptions>([](auto& o) {
         o.lr = 0.1;
         o.momentum = 0.9;
         o.nesterov = true;
         o.weight_decay = 1e-2;
       }),
       1e34, 0.1},
      {"Adam", AdamOptions{}, 1e34, 1e-3},
      {"AdamAmsgradWeightDecay", With<AdamOptions>([](auto& o) {
         o.amsgrad = true;
         o.weight_decay = 1e-2;
       }),
       1e34, 1e-3},
      {"AdamW", AdamWOptions{}, 1e34, 1e-3},
      {"Adagrad", AdagradOptions{}, 1e34, 1e-2},
      {"AdagradWeightDecay", With<AdagradOptions>([](auto& o) { o.weight_decay = 1e-2; }), 1e34,
       1e-2},
      {"NormalizedGdGlobal", NormalizedGdOptions{}, 1e37, 1e-2},
      {"NormalizedGdPerTensor",
       With<NormalizedGdOptions>([](auto& o) { o.norm = NormalizedGdOptions::Norm::kPerTensor; }),
       1e37, 1e-2},
      {"Adadelta", AdadeltaOptions{}, 1e36, 1.0},
      {"Rmsprop", RmspropOptions{}, 1e34, 1e-2},
      {"RmspropCenteredMomentum", With<RmspropOptions>([](auto& o) {
         o.centered = true;
         o.momentum = 0.9;
       }),
       1e34, 1e-2},
      {"Nadam", NadamOptions{}, 1e34, 2e-3},
      {"Radam", RadamOptions{}, 1e34, 1e-3},
      {"RadamRectified", RadamOptions{}, 1e36, 1e-3, /*warmup=*/5},
      {"Lion", LionOptions{}, 1e34, 1e-4},
      {"Lamb", LambOptions{}, 1e-3, 1e-3},  // the trust ratio scales the step by ||p||
      // Weight decay pulls a parameter at -FLT_MAX back up, hard: it overflows upwards.
      {"LambWeightDecay", With<LambOptions>([](auto& o) { o.weight_decay = 1e-2; }), 10.0, 1e-3},
      {"Lars", LarsOptions{}, 1.0, 1.0},  // likewise
      {"LarsNesterovWeightDecay", With<LarsOptions>([](auto& o) {
         o.nesterov = true;
         o.weight_decay = 1e-4;
       }),
       1e5, 1.0},
  };
}

// ~700K elements in all, above Optimizer::kParallelMinElements: a step runs on a pool if given
// one. Tensor 1 is tiny.
const std::vector<int64_t>& Sizes() {
  static const std::vector<int64_t>* const sizes = new std::vector<int64_t>{400001, 3, 300000};
  return *sizes;
}

// The parameters that start at -FLT_MAX: {tensor, index}. One sits on a segment boundary, one is
// a tensor's last element; tensor 1 has none.
struct Planted {
  size_t tensor;
  int64_t index;
};
const std::vector<Planted>& PlantedParameters() {
  static const std::vector<Planted>* const planted =
      new std::vector<Planted>{{0, 0}, {0, Optimizer::kBlockElements}, {0, 400000}, {2, 123457}};
  return *planted;
}

// Counts, tensor by tensor, the values of `params` that are not finite: what a step that writes
// every parameter must report.
StepResult Scan(const Tensors& params) {
  StepResult scan;
  for (size_t t = 0; t < params.size(); ++t) {
    int64_t count = 0;
    for (float x : params[t]) count += std::isfinite(x) ? 0 : 1;
    scan.non_finite_parameters += count;
    if (count > 0) scan.non_finite_tensors.push_back(static_cast<int>(t));
  }
  return scan;
}

std::vector<TensorGrad> Dense(Tensors& params, const Tensors& grads) {
  std::vector<TensorGrad> tensors;
  for (size_t t = 0; t < params.size(); ++t) {
    tensors.push_back({absl::MakeSpan(params[t]), absl::MakeConstSpan(grads[t]), {}, 0});
  }
  return tensors;
}

bool BitIdentical(const Tensors& a, const Tensors& b) {
  if (a.size() != b.size()) return false;
  for (size_t t = 0; t < a.size(); ++t) {
    if (a[t].size() != b[t].size()) return false;
    if (std::memcmp(a[t].data(), b[t].data(), a[t].size() * sizeof(float)) != 0) return false;
  }
  return true;
}

// A probe that only checks it is called: Step's probed path must count as its plain one does.
class CountingProbe final : public StepProbe {
 public:
  void BeginStep(size_t num_segments) override { ++steps; }
  void BeforeSegment(size_t index, absl::Span<const float> params) override {}
  void AfterSegment(size_t index, absl::Span<const float> params) override {}
  void AddUpdateSquares(double sum_of_squares) override {}
  int steps = 0;
};

// Where a step runs: inline (no pool), on a pool of `threads`, with or without a probe.
struct Placement {
  int threads;  // 0: no pool
  bool probe;
};
const Placement kPlacements[] = {{0, false}, {1, false}, {3, false}, {3, true}};

std::string Describe(const Placement& run) {
  return (run.threads == 0 ? std::string("inline") : std::to_string(run.threads) + " threads") +
         (run.probe ? " with a probe" : "");
}

// Creates the case's optimizer on `pool`, takes its warmup steps at lr 0 and one step at `lr`, and
// returns the params and the last step's result.
std::pair<Tensors, StepResult> StepOnce(const Case& c, const Tensors& start, const Tensors& grads,
                                        double lr, const Placement& run) {
  std::unique_ptr<ThreadPool> pool;
  if (run.threads > 0) pool = std::make_unique<ThreadPool>(Threads(run.threads));
  absl::StatusOr<std::unique_ptr<Optimizer>> optimizer =
      CreateOptimizer(c.options, Sizes(), pool.get());
  EXPECT_OK(optimizer);
  if (!optimizer.ok()) return {};
  Tensors params = start;
  for (int k = 0; k < c.warmup; ++k) {
    StepResult warmup;
    EXPECT_OK((*optimizer)->Step(Dense(params, grads), 0.0, nullptr, &warmup));
    EXPECT_EQ(warmup.non_finite_parameters, 0) << "warmup step " << k;
  }
  CountingProbe probe;
  StepResult result{-1, {99}};  // Step replaces it
  EXPECT_OK((*optimizer)->Step(Dense(params, grads), lr, run.probe ? &probe : nullptr, &result));
  EXPECT_EQ(probe.steps, run.probe ? 1 : 0);
  return {std::move(params), std::move(result)};
}

class NonFiniteParamsTest : public ::testing::TestWithParam<Case> {};

TEST_P(NonFiniteParamsTest, StepThatOverflowsReportsExactlyTheParametersItLeftNonFinite) {
  const Case& c = GetParam();
  Tensors start, grads;
  for (int64_t size : Sizes()) {
    start.emplace_back(size, 1.0f);
    grads.emplace_back(size, 1.0f);
  }
  for (const Planted& p : PlantedParameters()) start[p.tensor][p.index] = -kMax;

  Tensors first_params;
  for (const Placement& run : kPlacements) {
    SCOPED_TRACE(Describe(run));
    const auto [params, result] = StepOnce(c, start, grads, c.huge_lr, run);
    ASSERT_EQ(params.size(), Sizes().size());
    // Exactly the planted parameters overflowed, and the step says so.
    EXPECT_EQ(result.non_finite_parameters, 4);
    EXPECT_THAT(result.non_finite_tensors, ElementsAre(0, 2));
    for (const Planted& p : PlantedParameters()) {
      EXPECT_FALSE(std::isfinite(params[p.tensor][p.index]))
          << "tensor " << p.tensor << " element " << p.index << " = " << params[p.tensor][p.index];
    }
    const StepResult scan = Scan(params);
    EXPECT_EQ(scan.non_finite_parameters, 4);
    EXPECT_EQ(scan.non_finite_tensors, result.non_finite_tensors);
    // The same bits wherever it ran.
    if (first_params.empty()) {
      first_params = params;
    } else {
      EXPECT_TRUE(BitIdentical(params, first_params));
    }
  }
}

TEST_P(NonFiniteParamsTest, OrdinaryStepsReportNone) {
  const Case& c = GetParam();
  std::mt19937 rng(2024);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Tensors start, grads;
  for (int64_t size : Sizes()) {
    std::vector<float> p(size), g(size);
    for (float& x : p) x = normal(rng);
    for (float& x : g) x = 0.1f * normal(rng);
    start.push_back(std::move(p));
    grads.push_back(std::move(g));
  }
  Tensors first_params;
  for (const Placement& run : kPlacements) {
    SCOPED_TRACE(Describe(run));
    const auto [params, result] = StepOnce(c, start, grads, c.normal_lr, run);
    EXPECT_EQ(result.non_finite_parameters, 0);
    EXPECT_THAT(result.non_finite_tensors, IsEmpty());
    EXPECT_FALSE(BitIdentical(params, start)) << "the step changed nothing";
    if (first_params.empty()) {
      first_params = params;
    } else {
      EXPECT_TRUE(BitIdentical(params, first_params));
    }
  }
}

TEST_P(NonFiniteParamsTest, ParametersAlreadyNonFiniteAreCountedWhenWrittenAgain) {
  // Not what a session sends (it stops at the first non-finite step), but the count is of the
  // parameters after the step: for optimizers that write every parameter, exactly what a scan
  // finds, whatever the update made of the inf and the NaN (LAMB's inf norm spreads to the whole
  // tensor).
  const Case& c = GetParam();
  const std::vector<int64_t> sizes = {5, 3, 4};
  Tensors params = {{1, kInf, -1, 0.5f, 2}, {1, 2, 3}, {0.1f, 0.2f, kNaN, -0.3f}};
  const Tensors grads = {{0.1f, 0.2f, -0.3f, 0.4f, 0.5f}, {0.1f, 0.1f, 0.1f}, {1, 1, 1, 1}};
  absl::StatusOr<std::unique_ptr<Optimizer>> optimizer = CreateOptimizer(c.options, sizes);
  ASSERT_OK(optimizer);
  for (int step = 0; step < 2; ++step) {
    StepResult result;
    ASSERT_OK((*optimizer)->Step(Dense(params, grads), c.normal_lr, nullptr, &result));
    const StepResult scan = Scan(params);
    EXPECT_GE(scan.non_finite_parameters, 2) << "step " << step;
    EXPECT_EQ(result.non_finite_parameters, scan.non_finite_parameters) << "step " << step;
    EXPECT_EQ(result.non_finite_tensors, scan.non_finite_tensors) << "step " << step;
  }
}

INSTANTIATE_TEST_SUITE_P(EveryOptimizer, NonFiniteParamsTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

// ---------------------------------------------------------------------------------------------
// Row-sparse Adam (torch SparseAdam): rows written outside the segment pass count too.

TEST(NonFiniteParamsSparseAdamTest, RowsSentAreCountedAndRowsNotSentAreNot) {
  constexpr int64_t kRowSize = 2;
  constexpr int64_t kRows = 200000;  // 400K elements: the dense pass runs on the pool
  std::vector<float> table(kRows * kRowSize, 1.0f);
  table[1 * kRowSize + 0] = -kMax;       // row 1: sent, overflows
  table[5 * kRowSize + 1] = kInf;        // row 5: not sent, not written, not counted
  table[199999 * kRowSize + 1] = -kMax;  // row 199999: sent, overflows
  const std::vector<int64_t> rows = {0, 1, 70000, 199999};
  const std::vector<float> row_grads(rows.size() * kRowSize, 1.0f);
  std::vector<float> dense(100000, 1.0f);
  dense[99999] = -kMax;
  const std::vector<float> dense_grad(dense.size(), 1.0f);

  std::vector<float> first_table, first_dense;
  for (const Placement& run : kPlacements) {
    SCOPED_TRACE(Describe(run));
    std::unique_ptr<ThreadPool> pool;
    if (run.threads > 0) pool = std::make_unique<ThreadPool>(Threads(run.threads));
    absl::StatusOr<std::unique_ptr<Optimizer>> adam = CreateOptimizer(
        AdamOptions{}, {kRows * kRowSize, static_cast<int64_t>(dense.size())}, pool.get());
    ASSERT_OK(adam);
    std::vector<float> t = table;
    std::vector<float> d = dense;
    const std::vector<TensorGrad> tensors = {
        {absl::MakeSpan(t), absl::MakeConstSpan(row_grads), absl::MakeConstSpan(rows), kRowSize},
        {absl::MakeSpan(d), absl::MakeConstSpan(dense_grad), {}, 0}};
    CountingProbe probe;
    StepResult result;
    ASSERT_OK((*adam)->Step(tensors, 1e34, run.probe ? &probe : nullptr, &result));
    EXPECT_EQ(result.non_finite_parameters, 3);
    EXPECT_THAT(result.non_finite_tensors, ElementsAre(0, 1));
    EXPECT_FALSE(std::isfinite(t[1 * kRowSize + 0]));
    EXPECT_FALSE(std::isfinite(t[199999 * kRowSize + 1]));
    EXPECT_EQ(t[5 * kRowSize + 1], kInf);
    EXPECT_FALSE(std::isfinite(d[99999]));
    if (first_table.empty()) {
      first_table = t;
      first_dense = d;
    } else {
      EXPECT_TRUE(BitIdentical({t, d}, {first_table, first_dense}));
    }

    // Only the sparse rows: the dense tensor takes an ordinary step.
    std::vector<float> d2(dense.size(), 1.0f);
    const std::vector<TensorGrad> sparse_only = {
        {absl::MakeSpan(t), absl::MakeConstSpan(row_grads), absl::MakeConstSpan(rows), kRowSize},
        {absl::MakeSpan(d2), absl::MakeConstSpan(dense_grad), {}, 0}};
    ASSERT_OK((*adam)->Step(sparse_only, 1e-3, nullptr, &result));
    EXPECT_EQ(result.non_finite_parameters, 2);  // rows 1 and 199999 stay inf; row 5 is not sent
    EXPECT_THAT(result.non_finite_tensors, ElementsAre(0));
  }
}

// ---------------------------------------------------------------------------------------------
// The contract's edges.

TEST(NonFiniteParamsContractTest, NormalizedGdSkipsAZeroUpdateAndCountsNothing) {
  absl::StatusOr<std::unique_ptr<Optimizer>> ngd =
      CreateOptimizer(NormalizedGdOptions{}, {3}, nullptr);
  ASSERT_OK(ngd);
  std::vector<float> param = {1, kInf, 2};
  const std::vector<float> zero(3, 0.0f);
  const TensorGrad tensor{absl::MakeSpan(param), absl::MakeConstSpan(zero), {}, 0};
  StepResult result{5, {0}};
  ASSERT_OK((*ngd)->Step({tensor}, 0.1, nullptr, &result));
  EXPECT_EQ(result.non_finite_parameters, 0);  // not written: no update
  EXPECT_THAT(result.non_finite_tensors, IsEmpty());
  EXPECT_EQ(param[1], kInf);
}

TEST(NonFiniteParamsContractTest, RefusedStepLeavesTheResultAlone) {
  absl::StatusOr<std::unique_ptr<Optimizer>> sgd = CreateOptimizer(SgdOptions{}, {2, 2});
  ASSERT_OK(sgd);
  std::vector<float> param(2, 1.0f);
  const std::vector<float> grad(2, 1.0f);
  const TensorGrad tensor{absl::MakeSpan(param), absl::MakeConstSpan(grad), {}, 0};
  StepResult result{7, {1}};
  EXPECT_EQ((*sgd)->Step({tensor}, 0.1, nullptr, &result).code(),
            absl::StatusCode::kInvalidArgument);  // one tensor of two
  EXPECT_EQ(result.non_finite_parameters, 7);
  EXPECT_THAT(result.non_finite_tensors, ElementsAre(1));
}

TEST(NonFiniteParamsContractTest, EachResultIsOfItsOwnStepOnly) {
  absl::StatusOr<std::unique_ptr<Optimizer>> sgd = CreateOptimizer(SgdOptions{}, {3, 2});
  ASSERT_OK(sgd);
  Tensors params = {{1, -kMax, 1}, {1, 1}};
  const Tensors grads = {{1, 1, 1}, {1, 1}};
  StepResult result;
  ASSERT_OK((*sgd)->Step(Dense(params, grads), 1e34, nullptr, &result));
  EXPECT_EQ(result.non_finite_parameters, 1);
  // A step without a result, then one with a result on finite parameters: nothing carried over.
  ASSERT_OK((*sgd)->Step(Dense(params, grads), 0.1));
  Tensors fresh = {{1, 2, 3}, {4, 5}};
  ASSERT_OK((*sgd)->Step(Dense(fresh, grads), 0.1, nullptr, &result));
  EXPECT_EQ(result.non_finite_parameters, 0);
  EXPECT_THAT(result.non_finite_tensors, IsEmpty());
}

}  // namespace
}  // namespace optd
