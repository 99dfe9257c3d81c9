// Partial steps (TensorGrad::absent; torch: a parameter whose .grad is None) with the optimizers
// of #15. Per optimizer (README "Partial steps"):
//   - Adafactor, Muon: all state per tensor; an absent tensor is left exactly as it was and the
//     others move as in an optimizer holding only them (as partial_step_test.cc checks for the
//     classic optimizers).
//   - Schedule-Free AdamW and SGD: exact as upstream: a skipped tensor keeps its y, z and moments,
//     while the model-wide counters (k, weight_sum, lr_max), which do not depend on gradients,
//     advance every step as upstream's per-group counters do.
//   - Prodigy, D-Adaptation Adam and SGD, DoG, L-DoG: refused (InvalidArgument naming the
//     optimizer and why), changing nothing: their estimate sums over every tensor's state.

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
#include "server/optim/optimizer_state.h"

namespace optd {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

std::unique_ptr<Optimizer> Make(const OptimizerOptions& options, std::vector<int64_t> sizes) {
  absl::StatusOr<std::unique_ptr<Optimizer>> o = CreateOptimizer(options, std::move(sizes));
  EXPECT_OK(o);
  return o.ok() ? *std::move(o) : nullptr;
}

std::vector<float> Gradient(int step, int tensor, size_t n) {
  std::vector<float> g(n);
  for (size_t i = 0; i < n; ++i) {
    g[i] = 0.1f * static_cast<float>((step + 1) * (tensor + 2)) - 0.07f * static_cast<float>(i);
  }
  return g;
}

void ExpectSameTensorState(const OptimizerState::Tensor& a, const OptimizerState::Tensor& b,
                           const std::string& where) {
  EXPECT_EQ(a.step, b.step) << where;
  ASSERT_EQ(a.arrays.size(), b.arrays.size()) << where;
  for (size_t i = 0; i < a.arrays.size(); ++i) {
    EXPECT_EQ(a.arrays[i].name, b.arrays[i].name) << where;
    EXPECT_EQ(a.arrays[i].values, b.arrays[i].values) << where << " " << a.arrays[i].name;
  }
  EXPECT_EQ(a.scalars, b.scalars) << where;
}

// Tensor 1 is sent on steps 2 and 3 only; tensor 0 every step.
bool Sent(int step) { return step == 2 || step == 3; }

TEST(PartialStepLrFreeTest, PerTensorOptimizersLeaveAbsentTensorsAndMoveTheOthersAlone) {
  AdafactorOptions adafactor;
  adafactor.weight_decay = 0.01;
  MuonOptions muon;
  muon.adam_weight_decay = 0.01;
  const std::vector<std::pair<std::string, OptimizerOptions>> kinds = {{"adafactor", adafactor},
                                                                       {"muon", muon}};
  const std::vector<int64_t> sizes = {5, 3};
  for (const auto& [name, options] : kinds) {
    SCOPED_TRACE(name);
    std::unique_ptr<Optimizer> both = Make(options, sizes);
    std::unique_ptr<Optimizer> alone0 = Make(options, {sizes[0]});
    std::unique_ptr<Optimizer> alone1 = Make(options, {sizes[1]});
    ASSERT_NE(both, nullptr);
    std::vector<std::vector<float>> p = {{1, -2, 0.5, 3, -1}, {0.25, -0.5, 2}};
    std::vector<std::vector<float>> q = p;
    for (int step = 0; step < 6; ++step) {
      std::vector<std::vector<float>> g = {Gradient(step, 0, 5), Gradient(step, 1, 3)};
      std::vector<TensorGrad> tensors(2);
      tensors[0] = {absl::MakeSpan(p[0]), g[0]};
      tensors[1] = {absl::MakeSpan(p[1]), {}, {}, 0, /*absent=*/!Sent(step)};
      if (Sent(step)) tensors[1].grad = g[1];
      const std::vector<float> before = p[1];
      const OptimizerState::Tensor state_before = both->ExportState().tensors[1];
      ASSERT_OK(both->Step(tensors, 0.01));
      if (!Sent(step)) {
        EXPECT_EQ(p[1], before) << "step " << step;
        ExpectSameTensorState(both->ExportState().tensors[1], state_before, "absent");
      }
      TensorGrad one0 = {absl::MakeSpan(q[0]), g[0]};
      ASSERT_OK(alone0->Step({one0}, 0.01));
      if (Sent(step)) {
        TensorGrad one1 = {absl::MakeSpan(q[1]), g[1]};
        ASSERT_OK(alone1->Step({one1}, 0.01));
      }
      EXPECT_EQ(p, q) << "step " << step;
    }
  }
}

TEST(PartialStepLrFreeTest, ScheduleFreeSkipsTheTensorAndAdvancesTheSharedCounters) {
  ScheduleFreeAdamWOptions adamw;
  adamw.weight_decay = 0.01;
  adamw.warmup_steps = 3;
  adamw.inner_momentum = 0.5;
  ScheduleFreeSgdOptions sgd;
  sgd.weight_decay = 0.01;
  const std::vector<std::pair<std::string, OptimizerOptions>> kinds = {
      {"schedulefree_adamw", adamw}, {"schedulefree_sgd", sgd}};
  const std::vector<int64_t> sizes = {5, 3};
  for (const auto& [name, options] : kinds) {
    SCOPED_TRACE(name);
    std::unique_ptr<Optimizer> both = Make(options, sizes);
    // Tensor 0 alone, stepped every step: its counters advance exactly as `both`'s.
    std::unique_ptr<Optimizer> alone0 = Make(options, {sizes[0]});
    ASSERT_NE(both, nullptr);
    std::vector<std::vector<float>> p = {{1, -2, 0.5, 3, -1}, {0.25, -0.5, 2}};
    std::vector<float> q0 = p[0];
    for (int step = 0; step < 6; ++step) {
      std::vector<std::vector<float>> g = {Gradient(step, 0, 5), Gradient(step, 1, 3)};
      std::vector<TensorGrad> tensors(2);
      tensors[0] = {absl::MakeSpan(p[0]), g[0]};
      tensors[1] = {absl::MakeSpan(p[1]), {}, {}, 0, /*absent=*/!Sent(step)};
      if (Sent(step)) tensors[1].grad = g[1];
      const OptimizerState before = both->ExportState();
      const std::vector<float> p1_before = p[1];
      // Tensor 1 as upstream moves it when it has a gradient: one tensor of a group whose shared
      // counters are where `both`'s are (imported), with its own state.
      std::unique_ptr<Optimizer> reference1 = Make(options, {sizes[1]});
      OptimizerState one;
      one.tensors = {before.tensors[1]};
      one.scalars = before.scalars;
      ASSERT_OK(reference1->ImportState(one));
      std::vector<float> r1 = p[1];

      ASSERT_OK(both->Step(tensors, 0.01));
      TensorGrad one0 = {absl::MakeSpan(q0), g[0]};
      ASSERT_OK(alone0->Step({one0}, 0.01));
      EXPECT_EQ(p[0], q0) << "step " << step;
      EXPECT_EQ(both->ExportState().scalars, alone0->ExportState().scalars) << "step " << step;
      if (Sent(step)) {
        TensorGrad ref = {absl::MakeSpan(r1), g[1]};
        ASSERT_OK(reference1->Step({ref}, 0.01));
        EXPECT_EQ(p[1], r1) << "step " << step;
        ExpectSameTensorState(both->ExportState().tensors[1], reference1->ExportState().tensors[0],
                              "sent");
      } else {
        EXPECT_EQ(p[1], p1_before) << "step " << step;
        ExpectSameTensorState(both->ExportState().tensors[1], before.tensors[1], "absent");
        // Its evaluation point is still x = (y - (1 - beta1) z) / beta1 of what it holds.
        std::vector<float> x(3), x_before(3);
        ASSERT_OK(both->EvaluationPoint(1, p[1], absl::MakeSpan(x)));
        ASSERT_OK(reference1->EvaluationPoint(0, p1_before, absl::MakeSpan(x_before)));
        EXPECT_EQ(x, x_before) << "step " << step;
      }
    }
  }
}

TEST(PartialStepLrFreeTest, ModelWideEstimatesRefuseAPartialStepAndChangeNothing) {
  const std::vector<std::pair<std::string, OptimizerOptions>> kinds = {
      {"prodigy", ProdigyOptions{}},
      {"dadapt_adam", DAdaptAdamOptions{}},
      {"dadapt_sgd", DAdaptSgdOptions{}},
      {"dog", DogOptions{}},
      {"ldog", LdogOptions{}}};
  for (const auto& [name, options] : kinds) {
    SCOPED_TRACE(name);
    std::unique_ptr<Optimizer> o = Make(options, {4, 2});
    ASSERT_NE(o, nullptr);
    EXPECT_THAT(o->PartialSteps(), StatusIs(absl::StatusCode::kInvalidArgument,
                                            AllOf(HasSubstr(name + " refuses a partial step"),
                                                  HasSubstr("send a gradient for every tensor"))));
    std::vector<float> a = {1, 2, 3, 4}, b = {5, 6};
    const std::vector<float> g = {0.5, -0.5, 0.25, 1}, h = {1, -1};
    // One full step first, so that there is state to keep.
    ASSERT_OK(o->Step({{absl::MakeSpan(a), g}, {absl::MakeSpan(b), h}}, 1.0));
    const std::vector<float> a0 = a, b0 = b;
    const OptimizerState state = o->ExportState();
    std::vector<TensorGrad> partial = {{absl::MakeSpan(a), g},
                                       {absl::MakeSpan(b), {}, {}, 0, true}};
    EXPECT_THAT(o->Step(partial, 1.0), StatusIs(absl::StatusCode::kInvalidArgument,
                                                HasSubstr(name + " refuses a partial step")));
    EXPECT_EQ(a, a0);
    EXPECT_EQ(b, b0);
    const OptimizerState after = o->ExportState();
    EXPECT_EQ(after.scalars, state.scalars);
    for (size_t t = 0; t < 2; ++t) ExpectSameTensorState(after.tensors[t], state.tensors[t], "t");
    // A full step still works.
    EXPECT_OK(o->Step({{absl::MakeSpan(a), g}, {absl::MakeSpan(b), h}}, 1.0));
  }
}

}  // namespace
}  // namespace optd
