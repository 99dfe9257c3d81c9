#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/thread_pool.h"
#include "gtest/gtest.h"
#include "server/optim/optimizer.h"
#include "server/optim/testing.h"

namespace optd {
namespace {

ThreadPoolOptions Threads(int n) {
  ThreadPoolOptions o;
  o.num_threads = n;
  return o;
}

// ---------------------------------------------------------------------------------------------
// Optimizer::ForEachSegment, through an optimizer that records the segments it is given.

class SegmentRecorder final : public Optimizer {
 public:
  explicit SegmentRecorder(std::vector<int64_t> sizes) : Optimizer(std::move(sizes)) {}

  OptimizerOptions options() const override { return SgdOptions{}; }
  int64_t StateBytesPerElement() const override { return 0; }

  struct Call {
    Segment segment;
    std::thread::id thread;
  };
  std::vector<Call> calls;  // in call order
  using Optimizer::segments;

 private:
  void SetOptions(const OptimizerOptions&) override {}
  void StepImpl(absl::Span<const TensorGrad>, double) override {
    calls.clear();
    std::mutex mu;
    ForEachSegment([&](const Segment& s) {
      std::lock_guard<std::mutex> lock(mu);
      calls.push_back({s, std::this_thread::get_id()});
    });
  }
};

// Steps `recorder` once with zero gradients.
void StepRecorder(SegmentRecorder& recorder) {
  std::vector<std::vector<float>> params, grads;
  for (int64_t size : recorder.tensor_sizes()) {
    params.emplace_back(size, 0.0f);
    grads.emplace_back(size, 0.0f);
  }
  std::vector<TensorGrad> tensors;
  for (size_t t = 0; t < params.size(); ++t) {
    tensors.push_back({absl::MakeSpan(params[t]), absl::MakeConstSpan(grads[t])});
  }
  ASSERT_OK(recorder.Step(tensors, 0.1));
}

TEST(ForEachSegmentTest, EachTensorIsCutEveryBlockFromItsOwnStart) {
  constexpr int64_t kBlock = Optimizer::kBlockElements;
  SegmentRecorder recorder({kBlock + 5, 3, 2 * kBlock, 1});
  struct Want {
    size_t tensor;
    int64_t begin;
    int64_t end;
  };
  const std::vector<Want> want = {{0, 0, kBlock}, {0, kBlock, kBlock + 5}, {1, 0, 3},
                                  {2, 0, kBlock}, {2, kBlock, 2 * kBlock}, {3, 0, 1}};
  const auto& segments = recorder.segments();
  ASSERT_EQ(segments.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(segments[i].index, i);
    EXPECT_EQ(segments[i].tensor, want[i].tensor) << "segment " << i;
    EXPECT_EQ(segments[i].begin, want[i].begin) << "segment " << i;
    EXPECT_EQ(segments[i].end, want[i].end) << "segment " << i;
  }
  EXPECT_EQ(&recorder.segments(), &recorder.layout().segments());
}

TEST(ForEachSegmentTest, SmallStepRunsInlineInOrder) {
  SegmentRecorder recorder({Optimizer::kParallelMinElements - 10, 9});
  ThreadPool pool(Threads(3));
  recorder.set_pool(&pool);
  StepRecorder(recorder);
  ASSERT_EQ(recorder.calls.size(), recorder.segments().size());
  for (size_t i = 0; i < recorder.calls.size(); ++i) {
    EXPECT_EQ(recorder.calls[i].segment.index, i);
    EXPECT_EQ(recorder.calls[i].thread, std::this_thread::get_id());
  }
}

TEST(ForEachSegmentTest, LargeStepVisitsEverySegmentOnce) {
  for (int threads : {1, 2, 3}) {
    SegmentRecorder recorder({Optimizer::kParallelMinElements, 5, 100000});
    ThreadPool pool(Threads(threads));
    recorder.set_pool(&pool);
    StepRecorder(recorder);
    std::vector<int> seen(recorder.segments().size(), 0);
    for (const SegmentRecorder::Call& call : recorder.calls) ++seen[call.segment.index];
    EXPECT_EQ(seen, std::vector<int>(seen.size(), 1)) << "threads " << threads;
  }
}

TEST(ForEachSegmentTest, NullPoolRunsInline) {
  SegmentRecorder recorder({Optimizer::kParallelMinElements * 2});
  recorder.set_pool(nullptr);
  EXPECT_EQ(recorder.pool(), nullptr);
  StepRecorder(recorder);
  for (const SegmentRecorder::Call& call : recorder.calls) {
    EXPECT_EQ(call.thread, std::this_thread::get_id());
  }
}

// ---------------------------------------------------------------------------------------------
// Every optimizer gives bit-identical results on 1M elements whatever the pool size.

struct ParallelCase {
  std::string name;
  OptimizerOptions options;
  double lr;
};

void PrintTo(const ParallelCase& c, std::ostream* os) { *os << c.name; }

template <typename T, typename F>
OptimizerOptions With(F mutate) {
  T options;
  mutate(options);
  return options;
}

// Sizes of ~1.07M elements in all: blocks straddle tensors, and one tensor is tiny.
const std::vector<int64_t>& Sizes() {
  static const std::vector<int64_t>* const sizes =
      new std::vector<int64_t>{600000, 3, 400001, 70000};
  return *sizes;
}

constexpr int kSteps = 7;  // RAdam takes its rectified branch from step 6

// Params, then one gradient per step, for every tensor; deterministic.
struct Data {
  std::vector<std::vector<float>> params;
  std::vector<std::vector<std::vector<float>>> grads;  // [step][tensor]
};

const Data& TestData() {
  static const Data* const data = [] {
    auto* d = new Data;
    std::mt19937 rng(12345);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int64_t size : Sizes()) {
      std::vector<float> p(size);
      for (float& x : p) x = normal(rng);
      d->params.push_back(std::move(p));
    }
    d->grads.resize(kSteps);
    for (int step = 0; step < kSteps; ++step) {
      for (int64_t size : Sizes()) {
        std::vector<float> g(size);
        for (float& x : g) x = 0.1f * normal(rng);
        g[size / 2] = 0.0f;  // exact zeros too
        d->grads[step].push_back(std::move(g));
      }
    }
    return d;
  }();
  return *data;
}

// Runs kSteps steps on `pool` and returns the params.
std::vector<std::vector<float>> RunSteps(const ParallelCase& c, ThreadPool* pool) {
  absl::StatusOr<std::unique_ptr<Optimizer>> optimizer = CreateOptimizer(c.options, Sizes(), pool);
  EXPECT_OK(optimizer);
  if (!optimizer.ok()) return {};
  const Data& data = TestData();
  std::vector<std::vector<float>> params = data.params;
  for (int step = 0; step < kSteps; ++step) {
    std::vector<TensorGrad> tensors;
    for (size_t t = 0; t < params.size(); ++t) {
      tensors.push_back({absl::MakeSpan(params[t]), absl::MakeConstSpan(data.grads[step][t])});
    }
    EXPECT_OK((*optimizer)->Step(tensors, c.lr));
  }
  return params;
}

// True if a and b hold the same bits.
bool BitIdentical(const std::vector<std::vector<float>>& a,
                  const std::vector<std::vector<float>>& b) {
  if (a.size() != b.size()) return false;
  for (size_t t = 0; t < a.size(); ++t) {
    if (a[t].size() != b[t].size()) return false;
    if (std::memcmp(a[t].data(), b[t].data(), a[t].size() * sizeof(float)) != 0) return false;
  }
  return true;
}

class ParallelStepTest : public ::testing::TestWithParam<ParallelCase> {};

TEST_P(ParallelStepTest, IsBitIdenticalWhateverThePoolSize) {
  const ParallelCase& c = GetParam();
  const std::vector<std::vector<float>> inline_result = RunSteps(c, nullptr);
  ASSERT_EQ(inline_result.size(), Sizes().size());
  EXPECT_FALSE(BitIdentical(inline_result, TestData().params)) << "the steps changed nothing";
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(Threads(threads));
    EXPECT_TRUE(BitIdentical(RunSteps(c, &pool), inline_result)) << "threads " << threads;
  }
}

INSTANTIATE_TEST_SUITE_P(
    EveryOptimizer, ParallelStepTest,
    ::testing::Values(
        ParallelCase{"Sgd", With<SgdOptions>([](auto& o) { o.lr = 0.1; }), 0.1},
        ParallelCase{"SgdNesterovWeightDecay", With<SgdOptions>([](auto& o) {
                       o.lr = 0.1;
                       o.momentum = 0.9;
                       o.nesterov = true;
                       o.weight_decay = 1e-3;
                     }),
                     0.1},
        ParallelCase{"AdamAmsgradWeightDecay", With<AdamOptions>([](auto& o) {
                       o.amsgrad = true;
                       o.weight_decay = 1e-2;
                     }),
                     1e-3},
        ParallelCase{"AdamW", AdamWOptions{}, 1e-3},
        ParallelCase{"Adagrad", With<AdagradOptions>([](auto& o) { o.weight_decay = 1e-2; }), 1e-2},
        ParallelCase{"NormalizedGdGlobal", NormalizedGdOptions{}, 1e-2},
        ParallelCase{"NormalizedGdPerTensor", With<NormalizedGdOptions>([](auto& o) {
                       o.norm = NormalizedGdOptions::Norm::kPerTensor;
                     }),
                     1e-2},
        ParallelCase{"Adadelta", With<AdadeltaOptions>([](auto& o) { o.weight_decay = 1e-2; }),
                     1.0},
        ParallelCase{"RmspropCenteredMomentum", With<RmspropOptions>([](auto& o) {
                       o.centered = true;
                       o.momentum = 0.9;
                       o.weight_decay = 1e-2;
                     }),
                     1e-2},
        ParallelCase{"Nadam", With<NadamOptions>([](auto& o) { o.weight_decay = 1e-2; }), 2e-3},
        ParallelCase{"Radam", RadamOptions{}, 1e-3}, ParallelCase{"Lion", LionOptions{}, 1e-4},
        ParallelCase{"LambWeightDecay", With<LambOptions>([](auto& o) { o.weight_decay = 1e-2; }),
                     1e-3},
        ParallelCase{"LarsNesterovWeightDecay", With<LarsOptions>([](auto& o) {
                       o.nesterov = true;
                       o.weight_decay = 1e-4;
                     }),
                     1.0}),
    [](const ::testing::TestParamInfo<ParallelCase>& info) { return info.param.name; });

}  // namespace
}  // namespace optd
