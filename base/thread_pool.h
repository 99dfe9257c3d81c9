// File: thread_pool.h
//
// ThreadPool: a small fixed-size pool of worker threads on which the optimizer kernels run the
// element loops of large steps, and its ParallelFor. No work stealing, no futures: a ParallelFor
// cuts [0, n) into fixed ranges, the calling thread and the workers take ranges one at a time
// until none is left, and the call returns when every range has returned.
//
// The ranges depend only on n and grain, never on the number of threads or on timing, so a
// reduction that keeps one partial result per range and combines them in range order gives the
// same bits whatever the pool size.
//
// Who uses it: Optimizer (optimizer.h), through ThreadPool::Default() unless told otherwise, and
// tests. Thread-safe: any number of threads may call ParallelFor on one pool at once (each call
// waits only for its own ranges; a caller works on its own ranges while it waits).

#ifndef OPTD_BASE_THREAD_POOL_H_
#define OPTD_BASE_THREAD_POOL_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace optd {

struct ThreadPoolOptions {
  // The default size's cap: more threads than this only add contention on memory-bound loops.
  static constexpr int kMaxDefaultThreads = 8;

  // Threads that run a ParallelFor, counting the thread that calls it: the pool starts
  // num_threads - 1 workers, and 1 runs everything inline. 0 (or less) picks
  // std::thread::hardware_concurrency(), capped at kMaxDefaultThreads (1 if unknown).
  int num_threads = 0;
};

class ThreadPool {
 public:
  // Starts the workers.
  explicit ThreadPool(const ThreadPoolOptions& options = ThreadPoolOptions());

  // Stops and joins the workers. REQUIRES: no ParallelFor on this pool is running.
  ~ThreadPool();

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // The process-wide pool shared by every optimizer that is not given another: default
  // ThreadPoolOptions, created on first use, never destroyed.
  static ThreadPool* Default();

  // Threads that run a ParallelFor, counting the caller (>= 1).
  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) once for each range [k * grain, min(n, (k + 1) * grain)), k = 0, 1, ...:
  // the ranges cover [0, n) exactly once. They run on the calling thread and the workers,
  // concurrently and in any order; ParallelFor returns when all have returned. Runs them inline,
  // in order, when n <= grain (one range) or the pool has one thread. Does nothing if n <= 0.
  //
  // REQUIRES: grain >= 1. fn must not call ParallelFor, and must not block on other work.
  void ParallelFor(int64_t n, int64_t grain,
                   const std::function<void(int64_t begin, int64_t end)>& fn);

 private:
  // One ParallelFor call; lives on its caller's stack. next and unfinished are guarded by mu_.
  struct Job {
    const std::function<void(int64_t, int64_t)>* fn;
    int64_t n;
    int64_t grain;
    int64_t num_ranges;
    int64_t next = 0;    // the next range to hand out
    int64_t unfinished;  // ranges not yet returned (handed out or not)
  };

  // Takes the next range of `job`, taking the job off the queue with its last range.
  // REQUIRES: job->next < job->num_ranges.
  int64_t ClaimRange(Job* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Runs range k of `job` without the lock, then counts it as finished.
  void RunRange(Job* job, int64_t k) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  void WorkerLoop();

  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !jobs_.empty() || stopping_;
  }

  absl::Mutex mu_;
  std::deque<Job*> jobs_ ABSL_GUARDED_BY(mu_);  // jobs with ranges not yet handed out, FIFO
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace optd

#endif  // OPTD_BASE_THREAD_POOL_H_
