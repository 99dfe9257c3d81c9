// File: deadline_scheduler.h
//
// DeadlineScheduler: runs callbacks at (or soon after) their deadlines on one background thread,
// by a Clock (base/clock.h): the real one in the server, a FakeClock in tests, which then advance
// time instead of sleeping. Sessions use it for SYNC barrier deadlines, so that no gRPC thread
// ever waits for a barrier.
//
// Thread safety: Schedule may be called from any thread, including from a callback. Callbacks run
// one at a time on the scheduler's thread, without any lock of the scheduler held; a callback must
// not block for long. The destructor stops the thread; callbacks still pending are dropped.

#ifndef OPTD_SERVER_SESSION_DEADLINE_SCHEDULER_H_
#define OPTD_SERVER_SESSION_DEADLINE_SCHEDULER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/clock.h"

namespace optd {

class DeadlineScheduler {
 public:
  // `clock` must outlive the scheduler.
  explicit DeadlineScheduler(Clock* clock = Clock::Real());
  ~DeadlineScheduler();
  DeadlineScheduler(const DeadlineScheduler&) = delete;
  DeadlineScheduler& operator=(const DeadlineScheduler&) = delete;

  // Runs `callback` on the scheduler thread once the clock has reached `deadline`.
  void Schedule(absl::Time deadline, std::function<void()> callback);

  // Callbacks scheduled and not yet run.
  int pending() const;

 private:
  void Run();

  Clock* const clock_;
  mutable absl::Mutex mu_;
  // Ordered by deadline; the counter keeps equal deadlines in scheduling order.
  std::map<std::pair<absl::Time, int64_t>, std::function<void()>> pending_ ABSL_GUARDED_BY(mu_);
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // started last, joined first
};

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_DEADLINE_SCHEDULER_H_
