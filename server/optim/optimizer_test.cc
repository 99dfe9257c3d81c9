#include "server/optim/optimizer.h"

#include <cmath>
#include <limits>
#include <memory>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/thread_pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/optim/adadelta.h"
#include "server/optim/adagrad.h"
#include "server/optim/adam.h"
#include "server/optim/lamb.h"
#include "server/optim/lars.h"
#include "server/optim/lion.h"
#include "server/optim/nadam.h"
#include "server/optim/normalized_gd.h"
#include "server/optim/radam.h"
#include "server/optim/rmsprop.h"
#include "server/optim/sgd.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<Optimizer> MustCreate(const OptimizerOptions& options, std::vector<int64_t> sizes) {
  absl::StatusOr<std::unique_ptr<Optimizer>> optimizer = CreateOptimizer(options, sizes);
  EXPECT_OK(optimizer);
  return optimizer.ok() ? *std::move(optimizer) : nullptr;
}

// ---------------------------------------------------------------------------------------------
// CreateOptimizer

TEST(CreateOptimizerTest, BuildsTheClassTheOptionsName) {
  SgdOptions sgd;
  sgd.lr = 0.1;
  EXPECT_NE(dynamic_cast<Sgd*>(MustCreate(sgd, {1}).get()), nullptr);
  EXPECT_NE(dynamic_cast<Adam*>(MustCreate(AdamOptions{}, {1}).get()), nullptr);
  EXPECT_NE(dynamic_cast<Adam*>(MustCreate(AdamWOptions{}, {1}).get()), nullptr);
  EXPECT_NE(dynamic_cast<Adagrad*>(MustCreate(AdagradOptions{}, {1}).get()), nullptr);
  EXPECT_NE(dynamic_cast<NormalizedGd*>(MustCreate(NormalizedGdOptions{}, {1}).get()), nullptr);
  EXPECT_NE(dynamic_cast<Adadelta*>(MustCreate(AdadeltaOptions{}, {1}).get()), nullptr);
  EXPECT_NE(dynamic_cast<Rmsprop*>(MustCreate(RmspropOptions{}, {1}).get()), nullptr);
  EXPECT_NE(dynamic_cast<Nadam*>(MustCreate(NadamOptions{}, {1}).get()), nullptr);
  EXPECT_NE(dynamic_cast<Radam*>(MustCreate(RadamOptions{}, {1}).get()), nullptr);
  EXPECT_NE(dynamic_cast<Lion*>(MustCreate(LionOptions{}, {1}).get()), nullptr);
  EXPECT_NE(dynamic_cast<Lamb*>(MustCreate(LambOptions{}, {1}).get()), nullptr);
  EXPECT_NE(dynamic_cast<Lars*>(MustCreate(LarsOptions{}, {1}).get()), nullptr);
}

TEST(CreateOptimizerTest, RunsOnTheDefaultPoolUnlessGivenOne) {
  EXPECT_EQ(MustCreate(AdamOptions{}, {1})->pool(), ThreadPool::Default());
  ThreadPool pool;
  absl::StatusOr<std::unique_ptr<Optimizer>> on_pool = CreateOptimizer(AdamOptions{}, {1}, &pool);
  ASSERT_OK(on_pool);
  EXPECT_EQ((*on_pool)->pool(), &pool);
  absl::StatusOr<std::unique_ptr<Optimizer>> inline_only =
      CreateOptimizer(AdamOptions{}, {1}, nullptr);
  ASSERT_OK(inline_only);
  EXPECT_EQ((*inline_only)->pool(), nullptr);
}

TEST(CreateOptimizerTest, StateBytesPerElementFollowsTheReferenceTable) {
  EXPECT_EQ(MustCreate(AdadeltaOptions{}, {1})->StateBytesPerElement(), 8);
  EXPECT_EQ(MustCreate(RmspropOptions{}, {1})->StateBytesPerElement(), 4);
  EXPECT_EQ(MustCreate(NadamOptions{}, {1})->StateBytesPerElement(), 8);
  EXPECT_EQ(MustCreate(RadamOptions{}, {1})->StateBytesPerElement(), 8);
  EXPECT_EQ(MustCreate(LionOptions{}, {1})->StateBytesPerElement(), 4);
  EXPECT_EQ(MustCreate(LambOptions{}, {1})->StateBytesPerElement(), 8);
  EXPECT_EQ(MustCreate(LarsOptions{}, {1})->StateBytesPerElement(), 4);
}

TEST(CreateOptimizerTest, OptimizerReportsTheOptionsItWasCreatedWith) {
  AdamWOptions adamw;
  adamw.weight_decay = 0.25;
  std::unique_ptr<Optimizer> optimizer = MustCreate(adamw, {2, 3});
  ASSERT_NE(optimizer, nullptr);
  const OptimizerOptions got = optimizer->options();
  ASSERT_TRUE(std::holds_alternative<AdamWOptions>(got));
  EXPECT_EQ(std::get<AdamWOptions>(got).weight_decay, 0.25);
  EXPECT_EQ(optimizer->tensor_sizes(), (std::vector<int64_t>{2, 3}));
}

TEST(CreateOptimizerTest, RejectsInvalidOptionsWithTheValidationMessage) {
  AdamOptions adam;
  adam.beta1 = 1.5;
  const absl::StatusOr<std::unique_ptr<Optimizer>> optimizer = CreateOptimizer(adam, {1});
  EXPECT_EQ(optimizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(optimizer.status().message(), adam.Validate().message());
}

TEST(CreateOptimizerTest, RejectsAnEmptyTensorList) {
  const absl::StatusOr<std::unique_ptr<Optimizer>> optimizer = CreateOptimizer(AdamOptions{}, {});
  EXPECT_EQ(optimizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(optimizer.status().message(), HasSubstr("tensor_sizes is empty"));
}

TEST(CreateOptimizerTest, RejectsAZeroSizedTensor) {
  const absl::StatusOr<std::unique_ptr<Optimizer>> optimizer =
      CreateOptimizer(AdamOptions{}, {3, 0});
  EXPECT_EQ(optimizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(optimizer.status().message(), HasSubstr("tensor_sizes[1] = 0"));
  EXPECT_THAT(optimizer.status().message(), HasSubstr("must be >= 1"));
}

TEST(CreateOptimizerTest, RejectsANegativeSize) {
  const absl::StatusOr<std::unique_ptr<Optimizer>> optimizer =
      CreateOptimizer(AdagradOptions{}, {-4});
  EXPECT_EQ(optimizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(optimizer.status().message(), HasSubstr("tensor_sizes[0] = -4"));
}

// ---------------------------------------------------------------------------------------------
// Optimizer::Step argument checks. Adam is used because it has state to leave untouched.

class StepCheckTest : public ::testing::Test {
 protected:
  StepCheckTest() : optimizer_(MustCreate(AdamOptions{}, {2, 3})) {}

  // Expects the params unchanged and no state allocated.
  void ExpectNothingChanged() {
    EXPECT_EQ(p0_, (std::vector<float>{1.0f, 2.0f}));
    EXPECT_EQ(p1_, (std::vector<float>{3.0f, 4.0f, 5.0f}));
    EXPECT_EQ(optimizer_->StateBytes(), 0);
  }

  std::unique_ptr<Optimizer> optimizer_;
  std::vector<float> p0_ = {1.0f, 2.0f};
  std::vector<float> p1_ = {3.0f, 4.0f, 5.0f};
  std::vector<float> g0_ = {1.0f, 1.0f};
  std::vector<float> g1_ = {1.0f, 1.0f, 1.0f};
};

TEST_F(StepCheckTest, AcceptsTheSizesGivenAtCreation) {
  EXPECT_OK(StepTwo(*optimizer_, p0_, g0_, p1_, g1_, 0.1));
  EXPECT_NE(p0_, (std::vector<float>{1.0f, 2.0f}));
}

TEST_F(StepCheckTest, RejectsTooFewTensors) {
  const absl::Status status = StepOne(*optimizer_, p0_, g0_, 0.1);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("step has 1 tensors, expected 2"));
  ExpectNothingChanged();
}

TEST_F(StepCheckTest, RejectsTooManyTensors) {
  std::vector<float> p2 = {0.0f}, g2 = {1.0f};
  const TensorGrad tensors[] = {{absl::MakeSpan(p0_), absl::MakeConstSpan(g0_)},
                                {absl::MakeSpan(p1_), absl::MakeConstSpan(g1_)},
                                {absl::MakeSpan(p2), absl::MakeConstSpan(g2)}};
  const absl::Status status = optimizer_->Step(tensors, 0.1);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("step has 3 tensors, expected 2"));
  ExpectNothingChanged();
  EXPECT_EQ(p2[0], 0.0f);
}

TEST_F(StepCheckTest, RejectsAWrongSizeWithoutUpdatingEarlierTensors) {
  std::vector<float> p1 = {3.0f, 4.0f}, g1 = {1.0f, 1.0f};
  const absl::Status status = StepTwo(*optimizer_, p0_, g0_, p1, g1, 0.1);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("tensor 1 has 2 parameters, expected 3"));
  ExpectNothingChanged();
  EXPECT_EQ(p1, (std::vector<float>{3.0f, 4.0f}));
}

TEST_F(StepCheckTest, RejectsAGradientWhoseSizeDiffersFromItsParam) {
  std::vector<float> short_grad = {1.0f};
  const absl::Status status = StepTwo(*optimizer_, p0_, short_grad, p1_, g1_, 0.1);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("tensor 0 has a gradient of 1 elements for 2"));
  ExpectNothingChanged();
}

TEST_F(StepCheckTest, RejectsANegativeLr) {
  const absl::Status status = StepTwo(*optimizer_, p0_, g0_, p1_, g1_, -0.1);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("lr = -0.1 is out of range"));
  ExpectNothingChanged();
}

TEST_F(StepCheckTest, RejectsANanLr) {
  const absl::Status status =
      StepTwo(*optimizer_, p0_, g0_, p1_, g1_, std::numeric_limits<double>::quiet_NaN());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("must be finite and >= 0"));
  ExpectNothingChanged();
}

TEST_F(StepCheckTest, ARejectedStepDoesNotCountAsAStep) {
  std::vector<float> short_grad = {1.0f};
  EXPECT_EQ(StepTwo(*optimizer_, p0_, short_grad, p1_, g1_, 0.1).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_OK(StepTwo(*optimizer_, p0_, g0_, p1_, g1_, 0.1));
  // A first Adam step moves each coordinate by lr.
  EXPECT_NEAR(p0_[0], 0.9f, 1e-6);
  EXPECT_NEAR(p1_[2], 4.9f, 1e-6);
}

}  // namespace
}  // namespace optd
