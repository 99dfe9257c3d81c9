#include "base/thread_pool.h"

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

}  // namespace
}  // namespace optd
