// GroupedOptimizer (parameter groups, torch.optim's param_groups): each group's tensors move
// exactly as an optimizer holding only them with the group's options would move them; the state
// exports and imports per tensor; a group's options change on their own; the step's lr scales
// every group by the same factor; malformed groups and optimizers with model-wide state are
// refused with messages naming the group.

#include "server/optim/grouped_optimizer.h"

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {
namespace {

using ::testing::HasSubstr;

const TensorShapes kShapes = {{2, 3}, {3}, {4}};

std::vector<float> Gradient(int step, int tensor, size_t n) {
  std::vector<float> g(n);
  for (size_t i = 0; i < n; ++i) {
    g[i] = 0.1f * static_cast<float>((step + 1) * (tensor + 2)) - 0.07f * static_cast<float>(i);
  }
  return g;
}

std::vector<std::vector<float>> Initial() {
  return {{1, -2, 0.5, 3, -1, 0.25}, {0.25, -0.5, 2}, {1, 2, 3, 4}};
}

AdamOptions Adam(double lr, double weight_decay, double beta1) {
  AdamOptions a;
  a.lr = lr;
  a.weight_decay = weight_decay;
  a.beta1 = beta1;
  return a;
}

// Group 0: tensor 1; param_groups[0]: tensors 0 and 2 with another lr, weight decay and beta1.
// Against two plain optimizers, one per group, stepped with the same gradients.
TEST(GroupedOptimizerTest, EachGroupMovesAsAnOptimizerOfItsOwnTensors) {
  const std::vector<std::pair<std::string, std::pair<OptimizerOptions, OptimizerOptions>>> kinds = {
      {"adam", {Adam(1e-2, 0, 0.9), Adam(3e-2, 0.1, 0.8)}},
      {"adamw",
       {AdamWOptions{},
        [] {
          AdamWOptions o;
          o.lr = 0.05;
          o.weight_decay = 0.5;
          o.beta2 = 0.99;
          return o;
        }()}},
      {"sgd",
       {[] {
          SgdOptions o;
          o.lr = 0.1;
          o.momentum = 0.9;
          return o;
        }(),
        [] {
          SgdOptions o;
          o.lr = 0.01;
          o.momentum = 0.5;
          o.weight_decay = 0.01;
          o.nesterov = true;
          return o;
        }()}}};
  for (const auto& [name, options] : kinds) {
    SCOPED_TRACE(name);
    absl::StatusOr<std::unique_ptr<Optimizer>> grouped =
        CreateGroupedOptimizer({{{1}, options.first}, {{2, 0}, options.second}}, kShapes);
    ASSERT_OK(grouped);
    absl::StatusOr<std::unique_ptr<Optimizer>> g0 =
        CreateOptimizerForShapes(options.first, {kShapes[1]});
    absl::StatusOr<std::unique_ptr<Optimizer>> g1 =
        CreateOptimizerForShapes(options.second, {kShapes[0], kShapes[2]});
    ASSERT_OK(g0);
    ASSERT_OK(g1);
    std::vector<std::vector<float>> p = Initial(), q = Initial();
    const double lr0 = BaseLearningRate(options.first);
    for (int step = 0; step < 5; ++step) {
      std::vector<std::vector<float>> g = {Gradient(step, 0, 6), Gradient(step, 1, 3),
                                           Gradient(step, 2, 4)};
      std::vector<TensorGrad> all;
      for (int t = 0; t < 3; ++t) all.push_back({absl::MakeSpan(p[t]), g[t]});
      ASSERT_OK((*grouped)->Step(all, lr0));
      ASSERT_OK((*g0)->Step({{absl::MakeSpan(q[1]), g[1]}}, lr0));
      ASSERT_OK((*g1)->Step({{absl::MakeSpan(q[0]), g[0]}, {absl::MakeSpan(q[2]), g[2]}},
                            BaseLearningRate(options.second)));
      EXPECT_EQ(p, q) << "step " << step;  // bit for bit
    }
    // The state, per tensor in the session's order, is each group's.
    const OptimizerState state = (*grouped)->ExportState();
    ASSERT_EQ(state.tensors.size(), 3u);
    EXPECT_EQ(state.tensors[1].arrays.size(), (*g0)->ExportState().tensors[0].arrays.size());
    for (size_t a = 0; a < state.tensors[0].arrays.size(); ++a) {
      EXPECT_EQ(state.tensors[0].arrays[a].values,
                (*g1)->ExportState().tensors[0].arrays[a].values);
      EXPECT_EQ(state.tensors[2].arrays[a].values,
                (*g1)->ExportState().tensors[1].arrays[a].values);
    }
    // And imports into a fresh grouped optimizer, which then continues identically.
    absl::StatusOr<std::unique_ptr<Optimizer>> copy =
        CreateGroupedOptimizer({{{1}, options.first}, {{0, 2}, options.second}}, kShapes);
    ASSERT_OK(copy);
    ASSERT_OK((*copy)->ImportState(state));
    std::vector<std::vector<float>> r = p;
    std::vector<std::vector<float>> g = {Gradient(9, 0, 6), Gradient(9, 1, 3), Gradient(9, 2, 4)};
    std::vector<TensorGrad> a, b;
    for (int t = 0; t < 3; ++t) a.push_back({absl::MakeSpan(p[t]), g[t]});
    for (int t = 0; t < 3; ++t) b.push_back({absl::MakeSpan(r[t]), g[t]});
    ASSERT_OK((*grouped)->Step(a, lr0));
    ASSERT_OK((*copy)->Step(b, lr0));
    EXPECT_EQ(p, r);
  }
}

TEST(GroupedOptimizerTest, TheStepLrScalesEveryGroupByTheSameFactor) {
  // A schedule at half the base lr halves every group's lr (as a torch scheduler would).
  absl::StatusOr<std::unique_ptr<Optimizer>> grouped = CreateGroupedOptimizer({{{0},
                                                                                [] {
                                                                                  SgdOptions o;
                                                                                  o.lr = 0.2;
                                                                                  return o;
                                                                                }()},
                                                                               {{1},
                                                                                [] {
                                                                                  SgdOptions o;
                                                                                  o.lr = 0.02;
                                                                                  return o;
                                                                                }()}},
                                                                              {{1}, {1}});
  ASSERT_OK(grouped);
  std::vector<float> a = {1}, b = {1};
  const std::vector<float> g = {1};
  ASSERT_OK((*grouped)->Step({{absl::MakeSpan(a), g}, {absl::MakeSpan(b), g}}, 0.1));
  EXPECT_FLOAT_EQ(a[0], 1 - 0.1f);
  EXPECT_FLOAT_EQ(b[0], 1 - 0.01f);
}

TEST(GroupedOptimizerTest, AGroupsOptionsChangeOnTheirOwn) {
  absl::StatusOr<std::unique_ptr<Optimizer>> o =
      CreateGroupedOptimizer({{{0}, Adam(0.1, 0, 0.9)}, {{1}, Adam(0.01, 0, 0.9)}}, {{1}, {1}});
  ASSERT_OK(o);
  auto* grouped = dynamic_cast<GroupedOptimizer*>(o->get());
  ASSERT_NE(grouped, nullptr);
  EXPECT_EQ(grouped->num_groups(), 2u);
  ASSERT_OK(grouped->UpdateGroupOptions(1, Adam(0.5, 0.1, 0.9)));
  EXPECT_EQ(std::get<AdamOptions>(grouped->GroupOptions(1)).lr, 0.5);
  EXPECT_EQ(std::get<AdamOptions>(grouped->GroupOptions(0)).lr, 0.1);
  EXPECT_EQ(std::get<AdamOptions>(grouped->options()).lr, 0.1);
  EXPECT_THAT(grouped->UpdateGroupOptions(1, AdamWOptions{}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("param_groups[0]: ")));
  AdamOptions amsgrad = Adam(0.5, 0.1, 0.9);
  amsgrad.amsgrad = true;
  EXPECT_THAT(grouped->UpdateGroupOptions(1, amsgrad),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("amsgrad")));
  EXPECT_THAT(grouped->UpdateGroupOptions(2, Adam(0.5, 0, 0.9)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("param_groups[1] does not")));
  EXPECT_EQ(std::get<AdamOptions>(grouped->GroupOptions(1)).lr, 0.5);
}

TEST(GroupedOptimizerTest, PartialStepsSkipTensorsInAnyGroup) {
  absl::StatusOr<std::unique_ptr<Optimizer>> o =
      CreateGroupedOptimizer({{{0}, Adam(0.1, 0.1, 0.9)}, {{1}, Adam(0.01, 0.1, 0.9)}}, {{2}, {2}});
  ASSERT_OK(o);
  std::vector<float> a = {1, 2}, b = {3, 4};
  const std::vector<float> g = {1, -1};
  ASSERT_OK((*o)->Step({{absl::MakeSpan(a), g}, {absl::MakeSpan(b), {}, {}, 0, true}}, 0.1));
  EXPECT_EQ(b, std::vector<float>({3, 4}));
  EXPECT_NE(a, std::vector<float>({1, 2}));
  EXPECT_EQ((*o)->ExportState().tensors[1].step, 0);
}

TEST(GroupedOptimizerTest, MalformedGroupsAreRefusedNamingTheGroup) {
  const AdamOptions adam;
  EXPECT_THAT(
      CreateGroupedOptimizer({{{0}, adam}, {{}, adam}}, {{1}}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("param_groups[0].tensors is empty")));
  EXPECT_THAT(CreateGroupedOptimizer({{{0}, adam}, {{0}, adam}}, {{1}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("param_groups[0]: tensor 0 is already in the session's")));
  EXPECT_THAT(CreateGroupedOptimizer({{{}, adam}, {{0}, AdamWOptions{}}}, {{1}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("param_groups[0].optimizer is adamw but the session's optimizer "
                                 "is adam")));
  EXPECT_THAT(CreateGroupedOptimizer({{{}, adam}, {{0}, Adam(-1, 0, 0.9)}}, {{1}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("param_groups[0]: ")));
  EXPECT_THAT(CreateGroupedOptimizer({{{}, adam}, {{0}, adam}}, {{1}, {1}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tensor 1 is in no")));
  EXPECT_THAT(CreateGroupedOptimizer({{{}, adam}, {{3}, adam}}, {{1}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tensor 3 does not exist")));
  for (const OptimizerOptions& o :
       {OptimizerOptions{ProdigyOptions{}}, OptimizerOptions{DAdaptAdamOptions{}},
        OptimizerOptions{DogOptions{}}, OptimizerOptions{ScheduleFreeAdamWOptions{}}}) {
    EXPECT_THAT(CreateGroupedOptimizer({{{0}, o}, {{1}, o}}, {{1}, {1}}),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("keeps model-wide state")))
        << OptimizerName(o);
  }
}

}  // namespace
}  // namespace optd
