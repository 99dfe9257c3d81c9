// File: step_probe.h
//
// StepProbe: the one window an optimizer step opens to a caller that wants to watch it, e.g. to
// measure the update and parameter norms the metrics report (UpdateNormMeter,
// update_norm_meter.h). The optimizer keeps nothing of what a probe learns: it calls the probe
// given to that Step and forgets it.
//
// Who implements it: UpdateNormMeter, and tests. Optimizer::Step calls it; see there for when.
// Thread safety: BeforeSegment and AfterSegment run on the step's pool, concurrently for
// different segments (each segment exactly once per step); BeginStep, AddUpdateSquares and the
// step's end are on the thread that called Step.

#ifndef OPTD_SERVER_OPTIM_STEP_PROBE_H_
#define OPTD_SERVER_OPTIM_STEP_PROBE_H_

#include <cstddef>

#include "absl/types/span.h"

namespace optd {

class StepProbe {
 public:
  virtual ~StepProbe() = default;

  // A step begins that will update `num_segments` segments (Optimizer::segments()).
  virtual void BeginStep(size_t num_segments) = 0;

  // Just before and just after the update pass writes segment `index`, whose parameters are
  // `params` (while they are in cache).
  virtual void BeforeSegment(size_t index, absl::Span<const float> params) = 0;
  virtual void AfterSegment(size_t index, absl::Span<const float> params) = 0;

  // Parameter changes made outside the update pass (row-sparse rows), as the sum of their
  // squares.
  virtual void AddUpdateSquares(double sum_of_squares) = 0;
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_STEP_PROBE_H_
