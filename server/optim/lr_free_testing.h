// File: lr_free_testing.h
//
// Test-only: the golden vectors of reference/optimizers-lr-free.md (tests/golden/lr_free.json,
// whose path the build passes as OPTD_LR_FREE_GOLDEN), and the runner that replays a case through
// an Optimizer and checks it at the file's checkpoints with the file's tolerances:
//
//   for (const std::string& name : LrFreeGolden::Get().Cases("Prodigy")) {
//     ExpectGoldenCase("Prodigy", name, ProdigyFromJson(...), pool);
//   }
//
// The options of a case are read from its resolved_hyperparameters by the *FromJson functions,
// so every case in the file (public or not) runs. Included only by *_test.cc files in this folder.

#ifndef OPTD_SERVER_OPTIM_LR_FREE_TESTING_H_
#define OPTD_SERVER_OPTIM_LR_FREE_TESTING_H_

#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "nlohmann/json.hpp"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

class LrFreeGolden {
 public:
  // The file, parsed once (aborts the test binary if it cannot be read).
  static const LrFreeGolden& Get();

  // The case names of an optimizer ("Prodigy", "Muon_fp32", ...), in file order.
  std::vector<std::string> Cases(const std::string& optimizer) const;
  const nlohmann::json& Case(const std::string& optimizer, const std::string& name) const;

  // The float32 gradient of tensor `tensor` ("a", "b", ...) at step `step` (from 1).
  const std::vector<float>& Gradient(const std::string& tensor, int step) const;
  int steps() const { return steps_; }

 private:
  LrFreeGolden();
  nlohmann::json json_;
  int steps_ = 0;
  std::map<std::string, std::vector<std::vector<float>>> gradients_;
};

// The options of a case, from its resolved_hyperparameters.
OptimizerOptions OptionsFromJson(const std::string& optimizer, const nlohmann::json& c);

// The parameters of every tensor after each checkpoint step of a run.
struct GoldenRun {
  std::vector<int> steps;
  std::vector<std::vector<std::vector<float>>> params;  // [checkpoint][tensor]
  std::vector<OptimizerState> states;                   // [checkpoint]
};

// Replays case (optimizer, name) with `options` on `pool` (nullptr: the calling thread), with the
// learning rate BaseLearningRate(options) at every step, expecting the parameters, the evaluation
// point (eval_params, averaged_params) and the scalars at each checkpoint within the case's
// tolerances. Returns what it saw.
GoldenRun ExpectGoldenCase(const std::string& optimizer, const std::string& name,
                           const OptimizerOptions& options, ThreadPool* pool);

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_LR_FREE_TESTING_H_
