// File: testing.h
//
// Test-only helpers for the server/optim unit tests: the golden sequence of reference/optimizers.md
// section 7, and small wrappers that step an Optimizer over std::vector data. Included only by
// *_test.cc files in this folder. Stateless; thread-compatible.

#ifndef OPTD_SERVER_OPTIM_TESTING_H_
#define OPTD_SERVER_OPTIM_TESTING_H_

#include <array>
#include <cmath>
#include <cstddef>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/status_matchers.h"
#include "gtest/gtest.h"
#include "server/optim/optimizer.h"

namespace optd {

// One step over a single tensor.
inline absl::Status StepOne(Optimizer& optimizer, std::vector<float>& param,
                            const std::vector<float>& grad, double lr) {
  const TensorGrad tensor{absl::MakeSpan(param), absl::MakeConstSpan(grad)};
  return optimizer.Step({tensor}, lr);
}

// One step over two tensors.
inline absl::Status StepTwo(Optimizer& optimizer, std::vector<float>& param0,
                            const std::vector<float>& grad0, std::vector<float>& param1,
                            const std::vector<float>& grad1, double lr) {
  const TensorGrad tensors[] = {{absl::MakeSpan(param0), absl::MakeConstSpan(grad0)},
                                {absl::MakeSpan(param1), absl::MakeConstSpan(grad1)}};
  return optimizer.Step(tensors, lr);
}

// The golden sequence of reference/optimizers.md section 7: p0 = [1, -2, 0.5, 0] and, at step t
// (from 1), g_t = [0.1 t, -0.2, 0.3 / t, 0].
inline std::vector<float> GoldenInitialParams() { return {1.0f, -2.0f, 0.5f, 0.0f}; }
inline std::vector<float> GoldenGradient(int t) {
  return {static_cast<float>(0.1 * t), -0.2f, static_cast<float>(0.3 / t), 0.0f};
}

using GoldenTrajectory = std::array<std::array<double, 4>, 3>;  // params after steps 1, 2, 3

// Runs the three golden steps with the optimizer's base learning rate and expects the float32
// params after each step to be within `tolerance` (absolute plus relative) of `expected`, which
// torch computed in float64 (or float32).
inline void ExpectGoldenTrajectory(Optimizer& optimizer, double lr,
                                   const GoldenTrajectory& expected, double tolerance = 1e-6) {
  std::vector<float> param = GoldenInitialParams();
  for (int t = 1; t <= 3; ++t) {
    ASSERT_OK(StepOne(optimizer, param, GoldenGradient(t), lr));
    for (size_t i = 0; i < param.size(); ++i) {
      const double want = expected[t - 1][i];
      EXPECT_NEAR(param[i], want, tolerance * (1.0 + std::abs(want)))
          << "element " << i << " after step " << t;
    }
  }
}

// Params after a given step of the golden sequence.
struct GoldenCheckpoint {
  int step;
  std::array<double, 4> params;
};

// Runs the golden sequence up to the last checkpoint's step with learning rate `lr` and expects
// the params after each checkpoint's step to be within `tolerance` (absolute plus relative).
inline void ExpectGoldenCheckpoints(Optimizer& optimizer, double lr,
                                    const std::vector<GoldenCheckpoint>& expected,
                                    double tolerance = 1e-6) {
  std::vector<float> param = GoldenInitialParams();
  int t = 0;
  for (const GoldenCheckpoint& checkpoint : expected) {
    while (t < checkpoint.step) {
      ++t;
      ASSERT_OK(StepOne(optimizer, param, GoldenGradient(t), lr));
    }
    for (size_t i = 0; i < param.size(); ++i) {
      const double want = checkpoint.params[i];
      EXPECT_NEAR(param[i], want, tolerance * (1.0 + std::abs(want)))
          << "element " << i << " after step " << t;
    }
  }
}

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_TESTING_H_
