#include "server/optim/parallel.h"

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
// ThreadPool

TEST(ThreadPoolTest, HasTheRequestedNumberOfThreads) {
  EXPECT_EQ(ThreadPool(Threads(1)).num_threads(), 1);
  EXPECT_EQ(ThreadPool(Threads(3)).num_threads(), 3);
}

TEST(ThreadPoolTest, DefaultSizeIsTheHardwareConcurrencyCapped) {
  const int hardware = static_cast<int>(std::thread::hardware_concurrency());
  const int want = std::clamp(hardware, 1, ThreadPoolOptions::kMaxDefaultThreads);
  EXPECT_EQ(ThreadPool().num_threads(), want);
  EXPECT_EQ(ThreadPool::Default()->num_threads(), want);
  EXPECT_EQ(ThreadPool::Default(), ThreadPool::Default());
}

struct Range {
  int64_t begin;
  int64_t end;
  bool operator<(const Range& o) const { return begin < o.begin; }
  bool operator==(const Range& o) const { return begin == o.begin && end == o.end; }
};

// Runs ParallelFor and returns the ranges it made, sorted, checking each index is seen once.
std::vector<Range> Ranges(ThreadPool& pool, int64_t n, int64_t grain) {
  std::mutex mu;
  std::vector<Range> ranges;
  std::vector<std::atomic<int>> seen(std::max<int64_t>(n, 0));
  pool.ParallelFor(n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) seen[i].fetch_add(1);
    std::lock_guard<std::mutex> lock(mu);
    ranges.push_back({begin, end});
  });
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(seen[i].load(), 1) << "index " << i;
  std::sort(ranges.begin(), ranges.end());
  return ranges;
}

TEST(ThreadPoolTest, ParallelForCoversEachIndexExactlyOnceInFixedRanges) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(Threads(threads));
    for (int64_t n : {0, 1, 7, 64, 65, 1000, 4096, 100003}) {
      for (int64_t grain : {1, 7, 64, 1000, 200000}) {
        if (n / grain > 20000) continue;  // keep the test fast
        std::vector<Range> want;
        for (int64_t b = 0; b < n; b += grain) want.push_back({b, std::min(n, b + grain)});
        EXPECT_EQ(Ranges(pool, n, grain), want)
            << "threads " << threads << " n " << n << " grain " << grain;
      }
    }
  }
}

TEST(ThreadPoolTest, ParallelForDoesNothingForAnEmptyRange) {
  ThreadPool pool(Threads(2));
  int calls = 0;
  pool.ParallelFor(0, 10, [&](int64_t, int64_t) { ++calls; });
  pool.ParallelFor(-5, 10, [&](int64_t, int64_t) { ++calls; });
  EXPECT_EQ(calls, 0);
}

TEST(ThreadPoolTest, ParallelForRunsInlineForOneRangeOrOneThread) {
  const std::thread::id caller = std::this_thread::get_id();
  ThreadPool two(Threads(2));
  two.ParallelFor(10, 10, [&](int64_t begin, int64_t end) {
    EXPECT_EQ(std::this_thread::get_id(), caller);
    EXPECT_EQ(begin, 0);
    EXPECT_EQ(end, 10);
  });
  ThreadPool one(Threads(1));
  int64_t next = 0;
  one.ParallelFor(100, 10, [&](int64_t begin, int64_t end) {
    EXPECT_EQ(std::this_thread::get_id(), caller);
    EXPECT_EQ(begin, next);  // in order
    next = end;
  });
  EXPECT_EQ(next, 100);
}

TEST(ThreadPoolTest, ParallelForUsesTheWorkers) {
  // The first range waits until another thread has taken a range: only a worker can.
  ThreadPool pool(Threads(2));
  const std::thread::id caller = std::this_thread::get_id();
  absl::Mutex mu;
  bool worker_ran = false;
  bool waited = false;
  pool.ParallelFor(4, 1, [&](int64_t, int64_t) {
    absl::MutexLock lock(&mu);
    if (std::this_thread::get_id() != caller) {
      worker_ran = true;
    } else if (!waited) {
      waited = true;
      mu.AwaitWithTimeout(absl::Condition(&worker_ran), absl::Seconds(30));
    }
  });
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(worker_ran);
}

TEST(ThreadPoolTest, ConcurrentCallersEachGetTheirOwnRanges) {
  ThreadPool pool(Threads(3));
  constexpr int kCallers = 4;
  constexpr int kCalls = 50;
  std::vector<std::thread> callers;
  std::vector<int64_t> failures(kCallers, 0);
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&pool, &failures, c] {
      for (int call = 0; call < kCalls; ++call) {
        const int64_t n = 1000 + 37 * c + call;
        std::atomic<int64_t> sum{0};
        pool.ParallelFor(n, 64, [&](int64_t begin, int64_t end) {
          int64_t local = 0;
          for (int64_t i = begin; i < end; ++i) local += i;
          sum.fetch_add(local);
        });
        if (sum.load() != n * (n - 1) / 2) ++failures[c];
      }
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(failures, std::vector<int64_t>(kCallers, 0));
}

// ---------------------------------------------------------------------------------------------
// Optimizer::ForEachSegment, through an optimizer that records the segments it is given.

class SegmentRecorder final : public Optimizer {
 public:
  explicit SegmentRecorder(std::vector<int64_t> sizes) : Optimizer(std::move(sizes)) {}

  OptimizerOptions options() const override { return SgdOptions{}; }
  int64_t StateBytes() const override { return 0; }
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

TEST(ForEachSegmentTest, SegmentsCutEveryBlockAndAtTensorBoundaries) {
  constexpr int64_t kBlock = Optimizer::kBlockElements;
  SegmentRecorder recorder({kBlock + 5, 3, 2 * kBlock, 1});
  // Flat offsets: tensor 0 [0, B + 5), tensor 1 [B + 5, B + 8), tensor 2 [B + 8, 3B + 8),
  // tensor 3 [3B + 8, 3B + 9).
  struct Want {
    size_t tensor;
    int64_t begin;
    int64_t end;
  };
  const std::vector<Want> want = {
      {0, 0, kBlock},     {0, kBlock, kBlock + 5},         {1, 0, 3},
      {2, 0, kBlock - 8}, {2, kBlock - 8, 2 * kBlock - 8}, {2, 2 * kBlock - 8, 2 * kBlock},
      {3, 0, 1}};
  const auto& segments = recorder.segments();
  ASSERT_EQ(segments.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(segments[i].index, i);
    EXPECT_EQ(segments[i].tensor, want[i].tensor) << "segment " << i;
    EXPECT_EQ(segments[i].begin, want[i].begin) << "segment " << i;
    EXPECT_EQ(segments[i].end, want[i].end) << "segment " << i;
  }
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
