// File: fake_clock.h
//
// FakeClock: a Clock (clock.h) for tests. Its time stands still until Advance() or SetTime()
// moves it; then every AwaitWithDeadline whose deadline has been reached wakes up, as it would
// have on the real clock. A test that checks a SYNC barrier's 30 s deadline advances the clock
// by 30 s instead of sleeping, and waits only for the work the deadline sets off.
//
// Thread safety: thread-safe. Advance() must not be called with a mutex held that a waiter of
// this clock waits on (it briefly takes each waiter's mutex to wake it).

#ifndef OPTD_BASE_FAKE_CLOCK_H_
#define OPTD_BASE_FAKE_CLOCK_H_

#include <atomic>
#include <cstdint>
#include <map>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/clock.h"

namespace optd {

class FakeClock final : public Clock {
 public:
  // The clock starts at `start` (by default a fixed, arbitrary moment: tests do not depend on the
  // date they run).
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'000'000'000));

  absl::Time Now() const override;

  // Moves the clock forward by `d` (>= 0) and wakes the waiters whose deadline has come.
  void Advance(absl::Duration d);

  // Sets the clock to `t` (not before Now()) and wakes the waiters whose deadline has come.
  void SetTime(absl::Time t);

  bool AwaitWithDeadline(absl::Mutex* mu, const absl::Condition& condition,
                         absl::Time deadline) override;

  // Blocks until at least `n` threads wait in AwaitWithDeadline (for a test that must know a
  // deadline is being waited for before it advances past it).
  void BlockUntilWaiters(int n) const;

 private:
  std::atomic<int64_t> now_ns_;  // since the Unix epoch; read inside waiters' conditions
  mutable absl::Mutex mu_;
  // The mutexes threads wait on, with how many wait on each.
  std::map<absl::Mutex*, int> waiters_ ABSL_GUARDED_BY(mu_);
  int num_waiters_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace optd

#endif  // OPTD_BASE_FAKE_CLOCK_H_
