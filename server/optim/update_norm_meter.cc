#include "server/optim/update_norm_meter.h"

#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "base/simd.h"

namespace optd {
namespace {

// {sum of (p - before)^2, sum of p^2} in double, each in eight interleaved partial sums combined
// pairwise (as SquaredNorm): the loop vectorises, and the order is fixed, so the bits do not
// depend on the machine or the pool.
OPTD_SIMD_CLONES
std::array<double, 2> UpdateAndParameterSquares(const float* __restrict p,
                                                const float* __restrict before, int64_t n) {
  constexpr int kLanes = 8;
  double update[kLanes] = {}, parameter[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const double pj = p[i + j];
      const double d = pj - before[i + j];
      update[j] += d * d;
      parameter[j] += pj * pj;
    }
  }
  auto combine = [](const double* a) {
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  };
  std::array<double, 2> sums = {combine(update), combine(parameter)};
  for (; i < n; ++i) {
    const double pi = p[i];
    const double d = pi - before[i];
    sums[0] += d * d;
    sums[1] += pi * pi;
  }
  return sums;
}

// The parameters of the segment being updated on this thread, as they were before.
thread_local std::vector<float> before;

}  // namespace

void UpdateNormMeter::BeginStep(size_t num_segments) {
  update_squares_.assign(num_segments, 0.0);
  parameter_squares_.assign(num_segments, 0.0);
  extra_update_squares_ = 0;
}

void UpdateNormMeter::BeforeSegment(size_t index, absl::Span<const float> params) {
  before.assign(params.begin(), params.end());  // the kernel reads these next: cheap now
}

void UpdateNormMeter::AfterSegment(size_t index, absl::Span<const float> params) {
  const std::array<double, 2> squares =
      UpdateAndParameterSquares(params.data(), before.data(), static_cast<int64_t>(params.size()));
  update_squares_[index] = squares[0];
  parameter_squares_[index] = squares[1];
}

double UpdateNormMeter::update_norm() const {
  double sum = extra_update_squares_;
  for (double s : update_squares_) sum += s;  // segment order: the same bits on any pool
  return std::sqrt(sum);
}

double UpdateNormMeter::parameter_norm() const {
  double sum = 0;
  for (double s : parameter_squares_) sum += s;
  return std::sqrt(sum);
}

}  // namespace optd
