// File: update_norm_meter.h
//
// UpdateNormMeter: a StepProbe (step_probe.h) that measures one step's update norm (L2 of the
// parameter change over all tensors) and parameter norm (L2 of the parameters after the step), as
// a by-product of the update pass: each segment's parameters are copied while cache-hot just
// before the kernel runs on them, then compared after. Partial sums are kept per segment and
// added in segment order, so the result is the same bits whatever the pool size.
//
// Who uses it: the session, on the steps the metrics' sampling policy asks to measure; tests.
// One meter per step: not thread-safe beyond what StepProbe promises.

#ifndef OPTD_SERVER_OPTIM_UPDATE_NORM_METER_H_
#define OPTD_SERVER_OPTIM_UPDATE_NORM_METER_H_

#include <cstddef>
#include <vector>

#include "absl/types/span.h"
#include "server/optim/step_probe.h"

namespace optd {

class UpdateNormMeter final : public StepProbe {
 public:
  void BeginStep(size_t num_segments) override;
  void BeforeSegment(size_t index, absl::Span<const float> params) override;
  void AfterSegment(size_t index, absl::Span<const float> params) override;
  void AddUpdateSquares(double sum_of_squares) override { extra_update_squares_ += sum_of_squares; }

  // The norms of the step measured last (after Optimizer::Step returned).
  double update_norm() const;
  double parameter_norm() const;

 private:
  std::vector<double> update_squares_;     // per segment
  std::vector<double> parameter_squares_;  // per segment
  double extra_update_squares_ = 0;
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_UPDATE_NORM_METER_H_
