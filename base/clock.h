// File: clock.h
//
// Clock: where optd reads the time and waits for a deadline, so that tests can move time by hand
// instead of sleeping. Clock::Real() is the system clock (absl::Now) and is what the server uses;
// FakeClock (fake_clock.h) is a clock that stands still until a test advances it.
//
// Who uses it: DeadlineScheduler (SYNC barrier deadlines), sessions (barrier wait times,
// creation times), the metrics' sampling policy, and later timers (checkpoint interval, idle
// sessions). Anything that asks "what time is it" or "wake me at T" takes a Clock* instead of
// calling absl::Now().
//
// Thread safety: implementations are thread-safe; Clock::Real() lives for the whole process.

#ifndef OPTD_BASE_CLOCK_H_
#define OPTD_BASE_CLOCK_H_

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace optd {

class Clock {
 public:
  virtual ~Clock() = default;

  // The process-wide system clock. Never null, never destroyed.
  static Clock* Real();

  virtual absl::Time Now() const = 0;

  // As absl::Mutex::AwaitWithDeadline: `*mu` is held on entry and on return; it is released while
  // waiting until `condition` holds or this clock reaches `deadline`. Returns whether `condition`
  // holds. `condition` is evaluated with `*mu` held and must not block.
  virtual bool AwaitWithDeadline(absl::Mutex* mu, const absl::Condition& condition,
                                 absl::Time deadline) = 0;
};

}  // namespace optd

#endif  // OPTD_BASE_CLOCK_H_
