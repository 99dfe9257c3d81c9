#include "server/session/deadline_scheduler.h"

namespace optd {

DeadlineScheduler::DeadlineScheduler(Clock* clock) : clock_(clock), thread_([this] { Run(); }) {}

DeadlineScheduler::~DeadlineScheduler() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void DeadlineScheduler::Schedule(absl::Time deadline, std::function<void()> callback) {
  absl::MutexLock lock(&mu_);
  pending_.emplace(std::make_pair(deadline, next_id_++), std::move(callback));
}

int DeadlineScheduler::pending() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(pending_.size());
}

void DeadlineScheduler::Run() {
  mu_.Lock();
  while (true) {
    // Wake for a new earliest deadline, for stopping, or at the earliest deadline.
    const auto first = pending_.empty() ? absl::InfiniteFuture() : pending_.begin()->first.first;
    auto changed = [this, first]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stopping_ || (!pending_.empty() && pending_.begin()->first.first < first);
    };
    clock_->AwaitWithDeadline(&mu_, absl::Condition(&changed), first);
    if (stopping_) break;
    if (pending_.empty() || pending_.begin()->first.first > clock_->Now()) continue;
    std::function<void()> callback = std::move(pending_.begin()->second);
    pending_.erase(pending_.begin());
    mu_.Unlock();
    callback();
    mu_.Lock();
  }
  mu_.Unlock();
}

}  // namespace optd
