// optd_optimizer_bench: what one Optimizer::Step costs per parameter, beside its memory floor,
// measured side by side in one run (Google Benchmark).
//
// Every benchmark is one Step over one tensor of N float32 parameters, N in {1K, 1M, 10M}, with
// the optimizer's state warmed (kWarmupSteps steps before the first timed one). Each row reports
// per_param (seconds per parameter; the console prints e.g. "1.28ns") and bytes_per_second (the
// streams the kernel must move, 4 bytes each, over the time). One-thread rows are timed in the
// thread's CPU time, pool rows in wall time (".../real_time").
//
//   optd/<optimizer>/1t/N     Optimizer::Step with set_pool(nullptr): the calling thread only.
//   optd/<optimizer>/pool/N   Optimizer::Step on ThreadPool::Default(), for N >= 256K (smaller
//                             steps run inline on the calling thread: the 1t row).
//   floor/<optimizer>/1t/N    The memory floor: a plain streaming loop that reads and writes as
//                             many arrays, in as many passes, as the optimizer must (Adam: read
//                             p, g, m, v and write p, m, v = 7 streams in one pass), cut in the
//                             same 64K-element blocks.
//   floor/<optimizer>/pool/N  The same floor, its blocks split on the same pool as Step's.
//
// Optimizers (default options unless noted; streams = arrays read + written per element, over all
// passes): sgd (lr 0.01; 3), sgd_momentum (momentum 0.9; 5), adam (7), adam_amsgrad (9), adamw
// (7), adagrad (5), normalized_gd (norm pass + update; 4), adadelta (7), rmsprop (5), nadam (7),
// radam (7), lion (5), lamb (moments and norms pass + update pass; 10), lars (norms pass + update;
// 7); the learning-rate-free ones, whose first pass also folds the global sums: prodigy (13),
// dadapt_adam (11), dadapt_sgd (9), dog (sums pass + update; 6), schedulefree_adamw (7),
// schedulefree_sgd (5), adafactor (vector: 8), muon (a vector takes its AdamW: 7).
//
//   ns/muon/RxC      Muon's float32 Newton-Schulz (5 steps) of one R x C matrix, one thread, beside
//   gemm/eigen/RxC   the same 15 matrix products done by Eigen alone (its GEMM floor).
//
// Rows are registered, so run, in the order optd 1t, floor 1t, optd pool, floor pool for each
// optimizer and size: a ratio optd / floor compares neighbours. bench/run_optimizer_bench.py runs
// this with torch.optim beside it (bench/torch_optim_bench.py) and prints the README table.
//
// Usage: optd_optimizer_bench [--benchmark_filter=adam/] [--benchmark_min_time=0.2]
//                             [--benchmark_format=json] ...  (any Google Benchmark flag)
// Not a test: never registered with ctest.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "Eigen/Core"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/thread_pool.h"
#include "benchmark/benchmark.h"
#include "server/optim/kernel_internal.h"
#include "server/optim/muon.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {
namespace {

constexpr int64_t kSizes[] = {1000, 1000 * 1000, 10 * 1000 * 1000};

// Steps before timing: allocates and touches the state, and takes RAdam past its first five
// (unrectified) steps, as a long-running session is.
constexpr int kWarmupSteps = 6;

// Timed steps between two (untimed) flips of the gradient's sign; see FlipGradient.
constexpr int64_t kFlipEvery = 256;

// One pass of a floor: `read_write` arrays read and written in place, `read_only` arrays read.
// A pass that writes nothing is a reduction (a norm pass).
struct Pass {
  int read_write;
  int read_only;
};

struct Variant {
  const char* name;
  OptimizerOptions options;
  double lr;
  std::vector<Pass> floor;  // the passes over memory the optimizer cannot avoid
};

std::vector<Variant> Variants() {
  // The benchmark's gradient is constant (up to the sign flips): a linear objective, on which the
  // learning-rate-free estimates grow without bound and reach inf within the steps a row takes.
  // D-Adaptation keeps d at d0 (growth_rate 1) and DoG takes small steps (lr 1e-3): the same
  // arithmetic on finite values.
  DAdaptAdamOptions dadapt_adam;
  dadapt_adam.growth_rate = 1.0;
  DAdaptSgdOptions dadapt_sgd;
  dadapt_sgd.growth_rate = 1.0;
  DogOptions dog;
  dog.lr = 1e-3;
  SgdOptions sgd;
  sgd.lr = 0.01;
  SgdOptions sgd_momentum = sgd;
  sgd_momentum.momentum = 0.9;
  AdamOptions adam_amsgrad;
  adam_amsgrad.amsgrad = true;
  return {
      {"sgd", sgd, 0.01, {{1, 1}}},                                      // p += -lr g
      {"sgd_momentum", sgd_momentum, 0.01, {{2, 1}}},                    // p, buf; g
      {"adam", AdamOptions(), 1e-3, {{3, 1}}},                           // p, m, v; g
      {"adam_amsgrad", adam_amsgrad, 1e-3, {{4, 1}}},                    // p, m, v, vmax; g
      {"adamw", AdamWOptions(), 1e-3, {{3, 1}}},                         // p, m, v; g
      {"adagrad", AdagradOptions(), 1e-2, {{2, 1}}},                     // p, sum; g
      {"normalized_gd", NormalizedGdOptions(), 1e-2, {{0, 1}, {1, 1}}},  // |g|; then p; g
      {"adadelta", AdadeltaOptions(), 1.0, {{3, 1}}},   // p, square_avg, acc_delta; g
      {"rmsprop", RmspropOptions(), 1e-2, {{2, 1}}},    // p, square_avg; g
      {"nadam", NadamOptions(), 2e-3, {{3, 1}}},        // p, m, v; g
      {"radam", RadamOptions(), 1e-3, {{3, 1}}},        // p, m, v; g
      {"lion", LionOptions(), 1e-4, {{2, 1}}},          // p, m; g
      {"lamb", LambOptions(), 1e-3, {{2, 2}, {1, 2}}},  // m, v; p, g (+norms); then p; m, v
      {"lars", LarsOptions(), 1.0, {{0, 2}, {2, 1}}},   // |p|, |g|; then p, buf; g
      // m, v, s; p, g, p0 (and the sums); then p; m, v
      {"prodigy", ProdigyOptions(), 1.0, {{3, 3}, {1, 2}}},
      {"dadapt_adam", dadapt_adam, 1.0, {{3, 1}, {1, 2}}},  // m, v, s; g; then p; m, v
      {"dadapt_sgd", dadapt_sgd, 1.0, {{1, 1}, {2, 2}}},    // s; g; then p, z; x0, s
      {"dog", dog, 1e-3, {{0, 3}, {1, 1}}},                 // |g|, |p - x0|; then p; g
      {"schedulefree_adamw", ScheduleFreeAdamWOptions(), 2.5e-3, {{3, 1}}},  // y, z, v; g
      {"schedulefree_sgd", ScheduleFreeSgdOptions(), 1.0, {{2, 1}}},         // y, z; g
      {"adafactor", AdafactorOptions(), 1e-2, {{1, 2}, {1, 2}}},  // V; p, g; then p; g, V
      {"muon", MuonOptions(), 0.02, {{3, 1}}},                    // a vector: AdamW's p, m, v; g
  };
}

int Streams(const std::vector<Pass>& passes) {
  int streams = 0;
  for (const Pass& pass : passes) streams += 2 * pass.read_write + pass.read_only;
  return streams;
}

// Deterministic values in [lo, hi), never 0 for a range that excludes it.
std::vector<float> Fill(int64_t n, uint32_t seed, float lo, float hi) {
  std::vector<float> x(static_cast<size_t>(n));
  uint32_t s = seed * 2654435761u + 1;
  for (float& xi : x) {
    s = s * 1664525u + 1013904223u;
    xi = lo + (hi - lo) * static_cast<float>(s >> 8) * (1.0f / 16777216.0f);
  }
  return x;
}

// ---- The floor: the simplest loop that moves the same bytes.

// Each written array gets the mean of everything the element reads: no constant folding, values
// settle (read-only arrays keep them non-zero, so no denormals), and the loop vectorises.
template <int kReadWrite, int kReadOnly>
OPTD_SIMD_CLONES  // as the kernels: both sides run at the same SIMD width
    void
    StreamKernel(float* __restrict a0, float* __restrict a1, float* __restrict a2,
                 float* __restrict a3, const float* __restrict b0, const float* __restrict b1,
                 const float* __restrict b2, int64_t n) {
  constexpr float kScale = 1.0f / (kReadWrite + kReadOnly);
  for (int64_t i = 0; i < n; ++i) {
    float s = 0.0f;
    if constexpr (kReadWrite > 0) s += a0[i];
    if constexpr (kReadWrite > 1) s += a1[i];
    if constexpr (kReadWrite > 2) s += a2[i];
    if constexpr (kReadWrite > 3) s += a3[i];
    if constexpr (kReadOnly > 0) s += b0[i];
    if constexpr (kReadOnly > 1) s += b1[i];
    if constexpr (kReadOnly > 2) s += b2[i];
    s *= kScale;
    if constexpr (kReadWrite > 0) a0[i] = s;
    if constexpr (kReadWrite > 1) a1[i] = s;
    if constexpr (kReadWrite > 2) a2[i] = s;
    if constexpr (kReadWrite > 3) a3[i] = s;
  }
}

// A reduction pass: the sum of the read-only arrays, in 16 float lanes (one 512-bit vector, or
// four 128-bit ones: vectorises without reassociating).
template <int kReadOnly>
OPTD_SIMD_CLONES float SumKernel(const float* __restrict b0, const float* __restrict b1,
                                 const float* __restrict b2, int64_t n) {
  constexpr int kLanes = 16;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      acc[j] += b0[i + j];
      if constexpr (kReadOnly > 1) acc[j] += b1[i + j];
      if constexpr (kReadOnly > 2) acc[j] += b2[i + j];
    }
  }
  float sum = 0.0f;
  for (int j = 0; j < kLanes; ++j) sum += acc[j];
  for (; i < n; ++i) {
    sum += b0[i];
    if constexpr (kReadOnly > 1) sum += b1[i];
    if constexpr (kReadOnly > 2) sum += b2[i];
  }
  return sum;
}

// Runs one pass over elements [begin, end) of `arrays`: the first pass.read_write are written.
float RunPass(const Pass& pass, std::vector<std::vector<float>>& arrays, int64_t begin,
              int64_t end) {
  float* a[4] = {};
  const float* b[3] = {};
  for (int k = 0; k < pass.read_write; ++k) a[k] = arrays[k].data() + begin;
  for (int k = 0; k < pass.read_only; ++k) b[k] = arrays[pass.read_write + k].data() + begin;
  const int64_t n = end - begin;
  const int key = 10 * pass.read_write + pass.read_only;
  switch (key) {
    case 1:
      return SumKernel<1>(b[0], b[1], b[2], n);
    case 2:
      return SumKernel<2>(b[0], b[1], b[2], n);
    case 3:
      return SumKernel<3>(b[0], b[1], b[2], n);
    case 11:
      StreamKernel<1, 1>(a[0], a[1], a[2], a[3], b[0], b[1], b[2], n);
      return 0;
    case 12:
      StreamKernel<1, 2>(a[0], a[1], a[2], a[3], b[0], b[1], b[2], n);
      return 0;
    case 21:
      StreamKernel<2, 1>(a[0], a[1], a[2], a[3], b[0], b[1], b[2], n);
      return 0;
    case 22:
      StreamKernel<2, 2>(a[0], a[1], a[2], a[3], b[0], b[1], b[2], n);
      return 0;
    case 31:
      StreamKernel<3, 1>(a[0], a[1], a[2], a[3], b[0], b[1], b[2], n);
      return 0;
    case 33:
      StreamKernel<3, 3>(a[0], a[1], a[2], a[3], b[0], b[1], b[2], n);
      return 0;
    case 41:
      StreamKernel<4, 1>(a[0], a[1], a[2], a[3], b[0], b[1], b[2], n);
      return 0;
  }
  std::fprintf(stderr, "optimizer_bench: no floor kernel for pass %d\n", key);
  std::abort();
}

// The floor's arrays, and one step: every pass in turn, each cut in kBlockElements blocks that
// run on `pool` exactly when Optimizer::Step's would (>= kParallelMinElements, > 1 thread).
struct FloorFixture {
  std::vector<Pass> passes;
  std::vector<std::vector<float>> arrays;
  std::vector<float> partials;  // one per block, as Optimizer::SumPerTensor keeps

  FloorFixture(const std::vector<Pass>& floor, int64_t n) : passes(floor) {
    size_t count = 0;
    for (const Pass& pass : passes) {
      count = std::max(count, static_cast<size_t>(pass.read_write + pass.read_only));
    }
    for (size_t k = 0; k < count; ++k) arrays.push_back(Fill(n, 100 + k, 0.5f, 1.5f));
    partials.resize(
        static_cast<size_t>((n + Optimizer::kBlockElements - 1) / Optimizer::kBlockElements));
  }

  int64_t size() const { return static_cast<int64_t>(arrays[0].size()); }

  float Step(ThreadPool* pool) {
    const int64_t n = size();
    const int64_t block = Optimizer::kBlockElements;
    const bool parallel =
        pool != nullptr && pool->num_threads() > 1 && n >= Optimizer::kParallelMinElements;
    float result = 0;
    for (const Pass& pass : passes) {
      auto run = [&](int64_t begin, int64_t end) {
        partials[static_cast<size_t>(begin / block)] = RunPass(pass, arrays, begin, end);
      };
      if (parallel) {
        pool->ParallelFor(n, block, run);
      } else {
        for (int64_t begin = 0; begin < n; begin += block) run(begin, std::min(n, begin + block));
      }
      if (pass.read_write == 0) {
        for (float p : partials) result += p;
      }
    }
    return result;
  }
};

// ---- The optimizer under test.

struct OptimizerFixture {
  std::unique_ptr<Optimizer> optimizer;
  std::vector<float> param;
  std::vector<float> grad;
  double lr;

  OptimizerFixture(const Variant& variant, int64_t n)
      : param(Fill(n, 1, -1.0f, 1.0f)), grad(Fill(n, 2, 0.01f, 1.0f)), lr(variant.lr) {
    absl::StatusOr<std::unique_ptr<Optimizer>> created =
        CreateOptimizer(variant.options, {n}, /*pool=*/nullptr);
    if (!created.ok()) {
      std::fprintf(stderr, "optimizer_bench: %s: %s\n", variant.name,
                   std::string(created.status().message()).c_str());
      std::abort();
    }
    optimizer = *std::move(created);
    // Alternate the gradient's signs so that no parameter runs away over many steps.
    for (size_t i = 1; i < grad.size(); i += 2) grad[i] = -grad[i];
    for (int k = 0; k < kWarmupSteps; ++k) Step();
  }

  // A constant gradient makes the trust-ratio optimizers (LAMB, LARS) grow the parameters
  // geometrically, to inf within the steps a 1K row takes: the rows turn it around now and then.
  void FlipGradient() {
    for (float& gi : grad) gi = -gi;
  }

  void Step() {
    const TensorGrad tensor{absl::MakeSpan(param), absl::MakeConstSpan(grad), {}, 0};
    absl::Status status = optimizer->Step(absl::MakeConstSpan(&tensor, 1), lr);
    if (!status.ok()) {
      std::fprintf(stderr, "optimizer_bench: Step: %s\n", std::string(status.message()).c_str());
      std::abort();
    }
  }
};

// Fixtures are reused by the rows of one optimizer and size (1t, then pool): 10M-element arrays
// take longer to allocate and warm than to time. One of each kind is alive at a time.
template <typename Fixture, typename Make>
Fixture& Cached(std::unique_ptr<Fixture>& slot, std::string& slot_key, const std::string& key,
                Make make) {
  if (slot == nullptr || slot_key != key) {
    slot.reset();  // free the old arrays before allocating the new ones
    slot = make();
    slot_key = key;
  }
  return *slot;
}

std::unique_ptr<OptimizerFixture> optimizer_slot;
std::string optimizer_key;
std::unique_ptr<FloorFixture> floor_slot;
std::string floor_key;

void SetCounters(benchmark::State& state, int64_t n, int streams, int threads) {
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * streams * static_cast<int64_t>(sizeof(float)));
  state.counters["per_param"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate |
                                                     benchmark::Counter::kInvert);
  state.counters["streams"] = streams;
  state.counters["threads"] = threads;
}

int ThreadsUsed(ThreadPool* pool, int64_t n) {
  return pool != nullptr && n >= Optimizer::kParallelMinElements ? pool->num_threads() : 1;
}

void BM_Optimizer(benchmark::State& state, const Variant& variant, bool use_pool) {
  const int64_t n = state.range(0);
  OptimizerFixture& f =
      Cached(optimizer_slot, optimizer_key, std::string(variant.name) + "/" + std::to_string(n),
             [&] { return std::make_unique<OptimizerFixture>(variant, n); });
  ThreadPool* pool = use_pool ? ThreadPool::Default() : nullptr;
  f.optimizer->set_pool(pool);
  f.Step();  // untimed: brings this row's data into whatever cache it fits
  int64_t steps = 0;
  for (auto _ : state) {
    f.Step();
    benchmark::DoNotOptimize(f.param.data());
    benchmark::ClobberMemory();
    if (++steps % kFlipEvery == 0) {
      state.PauseTiming();
      f.FlipGradient();
      state.ResumeTiming();
    }
  }
  SetCounters(state, n, Streams(variant.floor), ThreadsUsed(pool, n));
  if (!std::all_of(f.param.begin(), f.param.end(), [](float x) { return std::isfinite(x); })) {
    state.SkipWithError("parameters are no longer finite: the row timed inf/NaN arithmetic");
  }
}

void BM_Floor(benchmark::State& state, const Variant& variant, bool use_pool) {
  const int64_t n = state.range(0);
  FloorFixture& f =
      Cached(floor_slot, floor_key, std::string(variant.name) + "/" + std::to_string(n),
             [&] { return std::make_unique<FloorFixture>(variant.floor, n); });
  ThreadPool* pool = use_pool ? ThreadPool::Default() : nullptr;
  f.Step(pool);
  for (auto _ : state) {
    benchmark::DoNotOptimize(f.Step(pool));
    benchmark::ClobberMemory();
  }
  SetCounters(state, n, Streams(variant.floor), ThreadsUsed(pool, n));
}

// Muon's Newton-Schulz of one rows x cols matrix (5 steps), one thread.
void BM_NewtonSchulz(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const std::vector<float> u = Fill(rows * cols, 3, -1.0f, 1.0f);
  std::vector<float> x(u.size());
  for (auto _ : state) {
    std::copy(u.begin(), u.end(), x.begin());
    Muon::NewtonSchulz(x.data(), rows, cols, 5);
    benchmark::DoNotOptimize(x.data());
  }
  state.counters["flops"] = benchmark::Counter(
      5.0 * 2.0 *
          (2.0 * std::min(rows, cols) * std::min(rows, cols) * std::max(rows, cols) +
           std::pow(static_cast<double>(std::min(rows, cols)), 3)),
      benchmark::Counter::kIsIterationInvariantRate);
}

// The 15 matrix products of 5 Newton-Schulz steps, done by Eigen alone: X X^T, A A, B X with
// X of min x max (the floor of BM_NewtonSchulz: no scaling, no transposes, no allocation).
void BM_EigenProducts(benchmark::State& state) {
  using M = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int64_t small = std::min(state.range(0), state.range(1));
  const int64_t large = std::max(state.range(0), state.range(1));
  const std::vector<float> u = Fill(small * large, 3, -0.01f, 0.01f);
  M x = Eigen::Map<const M>(u.data(), small, large);
  M a(small, small), b(small, small), bx(small, large);
  for (auto _ : state) {
    for (int s = 0; s < 5; ++s) {
      a.noalias() = x * x.transpose();
      b.noalias() = a * a;
      bx.noalias() = b * x;
    }
    benchmark::DoNotOptimize(bx.data());
  }
  state.counters["flops"] = benchmark::Counter(
      5.0 * 2.0 * (2.0 * small * small * large + std::pow(static_cast<double>(small), 3)),
      benchmark::Counter::kIsIterationInvariantRate);
}

void RegisterAll() {
  static const std::vector<Variant>* const variants = new std::vector<Variant>(Variants());
  for (const Variant& v : *variants) {
    for (const int64_t n : kSizes) {
      const std::string name = v.name;
      for (const bool use_pool : {false, true}) {
        if (use_pool && n < Optimizer::kParallelMinElements) continue;  // Step runs inline
        const char* mode = use_pool ? "/pool" : "/1t";
        for (benchmark::internal::Benchmark* b :
             {benchmark::RegisterBenchmark(("optd/" + name + mode).c_str(), BM_Optimizer, v,
                                           use_pool),
              benchmark::RegisterBenchmark(("floor/" + name + mode).c_str(), BM_Floor, v,
                                           use_pool)}) {
          b->Arg(n)->Unit(benchmark::kMicrosecond);
          // One thread: the thread's CPU time, which a shared machine's other tenants do not
          // inflate by descheduling it. The pool: wall time, the only time that sees the workers.
          if (use_pool) b->UseRealTime();
        }
      }
    }
  }
  for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{
           {256, 256}, {1024, 1024}, {4096, 1024}, {1024, 4096}}) {
    const std::string shape = std::to_string(rows) + "x" + std::to_string(cols);
    benchmark::RegisterBenchmark(("ns/muon/" + shape).c_str(), BM_NewtonSchulz)
        ->Args({rows, cols})
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("gemm/eigen/" + shape).c_str(), BM_EigenProducts)
        ->Args({rows, cols})
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::AddCustomContext("optd_pool_threads",
                              std::to_string(ThreadPool::Default()->num_threads()));
  benchmark::AddCustomContext("optd_simd", SimdLevel());
}

}  // namespace
}  // namespace optd

int main(int argc, char** argv) {
  optd::RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
