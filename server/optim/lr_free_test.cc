// The learning-rate-free and recent optimizers (reference/optimizers-lr-free.md) against the
// golden vectors computed by running the upstream reference code (tests/golden/lr_free.json):
// every case of the file, at every checkpoint, within the file's tolerances; and the same bits
// on one thread and on many, however the blocks fall.

#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "base/status_matchers.h"
#include "base/thread_pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/optim/lr_free_testing.h"
#include "server/optim/muon.h"
#include "server/optim/optimizer.h"

namespace optd {
namespace {

using ::testing::HasSubstr;

// Every case of `optimizer` in the file, on the calling thread.
void ExpectAllCases(const std::string& optimizer) {
  const std::vector<std::string> cases = LrFreeGolden::Get().Cases(optimizer);
  ASSERT_FALSE(cases.empty()) << "no cases for " << optimizer;
  for (const std::string& name : cases) {
    SCOPED_TRACE(optimizer + "/" + name);
    ExpectGoldenCase(optimizer, name,
                     OptionsFromJson(optimizer, LrFreeGolden::Get().Case(optimizer, name)),
                     /*pool=*/nullptr);
  }
}

TEST(LrFreeGoldenTest, Prodigy) { ExpectAllCases("Prodigy"); }
TEST(LrFreeGoldenTest, DAdaptAdam) { ExpectAllCases("DAdaptAdam"); }
TEST(LrFreeGoldenTest, DAdaptSgd) { ExpectAllCases("DAdaptSGD"); }
TEST(LrFreeGoldenTest, Dog) { ExpectAllCases("DoG"); }
TEST(LrFreeGoldenTest, Ldog) { ExpectAllCases("LDoG"); }
TEST(LrFreeGoldenTest, ScheduleFreeAdamW) { ExpectAllCases("AdamWScheduleFree"); }
TEST(LrFreeGoldenTest, ScheduleFreeSgd) { ExpectAllCases("SGDScheduleFree"); }
TEST(LrFreeGoldenTest, Adafactor) { ExpectAllCases("Adafactor"); }
TEST(LrFreeGoldenTest, MuonFloat32) { ExpectAllCases("Muon_fp32"); }

// ---------------------------------------------------------------------------------------------
// Every new optimizer with options that switch on its branches, for the tests below.

struct Named {
  std::string name;
  OptimizerOptions options;
};

std::vector<Named> AllOptimizers() {
  ProdigyOptions prodigy;
  prodigy.weight_decay = 0.01;
  prodigy.slice_p = 3;
  ProdigyOptions prodigy_coupled;
  prodigy_coupled.weight_decay = 0.01;
  prodigy_coupled.decouple = false;
  prodigy_coupled.beta1 = 0.0;
  DAdaptAdamOptions dadapt_adam;
  dadapt_adam.weight_decay = 0.01;
  DAdaptSgdOptions dadapt_sgd;
  dadapt_sgd.momentum = 0.9;
  dadapt_sgd.weight_decay = 0.01;
  DogOptions dog;
  dog.averaging = true;
  dog.weight_decay = 0.01;
  LdogOptions ldog;
  ldog.averaging = true;
  ScheduleFreeAdamWOptions sf_adamw;
  sf_adamw.weight_decay = 0.01;
  sf_adamw.warmup_steps = 2;
  ScheduleFreeAdamWOptions sf_inner;
  sf_inner.inner_momentum = 0.9;
  ScheduleFreeSgdOptions sf_sgd;
  sf_sgd.lr = 0.1;
  sf_sgd.weight_decay = 0.01;
  AdafactorOptions adafactor;
  adafactor.weight_decay = 0.1;
  MuonOptions muon;
  muon.weight_decay = 0.1;
  MuonOptions muon_plain;
  muon_plain.nesterov = false;
  return {{"prodigy", prodigy},
          {"prodigy_coupled_beta1_0", prodigy_coupled},
          {"dadapt_adam", dadapt_adam},
          {"dadapt_sgd", dadapt_sgd},
          {"dog", dog},
          {"ldog", ldog},
          {"sf_adamw", sf_adamw},
          {"sf_adamw_inner", sf_inner},
          {"sf_sgd", sf_sgd},
          {"adafactor", adafactor},
          {"muon", muon},
          {"muon_no_nesterov", muon_plain}};
}

// A model with matrices and vectors; `large` is over Optimizer::kParallelMinElements elements, so
// its steps run on the pool, cut into blocks that split tensors.
TensorShapes Model(bool large) {
  if (large) return {{300, 500}, {200003}, {7}, {129, 1025}, {3, 4, 5, 6}};
  return {{7}, {33, 17}, {64, 48}};
}

struct ModelRun {
  std::vector<std::vector<float>> params;
  OptimizerState state;
};

// Steps an optimizer `steps` times over `shapes` with seeded normal gradients (one step of all
// zeros among them, and one with an outsized gradient), on `pool`.
ModelRun RunModel(const OptimizerOptions& options, const TensorShapes& shapes, ThreadPool* pool,
                  int steps, const OptimizerState* start = nullptr,
                  const std::vector<std::vector<float>>* start_params = nullptr,
                  int first_step = 0) {
  ModelRun run;
  absl::StatusOr<std::unique_ptr<Optimizer>> created =
      CreateOptimizerForShapes(options, shapes, pool);
  EXPECT_OK(created);
  if (!created.ok()) return run;
  std::mt19937 init_rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t size : (*created)->tensor_sizes()) {
    std::vector<float> p(size);
    for (float& x : p) x = 0.1f * normal(init_rng);
    run.params.push_back(std::move(p));
  }
  if (start != nullptr) {
    EXPECT_OK((*created)->ImportState(*start));
    run.params = *start_params;
  }
  for (int step = first_step; step < first_step + steps; ++step) {
    std::mt19937 rng(100 + step);
    std::vector<std::vector<float>> grads;
    for (const std::vector<float>& p : run.params) {
      std::vector<float> g(p.size());
      const float scale = step == 2 ? 0.0f : step == 4 ? 100.0f : 1.0f;
      for (float& x : g) x = scale * (0.3f + normal(rng));
      grads.push_back(std::move(g));
    }
    std::vector<TensorGrad> tensors;
    for (size_t t = 0; t < grads.size(); ++t) {
      tensors.push_back({absl::MakeSpan(run.params[t]), absl::MakeConstSpan(grads[t])});
    }
    EXPECT_OK((*created)->Step(tensors, BaseLearningRate(options)));
  }
  run.state = (*created)->ExportState();
  return run;
}

void ExpectSameBits(const ModelRun& a, const ModelRun& b, const std::string& what) {
  ASSERT_EQ(a.params.size(), b.params.size()) << what;
  for (size_t t = 0; t < a.params.size(); ++t) {
    EXPECT_EQ(
        0, std::memcmp(a.params[t].data(), b.params[t].data(), a.params[t].size() * sizeof(float)))
        << what << ": params of tensor " << t;
    ASSERT_EQ(a.state.tensors[t].arrays.size(), b.state.tensors[t].arrays.size()) << what;
    for (size_t k = 0; k < a.state.tensors[t].arrays.size(); ++k) {
      const std::vector<float>& x = a.state.tensors[t].arrays[k].values;
      const std::vector<float>& y = b.state.tensors[t].arrays[k].values;
      ASSERT_EQ(x.size(), y.size()) << what;
      EXPECT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * sizeof(float)))
          << what << ": " << a.state.tensors[t].arrays[k].name << " of tensor " << t;
    }
    EXPECT_EQ(a.state.tensors[t].scalars, b.state.tensors[t].scalars) << what;
    EXPECT_EQ(a.state.tensors[t].step, b.state.tensors[t].step) << what;
  }
  EXPECT_EQ(a.state.scalars, b.state.scalars) << what;
}

TEST(LrFreeThreadsTest, OneThreadAndManyGiveTheSameBits) {
  ThreadPoolOptions one;
  one.num_threads = 1;
  ThreadPoolOptions four;
  four.num_threads = 4;
  ThreadPool pool1(one), pool4(four);
  for (const Named& o : AllOptimizers()) {
    const ModelRun serial = RunModel(o.options, Model(/*large=*/true), &pool1, 6);
    const ModelRun parallel = RunModel(o.options, Model(/*large=*/true), &pool4, 6);
    const ModelRun inline_run = RunModel(o.options, Model(/*large=*/true), nullptr, 6);
    ExpectSameBits(serial, parallel, o.name + " 1 vs 4 threads");
    ExpectSameBits(serial, inline_run, o.name + " pool vs calling thread");
  }
}

TEST(LrFreeStateTest, ExportedStateContinuesExactly) {
  for (const Named& o : AllOptimizers()) {
    const ModelRun straight = RunModel(o.options, Model(false), nullptr, 8);
    const ModelRun first = RunModel(o.options, Model(false), nullptr, 5);
    const ModelRun resumed =
        RunModel(o.options, Model(false), nullptr, 3, &first.state, &first.params,
                 /*first_step=*/5);
    ExpectSameBits(straight, resumed, o.name + " resumed after 5 steps");
  }
}

TEST(LrFreeStateTest, StateBytesMatchTheArrays) {
  for (const Named& o : AllOptimizers()) {
    absl::StatusOr<std::unique_ptr<Optimizer>> opt =
        CreateOptimizerForShapes(o.options, Model(false));
    ASSERT_OK(opt);
    EXPECT_EQ((*opt)->StateBytes(), 0) << o.name;
    const ModelRun run = RunModel(o.options, Model(false), nullptr, 1);
    EXPECT_GT(run.state.ArrayBytes(), 0) << o.name;
    EXPECT_LE(run.state.ArrayBytes(),
              ((*opt)->StateBytesPerElement() + 1) * (7 + 33 * 17 + 64 * 48))
        << o.name;
  }
}

TEST(LrFreeStateTest, ImportRefusesMissingOrUnknownModelScalars) {
  const ModelRun run = RunModel(ProdigyOptions{}, Model(false), nullptr, 2);
  absl::StatusOr<std::unique_ptr<Optimizer>> opt =
      CreateOptimizerForShapes(ProdigyOptions{}, Model(false));
  ASSERT_OK(opt);
  OptimizerState missing = run.state;
  missing.scalars.pop_back();
  EXPECT_THAT((*opt)->ImportState(missing).message(), HasSubstr("\"k\" 0 times"));
  OptimizerState extra = run.state;
  extra.scalars.emplace_back("bogus", 1.0);
  EXPECT_THAT((*opt)->ImportState(extra).message(), HasSubstr("has 7 model-wide scalars"));
  EXPECT_OK((*opt)->ImportState(run.state));
}

TEST(LrFreeRowSparseTest, GlobalOptimizersRefuseRowSparseGradients) {
  for (const OptimizerOptions& options :
       {OptimizerOptions(ProdigyOptions{}), OptimizerOptions(DAdaptAdamOptions{}),
        OptimizerOptions(DAdaptSgdOptions{}), OptimizerOptions(DogOptions{}),
        OptimizerOptions(LdogOptions{})}) {
    absl::StatusOr<std::unique_ptr<Optimizer>> opt = CreateOptimizerForShapes(options, {{4, 2}});
    ASSERT_OK(opt);
    std::vector<float> p(8, 1.0f), g(2, 1.0f);
    const int64_t rows[] = {1};
    const TensorGrad sparse{absl::MakeSpan(p), absl::MakeConstSpan(g), absl::MakeConstSpan(rows),
                            2};
    const absl::Status s = (*opt)->Step({sparse}, 1.0);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("refuses row-sparse gradients"));
    EXPECT_THAT(s.message(), HasSubstr("every element's gradient in every step"));
  }
}

TEST(LrFreeEvaluationPointTest, ScheduleFreeEvaluatesAtXAndTrainsAtY) {
  ScheduleFreeSgdOptions o;
  o.lr = 0.1;
  absl::StatusOr<std::unique_ptr<Optimizer>> opt = CreateOptimizerForShapes(o, {{2}});
  ASSERT_OK(opt);
  std::vector<float> y = {1.0f, -1.0f}, x(2);
  ASSERT_OK((*opt)->EvaluationPoint(0, y, absl::MakeSpan(x)));
  EXPECT_EQ(x, y);  // before the first step x = y
  const std::vector<float> g = {1.0f, 2.0f};
  const TensorGrad t{absl::MakeSpan(y), absl::MakeConstSpan(g)};
  ASSERT_OK((*opt)->Step({t}, 0.1));
  ASSERT_OK((*opt)->Step({t}, 0.1));
  ASSERT_OK((*opt)->EvaluationPoint(0, y, absl::MakeSpan(x)));
  const OptimizerState state = (*opt)->ExportState();
  const std::vector<float>& z = state.tensors[0].arrays[0].values;
  for (int i = 0; i < 2; ++i) {
    EXPECT_NEAR(x[i], (y[i] - (1 - 0.9) * z[i]) / 0.9, 1e-6);
    EXPECT_NE(x[i], y[i]);
  }
  absl::StatusOr<std::unique_ptr<Optimizer>> prodigy =
      CreateOptimizerForShapes(ProdigyOptions{}, {{2}});
  ASSERT_OK(prodigy);
  EXPECT_EQ((*prodigy)->EvaluationPoint(0, y, absl::MakeSpan(x)).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(LrFreeOptionsTest, ValidateNamesFieldValueAndRange) {
  ProdigyOptions prodigy;
  prodigy.d_coef = -1;
  EXPECT_EQ(prodigy.Validate().message(), "prodigy.d_coef = -1 is out of range: must be > 0");
  prodigy = {};
  prodigy.growth_rate = 0.5;
  EXPECT_EQ(prodigy.Validate().message(),
            "prodigy.growth_rate = 0.5 is out of range: must be >= 1 (or inf)");
  prodigy = {};
  prodigy.beta3 = 1.0;
  EXPECT_EQ(prodigy.Validate().message(), "prodigy.beta3 = 1 is out of range: must be in [0, 1)");
  prodigy = {};
  prodigy.slice_p = 0;
  EXPECT_EQ(prodigy.Validate().message(), "prodigy.slice_p = 0 is out of range: must be >= 1");
  EXPECT_OK(ProdigyOptions{}.Validate());  // growth_rate = inf by default

  DogOptions dog;
  dog.reps_rel = 0;
  EXPECT_EQ(dog.Validate().message(), "dog.reps_rel = 0 is out of range: must be > 0");
  dog.init_eta = 1e-3;  // forces reps_rel to 0, as upstream
  EXPECT_OK(dog.Validate());
  LdogOptions ldog;
  ldog.init_eta = 0.0;
  EXPECT_EQ(ldog.Validate().message(), "ldog.init_eta = 0 is out of range: must be > 0");

  ScheduleFreeSgdOptions sf;
  sf.momentum = 0;
  EXPECT_EQ(sf.Validate().message(),
            "schedulefree_sgd.momentum = 0 is out of range: must be in (0, 1)");
  ScheduleFreeAdamWOptions sfa;
  sfa.warmup_steps = -1;
  EXPECT_EQ(sfa.Validate().message(),
            "schedulefree_adamw.warmup_steps = -1 is out of range: must be >= 0");
  AdafactorOptions adafactor;
  adafactor.beta2_decay = 0.1;
  EXPECT_EQ(adafactor.Validate().message(),
            "adafactor.beta2_decay = 0.1 is out of range: must be <= 0");
  adafactor.beta2_decay = std::numeric_limits<double>::infinity();
  EXPECT_EQ(adafactor.Validate().message(),
            "adafactor.beta2_decay = inf is out of range: must be finite and <= 0");
  adafactor = {};
  adafactor.d = 0.5;
  EXPECT_EQ(adafactor.Validate().message(), "adafactor.d = 0.5 is out of range: must be >= 1");
  MuonOptions muon;
  muon.ns_steps = 0;
  EXPECT_EQ(muon.Validate().message(), "muon.ns_steps = 0 is out of range: must be >= 1");
  muon = {};
  muon.adam_eps = 0;
  EXPECT_EQ(muon.Validate().message(), "muon.adam_eps = 0 is out of range: must be > 0");
  DAdaptAdamOptions da;
  da.lr = 0;
  EXPECT_EQ(da.Validate().message(), "dadapt_adam.lr = 0 is out of range: must be > 0");
  DAdaptSgdOptions ds;
  ds.d0 = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(ds.Validate().message(), "dadapt_sgd.d0 = nan is out of range: must be finite and > 0");
}

TEST(LrFreeOptionsTest, UpdateOptionsRefusesChangesToWhichStateExists) {
  struct Case {
    OptimizerOptions from, to;
    std::string field;
  };
  ProdigyOptions beta1_0;
  beta1_0.beta1 = 0;
  ProdigyOptions slice;
  slice.slice_p = 2;
  DogOptions averaging;
  averaging.averaging = true;
  ScheduleFreeAdamWOptions inner;
  inner.inner_momentum = 0.5;
  for (const Case& c :
       {Case{ProdigyOptions{}, beta1_0, "prodigy.beta1"},
        Case{ProdigyOptions{}, slice, "prodigy.slice_p"},
        Case{DogOptions{}, averaging, "dog.averaging"},
        Case{ScheduleFreeAdamWOptions{}, inner, "schedulefree_adamw.inner_momentum"}}) {
    absl::StatusOr<std::unique_ptr<Optimizer>> opt = CreateOptimizerForShapes(c.from, {{3}});
    ASSERT_OK(opt);
    EXPECT_THAT((*opt)->UpdateOptions(c.to).message(),
                HasSubstr(c.field + " cannot change on a running session"));
  }
  // Other fields change freely, and the estimate is kept.
  const ModelRun run = RunModel(ProdigyOptions{}, Model(false), nullptr, 3);
  absl::StatusOr<std::unique_ptr<Optimizer>> opt =
      CreateOptimizerForShapes(ProdigyOptions{}, Model(false));
  ASSERT_OK(opt);
  ASSERT_OK((*opt)->ImportState(run.state));
  ProdigyOptions changed;
  changed.d_coef = 0.5;
  changed.weight_decay = 0.1;
  EXPECT_OK((*opt)->UpdateOptions(changed));
  EXPECT_EQ((*opt)->ExportState().scalars, run.state.scalars);
}

TEST(LrFreeEstimatesTest, EstimatesNameTheDistanceAndTheStep) {
  const ModelRun run = RunModel(ProdigyOptions{}, Model(false), nullptr, 12);
  absl::StatusOr<std::unique_ptr<Optimizer>> opt =
      CreateOptimizerForShapes(ProdigyOptions{}, Model(false));
  ASSERT_OK(opt);
  ASSERT_OK((*opt)->ImportState(run.state));
  const auto estimates = (*opt)->Estimates();
  ASSERT_EQ(estimates.size(), 2u);
  EXPECT_EQ(estimates[0].first, "d");
  EXPECT_GT(estimates[0].second, ProdigyOptions{}.d0);  // it grew
  EXPECT_EQ(estimates[1].first, "effective_lr");
  absl::StatusOr<std::unique_ptr<Optimizer>> dog =
      CreateOptimizerForShapes(DogOptions{}, Model(false));
  ASSERT_OK(dog);
  EXPECT_EQ((*dog)->Estimates()[0].first, "eta");
}

TEST(LrFreeMuonTest, NewtonSchulzOrthogonalizesAMatrix) {
  // Five quintic steps bring the singular values into about [0.7, 1.2]: X X^T near identity.
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t rows = 8, cols = 20;
  std::vector<float> u(rows * cols);
  for (float& x : u) x = normal(rng);
  Muon::NewtonSchulz(u.data(), rows, cols, 5);
  for (int64_t i = 0; i < rows; ++i) {
    double diag = 0.0;
    for (int64_t k = 0; k < cols; ++k) diag += u[i * cols + k] * u[i * cols + k];
    EXPECT_GT(diag, 0.4) << i;
    EXPECT_LT(diag, 1.5) << i;
  }
}

}  // namespace
}  // namespace optd
