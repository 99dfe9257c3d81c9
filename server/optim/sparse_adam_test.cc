// Row-sparse gradients: Adam follows torch.optim.SparseAdam (lazy rows, eps outside the
// bias-corrected root, tensor-level step count); Adagrad applies them dense-equivalent.

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/optim/optimizer.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

using ::testing::HasSubstr;

absl::Status StepRows(Optimizer& o, std::vector<float>& table, std::vector<int64_t> rows,
                      std::vector<float> values, double lr) {
  std::vector<TensorGrad> t = {{absl::MakeSpan(table), values, rows, 2}};
  return o.Step(t, lr);
}

void ExpectTable(const std::vector<float>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 2e-7) << i;
}

TEST(SparseAdamTest, MatchesTorchSparseAdamGoldenVectors) {
  // reference/optimizers.md section 7: SparseAdam(lr=0.01) on a 4x2 table.
  AdamOptions options;
  options.lr = 0.01;
  auto adam = CreateOptimizer(options, {8});
  ASSERT_TRUE(adam.ok());
  std::vector<float> table = {1, -1, 0.5, 0.5, 0, 2, -1, 0};
  ASSERT_OK(StepRows(**adam, table, {0, 2}, {0.1f, 0.2f, 0.3f, -0.4f}, 0.01));
  ExpectTable(table, {0.9900000316226766, -1.0099999841886367, 0.5, 0.5, -0.009999989459085576,
                      2.009999992094312, -1.0, 0.0});
  // Rows [0, 0, 3]: the duplicate row 0 arrives summed (the session coalesces).
  ASSERT_OK(StepRows(**adam, table, {0, 3}, {0.1f + 0.2f, 0.1f + 0.2f, -0.5f, 0.5f}, 0.01));
  ExpectTable(table, {0.9808222296111345, -1.019908048142719, 0.5, 0.5, -0.009999989459085576,
                      2.009999992094312, -0.9925586364706617, -0.00744136352933829});
  ASSERT_OK(StepRows(**adam, table, {2}, {1, 1}, 0.01));
  ExpectTable(table, {0.9808222296111345, -1.019908048142719, 0.5, 0.5, -0.017771088139215373,
                      2.006203740753547, -0.9925586364706617, -0.00744136352933829});
}

TEST(SparseAdamTest, RefusedWithWeightDecayOrAmsgradAsTorchHasNeither) {
  AdamWOptions w;  // weight_decay 1e-2 by default
  auto adamw = CreateOptimizer(w, {8});
  std::vector<float> table(8);
  absl::Status s = StepRows(**adamw, table, {0}, {1, 1}, 0.01);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("adamw.weight_decay = 0.01 must be 0"));
  AdamOptions ams;
  ams.amsgrad = true;
  auto adam = CreateOptimizer(ams, {8});
  EXPECT_THAT(StepRows(**adam, table, {0}, {1, 1}, 0.01).message(), HasSubstr("amsgrad"));
}

TEST(SparseAdamTest, MalformedRowsAreRefusedAndNothingChanges) {
  auto adam = CreateOptimizer(AdamOptions{}, {8});
  std::vector<float> table = {1, 2, 3, 4, 5, 6, 7, 8};
  EXPECT_THAT(StepRows(**adam, table, {2, 1}, {1, 1, 1, 1}, 0.01).message(),
              HasSubstr("sorted, unique"));
  EXPECT_THAT(StepRows(**adam, table, {4}, {1, 1}, 0.01).message(), HasSubstr("in [0, 4)"));
  EXPECT_THAT(StepRows(**adam, table, {1}, {1}, 0.01).message(), HasSubstr("has 1 values"));
  EXPECT_EQ(table, (std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(SparseAdamTest, OptimizersWithoutALazyRuleWantDenseGradients) {
  auto sgd = CreateOptimizer(SgdOptions{}, {8});
  std::vector<float> table(8);
  EXPECT_THAT(StepRows(**sgd, table, {0}, {1, 1}, 0.01).message(), HasSubstr("densify it first"));
  EXPECT_EQ(*(*sgd)->RowSparse(), RowSparseRule::kDensify);
  AdagradOptions a;
  a.weight_decay = 0.1;
  auto adagrad = CreateOptimizer(a, {8});
  EXPECT_THAT((*adagrad)->RowSparse().status().message(),
              HasSubstr("adagrad.weight_decay = 0.1 is not compatible with row-sparse"));
}

}  // namespace
}  // namespace optd
