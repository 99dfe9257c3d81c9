// File: norms_sampling.h
//
// NormsSampling: the policy that decides which steps measure their update and parameter norms
// (optd_update_norm, optd_parameter_norm, optd_update_ratio). Measuring costs a step a copy of the
// parameters it updates, so sessions of up to Options::every_step_max_parameters parameters
// measure every step, and larger ones at most once per Options::interval; the gauges keep the last
// measured value in between.
//
// Who uses it: PrometheusSessionObserver::WantsStepNorms, which keeps one timestamp per series.
// Thread-safe: Take may race on one timestamp; exactly one of the racers wins an interval.

#ifndef OPTD_SERVER_METRICS_NORMS_SAMPLING_H_
#define OPTD_SERVER_METRICS_NORMS_SAMPLING_H_

#include <atomic>
#include <cstdint>

#include "absl/time/time.h"
#include "base/clock.h"

namespace optd {

struct NormsSamplingOptions {
  int64_t every_step_max_parameters = 256 * 1024;
  absl::Duration interval = absl::Milliseconds(250);
};

class NormsSampling {
 public:
  // `clock` must outlive this object.
  explicit NormsSampling(NormsSamplingOptions options = {}, Clock* clock = Clock::Real())
      : options_(options), clock_(clock) {}

  // Whether a step of a session with `num_parameters` parameters, last measured at
  // `*last_measured_ns` (Unix nanoseconds; 0 for never), measures its norms; when it does, the
  // time is recorded there.
  bool Take(std::atomic<int64_t>* last_measured_ns, int64_t num_parameters) const {
    if (num_parameters <= options_.every_step_max_parameters) return true;
    const int64_t now = absl::ToUnixNanos(clock_->Now());
    int64_t last = last_measured_ns->load(std::memory_order_relaxed);
    if (last != 0 && now - last < absl::ToInt64Nanoseconds(options_.interval)) return false;
    return last_measured_ns->compare_exchange_strong(last, now, std::memory_order_relaxed);
  }

 private:
  const NormsSamplingOptions options_;
  Clock* const clock_;
};

}  // namespace optd

#endif  // OPTD_SERVER_METRICS_NORMS_SAMPLING_H_
