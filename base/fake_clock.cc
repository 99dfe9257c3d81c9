#include "base/fake_clock.h"

#include <vector>

namespace optd {

FakeClock::FakeClock(absl::Time start) : now_ns_(absl::ToUnixNanos(start)) {}

absl::Time FakeClock::Now() const { return absl::FromUnixNanos(now_ns_.load()); }

void FakeClock::Advance(absl::Duration d) { SetTime(Now() + d); }

void FakeClock::SetTime(absl::Time t) {
  std::vector<absl::Mutex*> waiting;
  {
    absl::MutexLock lock(&mu_);
    if (t > Now()) now_ns_.store(absl::ToUnixNanos(t));
    for (const auto& [waiter, count] : waiters_) waiting.push_back(waiter);
  }
  // absl::Mutex re-evaluates the conditions of its waiters whenever it is released: taking and
  // releasing each waiter's mutex makes it see the new time. A mutex another thread holds will be
  // released by that thread, which re-evaluates them then: never block on it (the proto_convert
  // fuzzer once waited here 37 s, behind a holder that was itself waiting).
  for (absl::Mutex* waiter : waiting) {
    if (waiter->TryLock()) waiter->Unlock();
  }
}

bool FakeClock::AwaitWithDeadline(absl::Mutex* mu, const absl::Condition& condition,
                                  absl::Time deadline) {
  {
    absl::MutexLock lock(&mu_);
    ++waiters_[mu];
    ++num_waiters_;
  }
  const int64_t deadline_ns =
      deadline == absl::InfiniteFuture() ? INT64_MAX : absl::ToUnixNanos(deadline);
  struct Wait {
    const absl::Condition* condition;
    const std::atomic<int64_t>* now_ns;
    int64_t deadline_ns;
    bool Done() const { return condition->Eval() || now_ns->load() >= deadline_ns; }
  } wait{&condition, &now_ns_, deadline_ns};
  mu->Await(absl::Condition(&wait, &Wait::Done));
  const bool holds = condition.Eval();
  {
    absl::MutexLock lock(&mu_);
    if (--waiters_[mu] == 0) waiters_.erase(mu);
    --num_waiters_;
  }
  return holds;
}

void FakeClock::BlockUntilWaiters(int n) const {
  absl::MutexLock lock(&mu_);
  auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return num_waiters_ >= n; };
  mu_.Await(absl::Condition(&enough));
}

}  // namespace optd
