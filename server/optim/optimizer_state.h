// File: optimizer_state.h
//
// OptimizerState: everything an optimizer keeps between steps, as plain data: per tensor its step
// counter and its state arrays (named as torch.optim names them: "exp_avg", "exp_avg_sq",
// "momentum_buffer", "sum", ...), plus the scalars some optimizers keep per tensor (NAdam's
// "mu_product") or for the whole model. Optimizer::ExportState copies it out and
// Optimizer::ImportState loads it back, so a session can be checkpointed, restored, exported to
// torch and imported from it, and continue with exactly the next step it would have taken.
//
// Plain value: thread-compatible.

#ifndef OPTD_SERVER_OPTIM_OPTIMIZER_STATE_H_
#define OPTD_SERVER_OPTIM_OPTIMIZER_STATE_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace optd {

struct OptimizerState {
  struct Array {
    std::string name;
    std::vector<float> values;  // one per element of the tensor
  };
  struct Tensor {
    // Steps this tensor has taken (0 for optimizers that count none, such as SGD).
    int64_t step = 0;
    // The arrays the options in force keep, in a fixed order; empty until the first step.
    std::vector<Array> arrays;
    std::vector<std::pair<std::string, float>> scalars;
  };
  std::vector<Tensor> tensors;  // in the session's tensor order
  std::vector<std::pair<std::string, double>> scalars;

  // Bytes of the arrays (what Optimizer::StateBytes reports).
  int64_t ArrayBytes() const {
    int64_t bytes = 0;
    for (const Tensor& t : tensors) {
      for (const Array& a : t.arrays)
        bytes += static_cast<int64_t>(a.values.size() * sizeof(float));
    }
    return bytes;
  }
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_OPTIMIZER_STATE_H_
