#include "client/cpp/optctl_flags.h"

#include <optional>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

ABSL_DECLARE_FLAG(std::optional<double>, lr);
ABSL_DECLARE_FLAG(std::optional<double>, momentum);
ABSL_DECLARE_FLAG(bool, amsgrad);
ABSL_DECLARE_FLAG(std::optional<std::string>, norm);
ABSL_DECLARE_FLAG(std::string, optimizer);

namespace optd {
namespace client {
namespace optctl {
namespace {

namespace pb = ::google::protobuf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The messages of a oneof's fields (the optimizers, the schedules).
std::vector<const pb::Descriptor*> OneofTypes(const pb::Descriptor& type) {
  const pb::OneofDescriptor* kind = type.FindOneofByName("kind");
  std::vector<const pb::Descriptor*> types;
  for (int i = 0; i < kind->field_count(); ++i) types.push_back(kind->field(i)->message_type());
  return types;
}

TEST(OptctlFlagsTest, EveryOptimizerFieldHasAFlagAndEveryNumberADefaultInTheHelp) {
  const std::vector<const pb::Descriptor*> optimizers =
      OneofTypes(*v1::OptimizerConfig::descriptor());
  ASSERT_EQ(optimizers.size(), 21u);
  for (const pb::Descriptor* type : optimizers) {
    for (int i = 0; i < type->field_count(); ++i) {
      const pb::FieldDescriptor& field = *type->field(i);
      EXPECT_TRUE(HasFlagFor(field)) << type->name() << "." << field.name() << " has no flag";
      if (field.cpp_type() == pb::FieldDescriptor::CPPTYPE_DOUBLE) {
        EXPECT_NE(FieldHelp(field), "") << type->name() << "." << field.name() << " has no help";
      }
    }
  }
}

TEST(OptctlFlagsTest, EveryScheduleAndConsistencyOptionHasHelp) {
  std::vector<const pb::Descriptor*> types = OneofTypes(*v1::LrSchedule::descriptor());
  ASSERT_EQ(types.size(), 10u);
  types.push_back(v1::Consistency::descriptor());
  for (const pb::Descriptor* type : types) {
    for (int i = 0; i < type->field_count(); ++i) {
      const pb::FieldDescriptor& field = *type->field(i);
      if (field.cpp_type() == pb::FieldDescriptor::CPPTYPE_ENUM) continue;  // lists its values
      EXPECT_NE(FieldHelp(field), "") << type->name() << "." << field.name() << " has no help";
    }
  }
}

TEST(OptctlFlagsTest, HelpListsEveryOptimizerWithItsFlagsAndEverySchedule) {
  const std::string help = ConfigHelp();
  EXPECT_THAT(
      OptimizerKinds(),
      ElementsAre("sgd", "adam", "adamw", "adagrad", "normalized_gd", "adadelta", "rmsprop",
                  "nadam", "radam", "lion", "lamb", "lars", "prodigy", "dadapt_adam", "dadapt_sgd",
                  "dog", "ldog", "schedulefree_adamw", "schedulefree_sgd", "adafactor", "muon"));
  EXPECT_THAT(help,
              HasSubstr("\n  adam              --lr=1e-3 --beta1=0.9 --beta2=0.999 --eps=1e-8"));
  EXPECT_THAT(help, HasSubstr("--norm=global|per_tensor --guard=add_eps|max_eps"));
  EXPECT_THAT(help, HasSubstr("--[no]amsgrad"));
  EXPECT_THAT(help, HasSubstr("\n  step              step_size=N (required, >= 1), gamma=0.1\n"));
  EXPECT_THAT(help, HasSubstr("anneal_strategy=cos|linear"));
  EXPECT_THAT(help, HasSubstr("\n  async|sync|bounded workers=K"));
  for (const std::string& kind : OptimizerKinds()) {
    EXPECT_THAT(help, HasSubstr(absl::StrCat("\n  ", kind, " "))) << kind;
  }
  const pb::OneofDescriptor* schedules = v1::LrSchedule::descriptor()->FindOneofByName("kind");
  for (int i = 0; i < schedules->field_count(); ++i) {
    EXPECT_THAT(help, HasSubstr(absl::StrCat("\n  ", schedules->field(i)->name())));
  }
  for (absl::string_view line : absl::StrSplit(help, '\n')) {
    EXPECT_LE(line.size(), 100u) << line;
  }
}

TEST(OptctlFlagsTest, ParseScheduleSetsTheNamedScheduleAndRoundTripsThroughFormat) {
  v1::LrSchedule schedule;
  ASSERT_TRUE(ParseSchedule("cosine_annealing:t_max=100,eta_min=0.001", &schedule).ok());
  EXPECT_EQ(schedule.cosine_annealing().t_max(), 100);
  EXPECT_DOUBLE_EQ(schedule.cosine_annealing().eta_min(), 0.001);
  EXPECT_EQ(FormatSchedule(schedule), "cosine_annealing:t_max=100,eta_min=0.001");

  ASSERT_TRUE(ParseSchedule("multi_step:milestones=30,60,90,gamma=0.5", &schedule).ok());
  EXPECT_THAT(schedule.multi_step().milestones(), ElementsAre(30, 60, 90));
  EXPECT_DOUBLE_EQ(schedule.multi_step().gamma(), 0.5);
  EXPECT_FALSE(schedule.has_cosine_annealing());  // replaced, not merged

  ASSERT_TRUE(
      ParseSchedule("one_cycle:max_lr=0.1,total_steps=100,anneal_strategy=linear,three_phase=true",
                    &schedule)
          .ok());
  EXPECT_EQ(schedule.one_cycle().anneal_strategy(), v1::LrSchedule::OneCycle::ANNEAL_LINEAR);
  EXPECT_TRUE(schedule.one_cycle().three_phase());
  v1::LrSchedule again;
  ASSERT_TRUE(ParseSchedule(FormatSchedule(schedule), &again).ok()) << FormatSchedule(schedule);
  EXPECT_TRUE(pb::util::MessageDifferencer::Equals(schedule, again));

  ASSERT_TRUE(ParseSchedule("constant", &schedule).ok());
  EXPECT_TRUE(schedule.has_constant());
  EXPECT_EQ(FormatSchedule(v1::LrSchedule()), "constant");
}

TEST(OptctlFlagsTest, ScheduleErrorsNameTheOptionAndTheChoices) {
  v1::LrSchedule schedule;
  auto error = [&](const char* spec) {
    absl::Status s = ParseSchedule(spec, &schedule);
    EXPECT_TRUE(IsUsageError(s)) << spec << ": " << s;
    return std::string(s.message());
  };
  EXPECT_THAT(error("cosine"), HasSubstr("'cosine' is not a schedule; must be one of constant, "
                                         "step, multi_step, exponential, cosine_annealing"));
  EXPECT_EQ(error("step:step_sze=3"),
            "--schedule=step:step_sze=3: step has no option 'step_sze' (it takes: step_size, "
            "gamma)");
  EXPECT_EQ(error("step:gamma=x"), "--schedule=step:gamma=x: gamma needs a finite number; got 'x'");
  EXPECT_THAT(error("step:step_size=2.5"), HasSubstr("step_size needs an integer; got '2.5'"));
  EXPECT_THAT(error("one_cycle:anneal_strategy=cubic"),
              HasSubstr("anneal_strategy needs one of cos|linear; got 'cubic'"));
  EXPECT_THAT(error("step:gamma=0.5,gamma=0.1"), HasSubstr("gamma is given twice"));
  EXPECT_THAT(error("step:10"), HasSubstr("'10' is not KEY=VALUE"));
  EXPECT_THAT(error("constant:x=1"), HasSubstr("constant has no option 'x' (it takes none)"));
}

TEST(OptctlFlagsTest, ParseConsistencyTakesTheModeAndItsOptions) {
  v1::Consistency consistency;
  ASSERT_TRUE(
      ParseConsistency("sync:workers=3,worker_ids=a,b,c,barrier_timeout_seconds=5,reduce=sum",
                       &consistency)
          .ok());
  EXPECT_EQ(consistency.mode(), v1::Consistency::MODE_SYNC);
  EXPECT_EQ(consistency.workers(), 3);
  EXPECT_THAT(consistency.worker_ids(), ElementsAre("a", "b", "c"));
  EXPECT_DOUBLE_EQ(consistency.barrier_timeout_seconds(), 5);
  EXPECT_EQ(consistency.reduce(), v1::Consistency::REDUCE_SUM);
  EXPECT_EQ(FormatConsistency(consistency),
            "sync:workers=3,worker_ids=a,b,c,reduce=sum,barrier_timeout_seconds=5");
  ASSERT_TRUE(ParseConsistency("bounded:max_staleness=2", &consistency).ok());
  EXPECT_EQ(FormatConsistency(consistency), "bounded:max_staleness=2");
  EXPECT_EQ(FormatConsistency(v1::Consistency()), "async");

  EXPECT_THAT(ParseConsistency("eventual", &consistency).message(),
              HasSubstr("'eventual' is not a mode; must be one of async|sync|bounded"));
  EXPECT_THAT(ParseConsistency("sync:mode=async", &consistency).message(),
              HasSubstr("sync has no option 'mode'"));
}

class HyperparameterFlagsTest : public ::testing::Test {
 protected:
  void TearDown() override {
    absl::SetFlag(&FLAGS_lr, std::nullopt);
    absl::SetFlag(&FLAGS_momentum, std::nullopt);
    absl::SetFlag(&FLAGS_amsgrad, false);
    absl::SetFlag(&FLAGS_norm, std::nullopt);
    absl::SetFlag(&FLAGS_optimizer, "");
  }
};

TEST_F(HyperparameterFlagsTest, OnlyTheFlagsGivenAreSet) {
  char arg0[] = "optctl";
  char arg1[] = "--amsgrad";
  char* argv[] = {arg0, arg1};
  absl::SetFlag(&FLAGS_lr, 0.5);
  absl::SetFlag(&FLAGS_amsgrad, true);
  v1::Adam adam;
  absl::StatusOr<int> given = ApplyHyperparameterFlags(CommandLine{2, argv}, &adam);
  ASSERT_TRUE(given.ok()) << given.status();
  EXPECT_EQ(*given, 2);
  EXPECT_DOUBLE_EQ(adam.lr(), 0.5);
  EXPECT_TRUE(adam.amsgrad());
  EXPECT_FALSE(adam.has_beta1());
  EXPECT_FALSE(adam.has_maximize());  // a boolean not written is not sent

  v1::Adam untouched;
  given = ApplyHyperparameterFlags(CommandLine{1, argv}, &untouched);  // --amsgrad not in argv
  ASSERT_TRUE(given.ok());
  EXPECT_EQ(*given, 1);
  EXPECT_FALSE(untouched.has_amsgrad());
}

TEST_F(HyperparameterFlagsTest, AFlagTheOptimizerHasNoFieldForIsAUsageErrorListingItsFlags) {
  absl::SetFlag(&FLAGS_momentum, 0.9);
  v1::AdamW adamw;
  absl::Status s = ApplyHyperparameterFlags(CommandLine{}, &adamw).status();
  EXPECT_TRUE(IsUsageError(s)) << s;
  EXPECT_EQ(s.message(),
            "--momentum does not apply to adamw (it takes: --lr, --beta1, --beta2, --eps, "
            "--weight_decay, --amsgrad, --maximize)");

  absl::SetFlag(&FLAGS_momentum, std::nullopt);
  absl::SetFlag(&FLAGS_norm, std::string("sideways"));
  v1::NormalizedGd ngd;
  EXPECT_THAT(ApplyHyperparameterFlags(CommandLine{}, &ngd).status().message(),
              HasSubstr("norm needs one of global|per_tensor; got 'sideways'"));

  absl::SetFlag(&FLAGS_norm, std::nullopt);
  absl::SetFlag(&FLAGS_optimizer, "adamax");
  v1::OptimizerConfig config;
  EXPECT_THAT(
      ApplyOptimizerFlags(CommandLine{}, &config).message(),
      HasSubstr("--optimizer=adamax: must be one of sgd, adam, adamw, adagrad, "
                "normalized_gd, adadelta, rmsprop, nadam, radam, lion, lamb, lars, prodigy, "
                "dadapt_adam, dadapt_sgd, dog, ldog, schedulefree_adamw, schedulefree_sgd, "
                "adafactor, muon"));
  EXPECT_EQ(HyperparameterFlags("lion"), "--lr, --beta1, --beta2, --weight_decay");
}

}  // namespace
}  // namespace optctl
}  // namespace client
}  // namespace optd
