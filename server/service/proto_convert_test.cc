// proto_convert: optd.v1 messages to domain types and back. Decoding fills torch's defaults,
// names the field with its full path when something is missing or unknown, and round-trips
// through the encoders; tensors keep their bytes where they are.

#include "server/service/proto_convert.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "base/status_matchers.h"
#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

v1::SessionConfig Parse(const std::string& text) {
  v1::SessionConfig config;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &config)) << text;
  return config;
}

TEST(ConfigFromProtoTest, FillsTorchDefaults) {
  absl::StatusOr<SessionConfig> config = ConfigFromProto(Parse("optimizer { adam {} }"));
  ASSERT_OK(config);
  const AdamOptions* adam = std::get_if<AdamOptions>(&config->optimizer);
  ASSERT_NE(adam, nullptr);
  EXPECT_EQ(adam->lr, 1e-3);
  EXPECT_EQ(adam->beta2, 0.999);
  EXPECT_EQ(config->consistency.mode, ConsistencyOptions::Mode::kAsync);
  EXPECT_FALSE(config->clipping.enabled());
}

TEST(ConfigFromProtoTest, NamesTheFieldAndItsRange) {
  struct Case {
    std::string text;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"", "optimizer is not set; must be one of sgd, adam"},
      {"",
       "lars, prodigy, dadapt_adam, dadapt_sgd, dog, ldog, schedulefree_adamw, "
       "schedulefree_sgd, adafactor, muon"},
      {"optimizer { prodigy { d_coef: -1 } }",
       "config.optimizer.prodigy.d_coef = -1 is out of range: must be > 0"},
      {"optimizer { dog { init_eta: 0 } }", "dog.init_eta = 0 is out of range: must be > 0"},
      {"optimizer { schedulefree_sgd { momentum: 1 } }",
       "schedulefree_sgd.momentum = 1 is out of range: must be in (0, 1)"},
      {"optimizer { sgd {} }", "config.optimizer.sgd.lr is required"},
      {"optimizer { adam { beta1: 1.5 } }", "beta1 = 1.5 is out of range: must be in [0, 1)"},
      {"optimizer { adam {} } schedule { step {} }", "step_size"},
      {"optimizer { adam {} } clipping { max_norm: -1 }", "max_norm"},
      {"optimizer { adam {} } consistency { mode: MODE_SYNC workers: 0 }",
       "consistency.workers = 0 is out of range"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    EXPECT_THAT(ConfigFromProto(Parse(c.text)),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)));
  }
}

TEST(ConfigFromProtoTest, RoundTripsEveryOptimizerAndSchedule) {
  const std::vector<std::string> optimizers = {"sgd { lr: 0.1 momentum: 0.9 nesterov: true }",
                                               "adam { amsgrad: true }",
                                               "adamw { weight_decay: 0.1 }",
                                               "adagrad { lr_decay: 0.01 }",
                                               "normalized_gd { lr: 0.5 }",
                                               "adadelta {}",
                                               "rmsprop { centered: true }",
                                               "nadam {}",
                                               "radam {}",
                                               "lion {}",
                                               "lamb {}",
                                               "lars {}",
                                               "prodigy { beta3: 0.99 slice_p: 3 }",
                                               "dadapt_adam { decouple: true growth_rate: 1.05 }",
                                               "dadapt_sgd { momentum: 0.9 }",
                                               "dog { init_eta: 0.001 averaging: true }",
                                               "ldog { reps_rel: 1e-4 }",
                                               "schedulefree_adamw { warmup_steps: 10 }",
                                               "schedulefree_sgd { momentum: 0.8 }",
                                               "adafactor { eps1: 0.001 }",
                                               "muon { nesterov: false adam_lr: 0.001 }"};
  const std::vector<std::string> schedules = {"constant {}",
                                              "step { step_size: 3 }",
                                              "multi_step { milestones: [2, 5] }",
                                              "exponential { gamma: 0.9 }",
                                              "cosine_annealing { t_max: 10 }",
                                              "linear_warmup {}",
                                              "warmup_cosine { decay_steps: 10 }",
                                              "inverse_sqrt {}",
                                              "one_cycle { max_lr: 1 total_steps: 10 }",
                                              "reduce_on_plateau {}"};
  for (size_t i = 0; i < optimizers.size(); ++i) {
    const std::string text =
        "optimizer { " + optimizers[i] + " } schedule { " + schedules[i % schedules.size()] + " }";
    SCOPED_TRACE(text);
    absl::StatusOr<SessionConfig> config = ConfigFromProto(Parse(text));
    ASSERT_OK(config);
    v1::SessionConfig written;
    ConfigToProto(*config, &written);
    absl::StatusOr<SessionConfig> again = ConfigFromProto(written);
    ASSERT_OK(again);
    v1::SessionConfig rewritten;
    ConfigToProto(*again, &rewritten);
    EXPECT_TRUE(MessageDifferencer::Equals(written, rewritten));
  }
}

TEST(ConfigFromProtoTest, LearningRateFreeDefaultsAreUpstreams) {
  absl::StatusOr<SessionConfig> config = ConfigFromProto(Parse("optimizer { prodigy {} }"));
  ASSERT_OK(config);
  const ProdigyOptions& prodigy = std::get<ProdigyOptions>(config->optimizer);
  EXPECT_EQ(prodigy.lr, 1.0);
  EXPECT_EQ(prodigy.d0, 1e-6);
  EXPECT_TRUE(std::isinf(prodigy.growth_rate));
  EXPECT_FALSE(prodigy.beta3.has_value());
  config = ConfigFromProto(Parse("optimizer { dog { init_eta: 0.01 } }"));
  ASSERT_OK(config);
  EXPECT_EQ(std::get<DogOptions>(config->optimizer).init_eta, 0.01);
  v1::SessionConfig written;
  ConfigToProto(*config, &written);
  EXPECT_TRUE(written.optimizer().dog().has_init_eta());
  EXPECT_FALSE(written.optimizer().dog().averaging());
}

TEST(MergeOptimizerFromProtoTest, ChangesOnlyTheFieldsSetAndKeepsTheKind) {
  OptimizerOptions options = AdamOptions{};
  v1::OptimizerConfig update;
  update.mutable_adam()->set_lr(0.5);
  ASSERT_OK(MergeOptimizerFromProto(update, /*require_same_kind=*/true, "", &options));
  EXPECT_EQ(std::get<AdamOptions>(options).lr, 0.5);
  EXPECT_EQ(std::get<AdamOptions>(options).beta1, 0.9);
  v1::OptimizerConfig other;
  other.mutable_sgd()->set_lr(1);
  EXPECT_THAT(MergeOptimizerFromProto(other, true, "", &options),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(std::get<AdamOptions>(options).lr, 0.5);  // unchanged on failure
}

TEST(TensorConversionTest, ViewsBorrowTheRequestsBytes) {
  google::protobuf::RepeatedPtrField<v1::Tensor> tensors;
  v1::Tensor* t = tensors.Add();
  t->set_name("w");
  t->add_shape(2);
  t->set_dtype(v1::DTYPE_BF16);
  t->set_data("abcd");
  t->mutable_rows()->add_indices(1);
  absl::StatusOr<std::vector<WireTensorView>> views = ViewsOf("gradients", tensors);
  ASSERT_OK(views);
  const WireTensorView& v = (*views)[0];
  EXPECT_EQ(v.name, "w");
  EXPECT_THAT(v.shape, ElementsAre(2));
  EXPECT_EQ(v.dtype, WireDType::kBf16);
  EXPECT_EQ(v.data.Pieces()[0].data(), t->data().data());
  EXPECT_TRUE(v.has_rows);
  EXPECT_THAT(v.rows, ElementsAre(1));

  std::vector<TensorMessage> messages(1);
  messages[0].fields = *t;
  messages[0].fields.clear_data();
  messages[0].data = TensorBytes::Owned("abcd");
  absl::StatusOr<std::vector<WireTensorView>> from_messages = ViewsOf("gradients", messages);
  ASSERT_OK(from_messages);
  EXPECT_EQ((*from_messages)[0].data.Pieces()[0].data(), messages[0].data.Pieces()[0].data());

  t->set_dtype(static_cast<v1::DType>(9));
  EXPECT_THAT(ViewsOf("gradients", tensors),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("gradients[0].dtype = 9 is not a known DType")));
}

TEST(TensorConversionTest, TensorToProtoEncodesSharedValuesAndMovesOwnedOnes) {
  auto values = std::make_shared<std::vector<float>>(std::vector<float>{1.0f, 2.0f});
  WireTensor shared{"w", {2}, WireDType::kF16, TensorBytes::Shared(values)};
  v1::Tensor out;
  TensorToProto(std::move(shared), &out);
  std::string f16;
  EncodeFloats(WireDType::kF16, *values, &f16);
  EXPECT_EQ(out.data(), f16);
  EXPECT_EQ(out.dtype(), v1::DTYPE_F16);

  WireTensor rows{"e", {4, 2}, WireDType::kF32, TensorBytes::Owned("12345678"), true, {3}};
  v1::Tensor row_out;
  TensorToProto(std::move(rows), &row_out);
  EXPECT_EQ(row_out.data(), "12345678");
  EXPECT_THAT(row_out.rows().indices(), ElementsAre(3));
  EXPECT_THAT(row_out.shape(), ElementsAre(4, 2));
}

TEST(StepConversionTest, StepInputFromProtoValidatesTheEnums) {
  v1::StepRequest request;
  request.set_worker_id("w");
  request.set_sequence(4);
  request.set_version(2);
  request.set_loss(0.5);
  request.set_return_parameters(v1::RETURN_PARAMETERS_TOUCHED);
  request.set_return_dtype(v1::DTYPE_BF16);
  absl::StatusOr<StepInput> input = StepInputFromProto(request);
  ASSERT_OK(input);
  EXPECT_EQ(input->worker_id, "w");
  EXPECT_EQ(input->sequence, 4);
  EXPECT_EQ(input->version, 2);
  EXPECT_EQ(input->loss, 0.5);
  EXPECT_EQ(input->return_mode, ReturnMode::kTouched);
  EXPECT_EQ(input->return_dtype, WireDType::kBf16);
  request.set_return_parameters(static_cast<v1::ReturnParameters>(7));
  EXPECT_THAT(StepInputFromProto(request),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("return_parameters = 7")));
  request.set_return_parameters(v1::RETURN_PARAMETERS_ALL);
  request.set_return_dtype(static_cast<v1::DType>(5));
  EXPECT_THAT(StepInputFromProto(request),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("return_dtype = 5")));
}

TEST(StepConversionTest, StepOutputToProtoWritesEveryFieldButTheParameters) {
  StepOutput out;
  out.version = 7;
  out.gradient_norm = 1.5;
  out.learning_rate = 0.1;
  out.duplicate = true;
  out.parameters_version = 9;
  out.workers = 3;
  out.missing_workers = {"c"};
  out.staleness = 2;
  out.parameters.push_back({"w", {1}, WireDType::kF32, TensorBytes::Owned("abcd")});
  v1::StepResponse reply;
  StepOutputToProto(out, &reply);
  EXPECT_EQ(reply.version(), 7);
  EXPECT_EQ(reply.gradient_norm(), 1.5);
  EXPECT_EQ(reply.learning_rate(), 0.1);
  EXPECT_TRUE(reply.duplicate());
  EXPECT_EQ(reply.parameters_version(), 9);
  EXPECT_EQ(reply.workers(), 3);
  EXPECT_THAT(reply.missing_workers(), ElementsAre("c"));
  EXPECT_EQ(reply.staleness(), 2);
  EXPECT_EQ(reply.parameters_size(), 0);
}

TEST(SessionInfoToProtoTest, DescribesTheSession) {
  SessionInfo info;
  info.id = "s";
  info.config.optimizer = SgdOptions{};
  info.tensors = {{"w", {2, 3}, 6}};
  info.version = 4;
  info.learning_rate = 0.25;
  info.num_parameters = 6;
  info.parameter_bytes = 24;
  info.create_time = absl::FromUnixSeconds(100);
  v1::Session out;
  SessionInfoToProto(info, &out);
  EXPECT_EQ(out.session_id(), "s");
  EXPECT_TRUE(out.config().optimizer().has_sgd());
  ASSERT_EQ(out.tensors_size(), 1);
  EXPECT_EQ(out.tensors(0).name(), "w");
  EXPECT_EQ(out.version(), 4);
  EXPECT_EQ(out.learning_rate(), 0.25);
  EXPECT_EQ(out.parameter_bytes(), 24);
  EXPECT_EQ(out.create_time_seconds(), 100);
}

}  // namespace
}  // namespace optd
