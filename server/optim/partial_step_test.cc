// Partial steps (TensorGrad::absent; torch: a parameter whose .grad is None): for every optimizer,
// an absent tensor's parameters, state and step counter stay exactly as they were, and the
// tensors sent move exactly as they would in an optimizer that holds only them.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"
#include "base/status_matchers.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

using ::testing::HasSubstr;

struct Kind {
  std::string name;
  OptimizerOptions options;
};

// Every optimizer, with weight decay and momentum where it has them: the state that torch leaves
// alone for a parameter without a gradient and a zero-gradient step would change.
std::vector<Kind> Kinds() {
  SgdOptions sgd;
  sgd.lr = 0.1;
  sgd.momentum = 0.9;
  sgd.weight_decay = 0.01;
  AdamOptions adam;
  adam.weight_decay = 0.01;
  adam.amsgrad = true;
  AdamWOptions adamw;
  AdagradOptions adagrad;
  adagrad.weight_decay = 0.01;
  NormalizedGdOptions ngd;
  AdadeltaOptions adadelta;
  adadelta.weight_decay = 0.01;
  RmspropOptions rmsprop;
  rmsprop.momentum = 0.5;
  rmsprop.weight_decay = 0.01;
  NadamOptions nadam;
  nadam.weight_decay = 0.01;
  RadamOptions radam;
  radam.weight_decay = 0.01;
  LionOptions lion;
  LambOptions lamb;
  lamb.weight_decay = 0.01;
  LarsOptions lars;
  return {{"sgd", sgd},         {"adam", adam},   {"adamw", adamw},   {"adagrad", adagrad},
          {"normalized_gd", ngd}, {"adadelta", adadelta}, {"rmsprop", rmsprop},
          {"nadam", nadam},     {"radam", radam}, {"lion", lion},     {"lamb", lamb},
          {"lars", lars}};
}

std::unique_ptr<Optimizer> Make(const OptimizerOptions& options, std::vector<int64_t> sizes) {
  absl::StatusOr<std::unique_ptr<Optimizer>> o = CreateOptimizer(options, std::move(sizes));
  EXPECT_OK(o);
  return o.ok() ? *std::move(o) : nullptr;
}

std::vector<float> Gradient(int step, int tensor, size_t n) {
  std::vector<float> g(n);
  for (size_t i = 0; i < n; ++i) g[i] = 0.1f * static_cast<float>((step + 1) * (tensor + 2)) -
                                       0.07f * static_cast<float>(i);
  return g;
}

void ExpectSameState(const OptimizerState::Tensor& a, const OptimizerState::Tensor& b,
                     const std::string& where) {
  EXPECT_EQ(a.step, b.step) << where;
  ASSERT_EQ(a.arrays.size(), b.arrays.size()) << where;
  for (size_t i = 0; i < a.arrays.size(); ++i) {
    EXPECT_EQ(a.arrays[i].name, b.arrays[i].name) << where;
    EXPECT_EQ(a.arrays[i].values, b.arrays[i].values) << where << " " << a.arrays[i].name;
  }
  EXPECT_EQ(a.scalars, b.scalars) << where;
}

// Tensor 1 is sent on steps 2 and 3 only (absent before its first step, and after it); tensor
// 0 every step. Compared with two optimizers holding one tensor each, stepped when it is sent.
// normalized_gd's default norm is global: the one-tensor reference holds only when tensor 1 is
// absent, so its trajectory is checked on tensor 1's absent steps only.
TEST(PartialStepTest, AbsentTensorsAreLeftExactlyAsTheyWere) {
  const std::vector<int64_t> sizes = {5, 3};
  for (const Kind& kind : Kinds()) {
    SCOPED_TRACE(kind.name);
    std::unique_ptr<Optimizer> both = Make(kind.options, sizes);
    std::vector<std::unique_ptr<Optimizer>> alone;
    alone.push_back(Make(kind.options, {sizes[0]}));
    alone.push_back(Make(kind.options, {sizes[1]}));
    ASSERT_NE(both, nullptr);
    std::vector<std::vector<float>> p = {{1, -2, 0.5, 3, -1}, {0.25, -0.5, 2}};
    std::vector<std::vector<float>> q = p;  // the one-tensor optimizers' parameters
    const bool global = kind.name == "normalized_gd";
    for (int step = 0; step < 6; ++step) {
      const bool sent = step == 2 || step == 3;
      std::vector<std::vector<float>> g = {Gradient(step, 0, 5), Gradient(step, 1, 3)};
      std::vector<TensorGrad> tensors(2);
      tensors[0] = {absl::MakeSpan(p[0]), g[0]};
      tensors[1] = {absl::MakeSpan(p[1]), {}, {}, 0, /*absent=*/!sent};
      if (sent) tensors[1].grad = g[1];
      const std::vector<float> before = p[1];
      const OptimizerState::Tensor state_before = both->ExportState().tensors[1];
      ASSERT_OK(both->Step(tensors, 0.01));
      if (!sent) {
        EXPECT_EQ(p[1], before) << "step " << step;  // bit for bit
        ExpectSameState(both->ExportState().tensors[1], state_before, "absent");
      }
      for (int t = 0; t < 2; ++t) {
        if (t == 1 && !sent) continue;
        TensorGrad one = {absl::MakeSpan(q[t]), g[t]};
        ASSERT_OK(alone[t]->Step({one}, 0.01));
      }
      if (global && sent) {
        q = p;  // a global norm couples the tensors: resynchronise
        continue;
      }
      EXPECT_EQ(p[0], q[0]) << "step " << step;
      EXPECT_EQ(p[1], q[1]) << "step " << step;
    }
    if (!global) {
      ExpectSameState(both->ExportState().tensors[1], alone[1]->ExportState().tensors[0], "t1");
      ExpectSameState(both->ExportState().tensors[0], alone[0]->ExportState().tensors[0], "t0");
    }
  }
}

TEST(PartialStepTest, AStepNeedsOneTensorAndAbsentMeansNoGradient) {
  std::unique_ptr<Optimizer> o = Make(AdamOptions{}, {2, 2});
  std::vector<float> a = {1, 2}, b = {3, 4}, g = {1, 1};
  std::vector<TensorGrad> none = {{absl::MakeSpan(a), {}, {}, 0, true},
                                  {absl::MakeSpan(b), {}, {}, 0, true}};
  EXPECT_THAT(o->Step(none, 0.1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("at least one tensor")));
  std::vector<TensorGrad> both = {{absl::MakeSpan(a), g, {}, 0, true},
                                  {absl::MakeSpan(b), g}};
  EXPECT_THAT(o->Step(both, 0.1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("absent from the step")));
  EXPECT_EQ(a, std::vector<float>({1, 2}));
  EXPECT_EQ(o->StateBytes(), 0);
}

}  // namespace
}  // namespace optd
