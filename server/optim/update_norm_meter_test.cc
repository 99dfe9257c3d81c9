// UpdateNormMeter's norms, measured around Optimizer::Step's update pass, equal a direct
// computation from copies of the parameters, for every optimizer, dense and row-sparse, on one
// thread and on a pool.

#include "server/optim/update_norm_meter.h"

#include <cmath>
#include <random>
#include <vector>

#include "base/thread_pool.h"
#include "gtest/gtest.h"
#include "server/optim/optimizer.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

std::vector<OptimizerOptions> All() {
  SgdOptions sgd;
  sgd.lr = 0.1;
  sgd.momentum = 0.9;
  return {sgd,
          AdamOptions{},
          AdamWOptions{},
          AdagradOptions{},
          NormalizedGdOptions{},
          AdadeltaOptions{},
          RmspropOptions{},
          NadamOptions{},
          RadamOptions{},
          LionOptions{},
          LambOptions{},
          LarsOptions{}};
}

// Two tensors large enough to run on the pool (more than Optimizer::kParallelMinElements).
constexpr int64_t kA = 200000, kB = 100003;

void Check(const OptimizerOptions& options, ThreadPool* pool) {
  auto o = CreateOptimizer(options, {kA, kB});
  ASSERT_TRUE(o.ok());
  (*o)->set_pool(pool);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> a(kA), b(kB), ga(kA), gb(kB);
  for (float& x : a) x = normal(rng);
  for (float& x : b) x = normal(rng);
  for (int step = 0; step < 3; ++step) {
    for (float& x : ga) x = normal(rng);
    for (float& x : gb) x = normal(rng);
    const std::vector<float> a0 = a, b0 = b;
    std::vector<TensorGrad> t = {{absl::MakeSpan(a), ga}, {absl::MakeSpan(b), gb}};
    UpdateNormMeter norms;
    ASSERT_OK((*o)->Step(t, BaseLearningRate(options), &norms));
    double du = 0, dp = 0;
    for (int64_t i = 0; i < kA; ++i) {
      du += (static_cast<double>(a[i]) - a0[i]) * (static_cast<double>(a[i]) - a0[i]);
      dp += static_cast<double>(a[i]) * a[i];
    }
    for (int64_t i = 0; i < kB; ++i) {
      du += (static_cast<double>(b[i]) - b0[i]) * (static_cast<double>(b[i]) - b0[i]);
      dp += static_cast<double>(b[i]) * b[i];
    }
    EXPECT_NEAR(norms.update_norm(), std::sqrt(du), 1e-9 * (1 + std::sqrt(du)))
        << OptimizerName(options);
    EXPECT_NEAR(norms.parameter_norm(), std::sqrt(dp), 1e-9 * std::sqrt(dp))
        << OptimizerName(options);
  }
}

TEST(UpdateNormMeterTest, MatchADirectComputationForEveryOptimizerOnOneThread) {
  for (const OptimizerOptions& options : All()) Check(options, nullptr);
}

TEST(UpdateNormMeterTest, MatchADirectComputationForEveryOptimizerOnAPool) {
  ThreadPoolOptions two;
  two.num_threads = 2;
  ThreadPool pool(two);
  for (const OptimizerOptions& options : All()) Check(options, &pool);
}

TEST(UpdateNormMeterTest, IncludeRowSparseUpdates) {
  auto adam = CreateOptimizer(AdamOptions{}, {8});
  std::vector<float> table = {1, 2, 3, 4, 5, 6, 7, 8};
  const std::vector<float> before = table;
  const std::vector<int64_t> rows = {1, 3};
  const std::vector<float> g = {1, -1, 0.5, 2};
  std::vector<TensorGrad> t = {{absl::MakeSpan(table), g, rows, 2}};
  UpdateNormMeter norms;
  ASSERT_OK((*adam)->Step(t, 0.1, &norms));
  double du = 0, dp = 0;
  for (size_t i = 0; i < table.size(); ++i) {
    du += (table[i] - before[i]) * (table[i] - before[i]);
    dp += table[i] * table[i];
  }
  EXPECT_GT(du, 0);
  EXPECT_NEAR(norms.update_norm(), std::sqrt(du), 1e-7);
  EXPECT_NEAR(norms.parameter_norm(), std::sqrt(dp), 1e-6);
}

}  // namespace
}  // namespace optd
