#include "server/optim/optimizer_options.h"

#include <functional>
#include <limits>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

using ::testing::HasSubstr;

constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Default options of type T, changed by `mutate`.
template <typename T, typename F>
OptimizerOptions With(F mutate) {
  T options;
  mutate(options);
  return options;
}

// ---------------------------------------------------------------------------------------------
// The message format.

TEST(OptimizerOptionsTest, MessageNamesFieldValueAndRange) {
  AdamOptions o;
  o.beta1 = 1.5;
  const absl::Status status = o.Validate();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "adam.beta1 = 1.5 is out of range: must be in [0, 1)");
}

TEST(OptimizerOptionsTest, MessagePrintsSmallValuesInExponentForm) {
  AdamOptions o;
  o.eps = -1e-8;
  EXPECT_EQ(o.Validate().message(), "adam.eps = -1e-08 is out of range: must be > 0");
}

TEST(OptimizerOptionsTest, MessagePrintsEnoughDigitsToShowTheValue) {
  SgdOptions o;
  o.dampening = 1.0000001;
  EXPECT_EQ(o.Validate().message(), "sgd.dampening = 1.0000001 is out of range: must be in [0, 1]");
}

TEST(OptimizerOptionsTest, MessageForNonFiniteValueSaysFinite) {
  AdamOptions o;
  o.lr = kNan;
  EXPECT_EQ(o.Validate().message(), "adam.lr = nan is out of range: must be finite and >= 0");
}

// ---------------------------------------------------------------------------------------------
// Every field rejects a value outside its range, naming the field, the value and the range.

struct OutOfRangeCase {
  std::string name;  // test name suffix
  OptimizerOptions options;
  std::string field;
  std::string value;
  std::string range;
};

void PrintTo(const OutOfRangeCase& c, std::ostream* os) { *os << c.name; }

class OutOfRangeTest : public ::testing::TestWithParam<OutOfRangeCase> {};

TEST_P(OutOfRangeTest, IsInvalidArgumentNamingFieldValueAndRange) {
  const OutOfRangeCase& c = GetParam();
  const absl::Status status = Validate(c.options);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr(c.field + " = " + c.value + " is out of range"));
  EXPECT_THAT(status.message(), HasSubstr(c.range));
}

INSTANTIATE_TEST_SUITE_P(
    AllFields, OutOfRangeTest,
    ::testing::Values(
        OutOfRangeCase{"SgdNegativeLr", With<SgdOptions>([](auto& o) { o.lr = -1; }), "sgd.lr",
                       "-1", "must be >= 0"},
        OutOfRangeCase{"SgdMomentumOne", With<SgdOptions>([](auto& o) { o.momentum = 1; }),
                       "sgd.momentum", "1", "must be in [0, 1)"},
        OutOfRangeCase{"SgdNegativeMomentum", With<SgdOptions>([](auto& o) { o.momentum = -0.1; }),
                       "sgd.momentum", "-0.1", "must be in [0, 1)"},
        OutOfRangeCase{"SgdDampeningAboveOne", With<SgdOptions>([](auto& o) { o.dampening = 1.5; }),
                       "sgd.dampening", "1.5", "must be in [0, 1]"},
        OutOfRangeCase{"SgdNegativeDampening",
                       With<SgdOptions>([](auto& o) { o.dampening = -0.5; }), "sgd.dampening",
                       "-0.5", "must be in [0, 1]"},
        OutOfRangeCase{"SgdNegativeWeightDecay",
                       With<SgdOptions>([](auto& o) { o.weight_decay = -1e-8; }),
                       "sgd.weight_decay", "-1e-08", "must be >= 0"},
        OutOfRangeCase{"AdamNegativeLr", With<AdamOptions>([](auto& o) { o.lr = -0.001; }),
                       "adam.lr", "-0.001", "must be >= 0"},
        OutOfRangeCase{"AdamBeta1AboveOne", With<AdamOptions>([](auto& o) { o.beta1 = 1.5; }),
                       "adam.beta1", "1.5", "must be in [0, 1)"},
        OutOfRangeCase{"AdamNegativeBeta1", With<AdamOptions>([](auto& o) { o.beta1 = -0.1; }),
                       "adam.beta1", "-0.1", "must be in [0, 1)"},
        OutOfRangeCase{"AdamBeta2One", With<AdamOptions>([](auto& o) { o.beta2 = 1; }),
                       "adam.beta2", "1", "must be in [0, 1)"},
        OutOfRangeCase{"AdamZeroEps", With<AdamOptions>([](auto& o) { o.eps = 0; }), "adam.eps",
                       "0", "must be > 0"},
        OutOfRangeCase{"AdamNegativeWeightDecay",
                       With<AdamOptions>([](auto& o) { o.weight_decay = -1; }), "adam.weight_decay",
                       "-1", "must be >= 0"},
        OutOfRangeCase{"AdamWNegativeLr", With<AdamWOptions>([](auto& o) { o.lr = -1; }),
                       "adamw.lr", "-1", "must be >= 0"},
        OutOfRangeCase{"AdamWBeta1One", With<AdamWOptions>([](auto& o) { o.beta1 = 1; }),
                       "adamw.beta1", "1", "must be in [0, 1)"},
        OutOfRangeCase{"AdamWBeta2AboveOne", With<AdamWOptions>([](auto& o) { o.beta2 = 2; }),
                       "adamw.beta2", "2", "must be in [0, 1)"},
        OutOfRangeCase{"AdamWNegativeEps", With<AdamWOptions>([](auto& o) { o.eps = -1e-8; }),
                       "adamw.eps", "-1e-08", "must be > 0"},
        OutOfRangeCase{"AdamWNegativeWeightDecay",
                       With<AdamWOptions>([](auto& o) { o.weight_decay = -0.01; }),
                       "adamw.weight_decay", "-0.01", "must be >= 0"},
        OutOfRangeCase{"AdamWLrTimesWeightDecayAboveOne", With<AdamWOptions>([](auto& o) {
                         o.lr = 0.5;
                         o.weight_decay = 4;
                       }),
                       "adamw.lr * adamw.weight_decay", "0.5 * 4 = 2", "must be <= 1"},
        OutOfRangeCase{"AdagradNegativeLr", With<AdagradOptions>([](auto& o) { o.lr = -1; }),
                       "adagrad.lr", "-1", "must be >= 0"},
        OutOfRangeCase{"AdagradNegativeLrDecay",
                       With<AdagradOptions>([](auto& o) { o.lr_decay = -0.5; }), "adagrad.lr_decay",
                       "-0.5", "must be >= 0"},
        OutOfRangeCase{"AdagradNegativeWeightDecay",
                       With<AdagradOptions>([](auto& o) { o.weight_decay = -2; }),
                       "adagrad.weight_decay", "-2", "must be >= 0"},
        OutOfRangeCase{"AdagradNegativeInitialAccumulatorValue",
                       With<AdagradOptions>([](auto& o) { o.initial_accumulator_value = -0.1; }),
                       "adagrad.initial_accumulator_value", "-0.1", "must be >= 0"},
        OutOfRangeCase{"AdagradNegativeEps", With<AdagradOptions>([](auto& o) { o.eps = -1e-10; }),
                       "adagrad.eps", "-1e-10", "must be >= 0"},
        OutOfRangeCase{"AdagradZeroEpsWithZeroInitialAccumulator",
                       With<AdagradOptions>([](auto& o) { o.eps = 0; }), "adagrad.eps", "0",
                       "must be > 0 when adagrad.initial_accumulator_value = 0"},
        OutOfRangeCase{"NormalizedGdNegativeLr",
                       With<NormalizedGdOptions>([](auto& o) { o.lr = -0.1; }), "normalized_gd.lr",
                       "-0.1", "must be >= 0"},
        OutOfRangeCase{"NormalizedGdNegativeEps",
                       With<NormalizedGdOptions>([](auto& o) { o.eps = -1e-6; }),
                       "normalized_gd.eps", "-1e-06", "must be >= 0"},
        OutOfRangeCase{"AdadeltaNegativeLr", With<AdadeltaOptions>([](auto& o) { o.lr = -1; }),
                       "adadelta.lr", "-1", "must be >= 0"},
        OutOfRangeCase{"AdadeltaRhoOne", With<AdadeltaOptions>([](auto& o) { o.rho = 1; }),
                       "adadelta.rho", "1", "must be in [0, 1)"},
        OutOfRangeCase{"AdadeltaNegativeRho", With<AdadeltaOptions>([](auto& o) { o.rho = -0.1; }),
                       "adadelta.rho", "-0.1", "must be in [0, 1)"},
        OutOfRangeCase{"AdadeltaZeroEps", With<AdadeltaOptions>([](auto& o) { o.eps = 0; }),
                       "adadelta.eps", "0", "must be > 0"},
        OutOfRangeCase{"AdadeltaNegativeWeightDecay",
                       With<AdadeltaOptions>([](auto& o) { o.weight_decay = -0.1; }),
                       "adadelta.weight_decay", "-0.1", "must be >= 0"},
        OutOfRangeCase{"RmspropNegativeLr", With<RmspropOptions>([](auto& o) { o.lr = -0.01; }),
                       "rmsprop.lr", "-0.01", "must be >= 0"},
        OutOfRangeCase{"RmspropAlphaAboveOne", With<RmspropOptions>([](auto& o) { o.alpha = 1.5; }),
                       "rmsprop.alpha", "1.5", "must be in [0, 1]"},
        OutOfRangeCase{"RmspropNegativeAlpha",
                       With<RmspropOptions>([](auto& o) { o.alpha = -0.5; }), "rmsprop.alpha",
                       "-0.5", "must be in [0, 1]"},
        OutOfRangeCase{"RmspropNegativeEps", With<RmspropOptions>([](auto& o) { o.eps = -1e-8; }),
                       "rmsprop.eps", "-1e-08", "must be >= 0"},
        OutOfRangeCase{"RmspropNegativeWeightDecay",
                       With<RmspropOptions>([](auto& o) { o.weight_decay = -1; }),
                       "rmsprop.weight_decay", "-1", "must be >= 0"},
        OutOfRangeCase{"RmspropMomentumOne", With<RmspropOptions>([](auto& o) { o.momentum = 1; }),
                       "rmsprop.momentum", "1", "must be in [0, 1)"},
        OutOfRangeCase{"RmspropNegativeMomentum",
                       With<RmspropOptions>([](auto& o) { o.momentum = -0.9; }), "rmsprop.momentum",
                       "-0.9", "must be in [0, 1)"},
        OutOfRangeCase{"NadamNegativeLr", With<NadamOptions>([](auto& o) { o.lr = -2e-3; }),
                       "nadam.lr", "-0.002", "must be >= 0"},
        OutOfRangeCase{"NadamBeta1One", With<NadamOptions>([](auto& o) { o.beta1 = 1; }),
                       "nadam.beta1", "1", "must be in [0, 1)"},
        OutOfRangeCase{"NadamNegativeBeta2", With<NadamOptions>([](auto& o) { o.beta2 = -0.5; }),
                       "nadam.beta2", "-0.5", "must be in [0, 1)"},
        OutOfRangeCase{"NadamZeroEps", With<NadamOptions>([](auto& o) { o.eps = 0; }), "nadam.eps",
                       "0", "must be > 0"},
        OutOfRangeCase{"NadamNegativeWeightDecay",
                       With<NadamOptions>([](auto& o) { o.weight_decay = -0.01; }),
                       "nadam.weight_decay", "-0.01", "must be >= 0"},
        OutOfRangeCase{"NadamNegativeMomentumDecay",
                       With<NadamOptions>([](auto& o) { o.momentum_decay = -4e-3; }),
                       "nadam.momentum_decay", "-0.004", "must be >= 0"},
        OutOfRangeCase{"RadamNegativeLr", With<RadamOptions>([](auto& o) { o.lr = -1; }),
                       "radam.lr", "-1", "must be >= 0"},
        OutOfRangeCase{"RadamBeta1AboveOne", With<RadamOptions>([](auto& o) { o.beta1 = 1.5; }),
                       "radam.beta1", "1.5", "must be in [0, 1)"},
        OutOfRangeCase{"RadamBeta2One", With<RadamOptions>([](auto& o) { o.beta2 = 1; }),
                       "radam.beta2", "1", "must be in [0, 1)"},
        OutOfRangeCase{"RadamNegativeEps", With<RadamOptions>([](auto& o) { o.eps = -1e-8; }),
                       "radam.eps", "-1e-08", "must be >= 0"},
        OutOfRangeCase{"RadamNegativeWeightDecay",
                       With<RadamOptions>([](auto& o) { o.weight_decay = -0.1; }),
                       "radam.weight_decay", "-0.1", "must be >= 0"},
        OutOfRangeCase{"LionZeroLr", With<LionOptions>([](auto& o) { o.lr = 0; }), "lion.lr", "0",
                       "must be > 0"},
        OutOfRangeCase{"LionNegativeLr", With<LionOptions>([](auto& o) { o.lr = -1e-4; }),
                       "lion.lr", "-0.0001", "must be > 0"},
        OutOfRangeCase{"LionBeta1AboveOne", With<LionOptions>([](auto& o) { o.beta1 = 1.1; }),
                       "lion.beta1", "1.1", "must be in [0, 1]"},
        OutOfRangeCase{"LionNegativeBeta2", With<LionOptions>([](auto& o) { o.beta2 = -0.1; }),
                       "lion.beta2", "-0.1", "must be in [0, 1]"},
        OutOfRangeCase{"LionNegativeWeightDecay",
                       With<LionOptions>([](auto& o) { o.weight_decay = -1e-3; }),
                       "lion.weight_decay", "-0.001", "must be >= 0"},
        OutOfRangeCase{"LambNegativeLr", With<LambOptions>([](auto& o) { o.lr = -1e-3; }),
                       "lamb.lr", "-0.001", "must be >= 0"},
        OutOfRangeCase{"LambBeta1One", With<LambOptions>([](auto& o) { o.beta1 = 1; }),
                       "lamb.beta1", "1", "must be in [0, 1)"},
        OutOfRangeCase{"LambBeta2AboveOne", With<LambOptions>([](auto& o) { o.beta2 = 1.001; }),
                       "lamb.beta2", "1.001", "must be in [0, 1)"},
        OutOfRangeCase{"LambZeroEps", With<LambOptions>([](auto& o) { o.eps = 0; }), "lamb.eps",
                       "0", "must be > 0"},
        OutOfRangeCase{"LambNegativeWeightDecay",
                       With<LambOptions>([](auto& o) { o.weight_decay = -0.01; }),
                       "lamb.weight_decay", "-0.01", "must be >= 0"},
        OutOfRangeCase{"LarsNegativeLr", With<LarsOptions>([](auto& o) { o.lr = -1; }), "lars.lr",
                       "-1", "must be >= 0"},
        OutOfRangeCase{"LarsMomentumOne", With<LarsOptions>([](auto& o) { o.momentum = 1; }),
                       "lars.momentum", "1", "must be in [0, 1)"},
        OutOfRangeCase{"LarsNegativeMomentum",
                       With<LarsOptions>([](auto& o) { o.momentum = -0.9; }), "lars.momentum",
                       "-0.9", "must be in [0, 1)"},
        OutOfRangeCase{"LarsNegativeWeightDecay",
                       With<LarsOptions>([](auto& o) { o.weight_decay = -1e-4; }),
                       "lars.weight_decay", "-0.0001", "must be >= 0"},
        OutOfRangeCase{"LarsZeroTrustCoefficient",
                       With<LarsOptions>([](auto& o) { o.trust_coefficient = 0; }),
                       "lars.trust_coefficient", "0", "must be > 0"},
        OutOfRangeCase{"LarsNegativeEps", With<LarsOptions>([](auto& o) { o.eps = -1e-9; }),
                       "lars.eps", "-1e-09", "must be >= 0"}),
    [](const ::testing::TestParamInfo<OutOfRangeCase>& info) { return info.param.name; });

TEST(SgdOptionsTest, NesterovWithoutMomentumIsInvalid) {
  SgdOptions o;
  o.nesterov = true;
  const absl::Status status = o.Validate();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("sgd.nesterov"));
  EXPECT_THAT(status.message(), HasSubstr("sgd.momentum > 0"));
  EXPECT_THAT(status.message(), HasSubstr("momentum = 0"));
}

TEST(SgdOptionsTest, NesterovWithDampeningIsInvalid) {
  SgdOptions o;
  o.momentum = 0.9;
  o.dampening = 0.1;
  o.nesterov = true;
  const absl::Status status = o.Validate();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("sgd.nesterov"));
  EXPECT_THAT(status.message(), HasSubstr("sgd.dampening = 0"));
  EXPECT_THAT(status.message(), HasSubstr("dampening = 0.1"));
}

// ---------------------------------------------------------------------------------------------
// Every double field rejects NaN, +Inf and -Inf.

struct DoubleField {
  std::string name;   // "adam.beta1"
  std::string range;  // "in [0, 1)"
  std::function<OptimizerOptions(double)> make;
};

void PrintTo(const DoubleField& f, std::ostream* os) { *os << f.name; }

template <typename T>
DoubleField Field(std::string name, std::string range, double T::*member) {
  return {std::string(T::kName) + "." + name, std::move(range), [member](double v) {
            T options;
            options.*member = v;
            return OptimizerOptions(options);
          }};
}

std::vector<DoubleField> AllDoubleFields() {
  return {
      Field("lr", ">= 0", &SgdOptions::lr),
      Field("momentum", "in [0, 1)", &SgdOptions::momentum),
      Field("dampening", "in [0, 1]", &SgdOptions::dampening),
      Field("weight_decay", ">= 0", &SgdOptions::weight_decay),
      Field("lr", ">= 0", &AdamOptions::lr),
      Field("beta1", "in [0, 1)", &AdamOptions::beta1),
      Field("beta2", "in [0, 1)", &AdamOptions::beta2),
      Field("eps", "> 0", &AdamOptions::eps),
      Field("weight_decay", ">= 0", &AdamOptions::weight_decay),
      Field("lr", ">= 0", &AdamWOptions::lr),
      Field("beta1", "in [0, 1)", &AdamWOptions::beta1),
      Field("beta2", "in [0, 1)", &AdamWOptions::beta2),
      Field("eps", "> 0", &AdamWOptions::eps),
      Field("weight_decay", ">= 0", &AdamWOptions::weight_decay),
      Field("lr", ">= 0", &AdagradOptions::lr),
      Field("lr_decay", ">= 0", &AdagradOptions::lr_decay),
      Field("weight_decay", ">= 0", &AdagradOptions::weight_decay),
      Field("initial_accumulator_value", ">= 0", &AdagradOptions::initial_accumulator_value),
      Field("eps", ">= 0", &AdagradOptions::eps),
      Field("lr", ">= 0", &NormalizedGdOptions::lr),
      Field("eps", ">= 0", &NormalizedGdOptions::eps),
      Field("lr", ">= 0", &AdadeltaOptions::lr),
      Field("rho", "in [0, 1)", &AdadeltaOptions::rho),
      Field("eps", "> 0", &AdadeltaOptions::eps),
      Field("weight_decay", ">= 0", &AdadeltaOptions::weight_decay),
      Field("lr", ">= 0", &RmspropOptions::lr),
      Field("alpha", "in [0, 1]", &RmspropOptions::alpha),
      Field("eps", ">= 0", &RmspropOptions::eps),
      Field("weight_decay", ">= 0", &RmspropOptions::weight_decay),
      Field("momentum", "in [0, 1)", &RmspropOptions::momentum),
      Field("lr", ">= 0", &NadamOptions::lr),
      Field("beta1", "in [0, 1)", &NadamOptions::beta1),
      Field("beta2", "in [0, 1)", &NadamOptions::beta2),
      Field("eps", "> 0", &NadamOptions::eps),
      Field("weight_decay", ">= 0", &NadamOptions::weight_decay),
      Field("momentum_decay", ">= 0", &NadamOptions::momentum_decay),
      Field("lr", ">= 0", &RadamOptions::lr),
      Field("beta1", "in [0, 1)", &RadamOptions::beta1),
      Field("beta2", "in [0, 1)", &RadamOptions::beta2),
      Field("eps", ">= 0", &RadamOptions::eps),
      Field("weight_decay", ">= 0", &RadamOptions::weight_decay),
      Field("lr", "> 0", &LionOptions::lr),
      Field("beta1", "in [0, 1]", &LionOptions::beta1),
      Field("beta2", "in [0, 1]", &LionOptions::beta2),
      Field("weight_decay", ">= 0", &LionOptions::weight_decay),
      Field("lr", ">= 0", &LambOptions::lr),
      Field("beta1", "in [0, 1)", &LambOptions::beta1),
      Field("beta2", "in [0, 1)", &LambOptions::beta2),
      Field("eps", "> 0", &LambOptions::eps),
      Field("weight_decay", ">= 0", &LambOptions::weight_decay),
      Field("lr", ">= 0", &LarsOptions::lr),
      Field("momentum", "in [0, 1)", &LarsOptions::momentum),
      Field("weight_decay", ">= 0", &LarsOptions::weight_decay),
      Field("trust_coefficient", "> 0", &LarsOptions::trust_coefficient),
      Field("eps", ">= 0", &LarsOptions::eps),
  };
}

class NonFiniteTest : public ::testing::TestWithParam<std::tuple<DoubleField, double>> {};

TEST_P(NonFiniteTest, IsInvalidArgumentSayingMustBeFinite) {
  const auto& [field, value] = GetParam();
  const absl::Status status = Validate(field.make(value));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  const std::string shown = value != value ? "nan" : (value > 0 ? "inf" : "-inf");
  EXPECT_THAT(status.message(), HasSubstr(field.name + " = " + shown + " is out of range"));
  EXPECT_THAT(status.message(), HasSubstr("must be finite and " + field.range));
}

INSTANTIATE_TEST_SUITE_P(AllFields, NonFiniteTest,
                         ::testing::Combine(::testing::ValuesIn(AllDoubleFields()),
                                            ::testing::Values(kNan, kInf, -kInf)),
                         [](const ::testing::TestParamInfo<std::tuple<DoubleField, double>>& info) {
                           std::string name =
                               std::get<0>(info.param).name + "_" + std::to_string(info.index);
                           for (char& c : name) {
                             if (c == '.') c = '_';
                           }
                           return name;
                         });

// ---------------------------------------------------------------------------------------------
// Defaults and boundary values are accepted.

struct ValidCase {
  std::string name;
  OptimizerOptions options;
};

void PrintTo(const ValidCase& c, std::ostream* os) { *os << c.name; }

class ValidTest : public ::testing::TestWithParam<ValidCase> {};

TEST_P(ValidTest, IsOk) { EXPECT_OK(Validate(GetParam().options)); }

INSTANTIATE_TEST_SUITE_P(
    DefaultsAndBoundaries, ValidTest,
    ::testing::Values(
        ValidCase{"SgdDefaults", SgdOptions{}}, ValidCase{"AdamDefaults", AdamOptions{}},
        ValidCase{"AdamWDefaults", AdamWOptions{}}, ValidCase{"AdagradDefaults", AdagradOptions{}},
        ValidCase{"NormalizedGdDefaults", NormalizedGdOptions{}},
        ValidCase{"SgdDampeningOne", With<SgdOptions>([](auto& o) {
                    o.lr = 0.1;
                    o.momentum = 0.9;
                    o.dampening = 1;
                  })},
        ValidCase{"SgdNesterov", With<SgdOptions>([](auto& o) {
                    o.momentum = 0.9;
                    o.nesterov = true;
                  })},
        ValidCase{"SgdLargeLr", With<SgdOptions>([](auto& o) { o.lr = 1e6; })},
        ValidCase{"AdamZeroLrAndBetas", With<AdamOptions>([](auto& o) {
                    o.lr = 0;
                    o.beta1 = 0;
                    o.beta2 = 0;
                  })},
        ValidCase{"AdamTinyEps", With<AdamOptions>([](auto& o) { o.eps = 1e-300; })},
        ValidCase{"AdamWLrTimesWeightDecayOne", With<AdamWOptions>([](auto& o) {
                    o.lr = 0.5;
                    o.weight_decay = 2;
                  })},
        ValidCase{"AdagradZeroEpsWithPositiveAccumulator", With<AdagradOptions>([](auto& o) {
                    o.eps = 0;
                    o.initial_accumulator_value = 0.1;
                  })},
        ValidCase{"AdagradZeroAccumulatorWithPositiveEps",
                  With<AdagradOptions>([](auto& o) { o.initial_accumulator_value = 0; })},
        ValidCase{"NormalizedGdZeroLrAndEps", With<NormalizedGdOptions>([](auto& o) {
                    o.lr = 0;
                    o.eps = 0;
                  })},
        ValidCase{"AdadeltaDefaults", AdadeltaOptions{}},
        ValidCase{"RmspropDefaults", RmspropOptions{}}, ValidCase{"NadamDefaults", NadamOptions{}},
        ValidCase{"RadamDefaults", RadamOptions{}}, ValidCase{"LionDefaults", LionOptions{}},
        ValidCase{"LambDefaults", LambOptions{}}, ValidCase{"LarsDefaults", LarsOptions{}},
        ValidCase{"AdadeltaBoundaries", With<AdadeltaOptions>([](auto& o) {
                    o.lr = 0;
                    o.rho = 0;
                    o.eps = 1e-300;
                    o.weight_decay = 0;
                  })},
        ValidCase{"AdadeltaRhoJustBelowOne",
                  With<AdadeltaOptions>([](auto& o) { o.rho = 0.9999999; })},
        ValidCase{"RmspropLowerBoundaries", With<RmspropOptions>([](auto& o) {
                    o.lr = 0;
                    o.alpha = 0;
                    o.eps = 0;
                    o.momentum = 0;
                  })},
        ValidCase{"RmspropAlphaOneCenteredMomentum", With<RmspropOptions>([](auto& o) {
                    o.alpha = 1;
                    o.momentum = 0.999;
                    o.centered = true;
                    o.maximize = true;
                  })},
        ValidCase{"NadamBoundaries", With<NadamOptions>([](auto& o) {
                    o.lr = 0;
                    o.beta1 = 0;
                    o.beta2 = 0;
                    o.eps = 1e-300;
                    o.momentum_decay = 0;
                  })},
        ValidCase{"RadamBoundaries", With<RadamOptions>([](auto& o) {
                    o.lr = 0;
                    o.beta1 = 0;
                    o.beta2 = 0;
                    o.eps = 0;
                  })},
        ValidCase{"LionBetasZero", With<LionOptions>([](auto& o) {
                    o.beta1 = 0;
                    o.beta2 = 0;
                    o.weight_decay = 0;
                  })},
        ValidCase{"LionBetasOneTinyLr", With<LionOptions>([](auto& o) {
                    o.lr = 1e-300;
                    o.beta1 = 1;
                    o.beta2 = 1;
                  })},
        ValidCase{"LambBoundaries", With<LambOptions>([](auto& o) {
                    o.lr = 0;
                    o.beta1 = 0;
                    o.beta2 = 0;
                    o.eps = 1e-300;
                  })},
        ValidCase{"LarsBoundaries", With<LarsOptions>([](auto& o) {
                    o.lr = 0;
                    o.momentum = 0;
                    o.trust_coefficient = 1e-300;
                    o.eps = 0;
                    o.nesterov = true;
                  })}),
    [](const ::testing::TestParamInfo<ValidCase>& info) { return info.param.name; });

// ---------------------------------------------------------------------------------------------
// The variant helpers.

TEST(OptimizerOptionsTest, ValidateChecksWhicheverOptionsTheVariantHolds) {
  EXPECT_OK(Validate(OptimizerOptions(AdamOptions{})));
  EXPECT_EQ(Validate(With<AdagradOptions>([](auto& o) { o.lr = -1; })).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(OptimizerOptionsTest, OptimizerNameIsTheShortName) {
  EXPECT_EQ(OptimizerName(SgdOptions{}), "sgd");
  EXPECT_EQ(OptimizerName(AdamOptions{}), "adam");
  EXPECT_EQ(OptimizerName(AdamWOptions{}), "adamw");
  EXPECT_EQ(OptimizerName(AdagradOptions{}), "adagrad");
  EXPECT_EQ(OptimizerName(NormalizedGdOptions{}), "normalized_gd");
  EXPECT_EQ(OptimizerName(AdadeltaOptions{}), "adadelta");
  EXPECT_EQ(OptimizerName(RmspropOptions{}), "rmsprop");
  EXPECT_EQ(OptimizerName(NadamOptions{}), "nadam");
  EXPECT_EQ(OptimizerName(RadamOptions{}), "radam");
  EXPECT_EQ(OptimizerName(LionOptions{}), "lion");
  EXPECT_EQ(OptimizerName(LambOptions{}), "lamb");
  EXPECT_EQ(OptimizerName(LarsOptions{}), "lars");
}

TEST(OptimizerOptionsTest, BaseLearningRateIsTheOptionsLr) {
  EXPECT_EQ(BaseLearningRate(With<SgdOptions>([](auto& o) { o.lr = 0.5; })), 0.5);
  EXPECT_EQ(BaseLearningRate(AdamOptions{}), 1e-3);
  EXPECT_EQ(BaseLearningRate(AdamWOptions{}), 1e-3);
  EXPECT_EQ(BaseLearningRate(AdagradOptions{}), 1e-2);
  EXPECT_EQ(BaseLearningRate(NormalizedGdOptions{}), 1e-2);
  EXPECT_EQ(BaseLearningRate(AdadeltaOptions{}), 1.0);
  EXPECT_EQ(BaseLearningRate(RmspropOptions{}), 1e-2);
  EXPECT_EQ(BaseLearningRate(NadamOptions{}), 2e-3);
  EXPECT_EQ(BaseLearningRate(RadamOptions{}), 1e-3);
  EXPECT_EQ(BaseLearningRate(LionOptions{}), 1e-4);
  EXPECT_EQ(BaseLearningRate(LambOptions{}), 1e-3);
  EXPECT_EQ(BaseLearningRate(LarsOptions{}), 1.0);
}

// The defaults written in the options structs: torch 1.13's, or the reference implementation's
// where torch has no such optimizer (reference/optimizers.md section 1.13).
TEST(OptimizerOptionsTest, NewOptimizersHaveTheReferenceDefaults) {
  const AdadeltaOptions adadelta;
  EXPECT_EQ(adadelta.rho, 0.9);
  EXPECT_EQ(adadelta.eps, 1e-6);
  EXPECT_EQ(adadelta.weight_decay, 0.0);
  EXPECT_FALSE(adadelta.maximize);
  const RmspropOptions rmsprop;
  EXPECT_EQ(rmsprop.alpha, 0.99);
  EXPECT_EQ(rmsprop.eps, 1e-8);
  EXPECT_EQ(rmsprop.weight_decay, 0.0);
  EXPECT_EQ(rmsprop.momentum, 0.0);
  EXPECT_FALSE(rmsprop.centered);
  EXPECT_FALSE(rmsprop.maximize);
  const NadamOptions nadam;
  EXPECT_EQ(nadam.beta1, 0.9);
  EXPECT_EQ(nadam.beta2, 0.999);
  EXPECT_EQ(nadam.eps, 1e-8);
  EXPECT_EQ(nadam.weight_decay, 0.0);
  EXPECT_EQ(nadam.momentum_decay, 4e-3);
  const RadamOptions radam;
  EXPECT_EQ(radam.beta1, 0.9);
  EXPECT_EQ(radam.beta2, 0.999);
  EXPECT_EQ(radam.eps, 1e-8);
  EXPECT_EQ(radam.weight_decay, 0.0);
  const LionOptions lion;
  EXPECT_EQ(lion.beta1, 0.9);
  EXPECT_EQ(lion.beta2, 0.99);
  EXPECT_EQ(lion.weight_decay, 1e-3);
  const LambOptions lamb;
  EXPECT_EQ(lamb.beta1, 0.9);
  EXPECT_EQ(lamb.beta2, 0.999);
  EXPECT_EQ(lamb.eps, 1e-6);
  EXPECT_EQ(lamb.weight_decay, 0.0);
  const LarsOptions lars;
  EXPECT_EQ(lars.momentum, 0.9);
  EXPECT_EQ(lars.weight_decay, 0.0);
  EXPECT_EQ(lars.trust_coefficient, 1e-3);
  EXPECT_EQ(lars.eps, 0.0);
  EXPECT_FALSE(lars.nesterov);
}

}  // namespace
}  // namespace optd
