#include "base/thread_pool.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <thread>

#include "absl/synchronization/mutex.h"

namespace optd {
namespace {

int ResolveNumThreads(int num_threads) {
  if (num_threads > 0) return num_threads;
  const int hardware = static_cast<int>(std::thread::hardware_concurrency());
  return std::clamp(hardware, 1, ThreadPoolOptions::kMaxDefaultThreads);
}

}  // namespace

ThreadPool::ThreadPool(const ThreadPoolOptions& options) {
  const int num_threads = ResolveNumThreads(options.num_threads);
  workers_.reserve(num_threads - 1);
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& worker : workers_) worker.join();
}

ThreadPool* ThreadPool::Default() {
  static ThreadPool* const pool = new ThreadPool(ThreadPoolOptions());
  return pool;
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t begin, int64_t end)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t num_ranges = (n - 1) / grain + 1;
  if (num_ranges == 1 || workers_.empty()) {
    for (int64_t begin = 0; begin < n; begin += grain) fn(begin, std::min(n, begin + grain));
    return;
  }

  Job job;
  job.fn = &fn;
  job.n = n;
  job.grain = grain;
  job.num_ranges = num_ranges;
  job.unfinished = num_ranges;
  absl::MutexLock lock(&mu_);
  jobs_.push_back(&job);
  // The caller works on its own job until every range is handed out, then waits for the ranges
  // the workers still run. The job must not be destroyed before they count themselves finished.
  while (job.next < job.num_ranges) RunRange(&job, ClaimRange(&job));
  mu_.Await(absl::Condition(
      +[](Job* j) { return j->unfinished == 0; }, &job));
}

int64_t ThreadPool::ClaimRange(Job* job) {
  const int64_t k = job->next++;
  if (job->next == job->num_ranges) {
    // Usually at the front; a caller may have finished handing out its own job behind another.
    jobs_.erase(std::find(jobs_.begin(), jobs_.end(), job));
  }
  return k;
}

void ThreadPool::RunRange(Job* job, int64_t k) {
  const int64_t begin = k * job->grain;
  const int64_t end = std::min(job->n, begin + job->grain);
  mu_.Unlock();
  (*job->fn)(begin, end);
  mu_.Lock();
  --job->unfinished;  // after this the job's caller may return and destroy it
}

void ThreadPool::WorkerLoop() {
  absl::MutexLock lock(&mu_);
  while (true) {
    mu_.Await(absl::Condition(this, &ThreadPool::HasWorkOrStopping));
    if (jobs_.empty()) return;  // stopping, and nothing left to do
    Job* job = jobs_.front();
    RunRange(job, ClaimRange(job));
  }
}

}  // namespace optd
