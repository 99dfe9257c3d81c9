// File: optimizer_options.h
//
// One options struct per optimizer, with torch 1.13's defaults written in place, and a Validate()
// that enforces the service's ranges (reference/optimizers.md section 1.13: torch's checks plus the
// degenerate values the service refuses). OptimizerOptions is the closed set of them.
//
// Validate() returns OK or InvalidArgument with a message of the form
//   "adam.beta1 = 1.5 is out of range: must be in [0, 1)"
// i.e. the field (prefixed with the optimizer's name), the value and the valid range. Every value
// must also be finite. Thread-compatible plain data.

#ifndef OPTD_SERVER_OPTIM_OPTIMIZER_OPTIONS_H_
#define OPTD_SERVER_OPTIM_OPTIMIZER_OPTIONS_H_

#include <string_view>
#include <variant>

#include "absl/status/status.h"

namespace optd {

// torch.optim.SGD. lr has no default in torch 1.13; the service layer requires it.
struct SgdOptions {
  static constexpr std::string_view kName = "sgd";
  double lr = 0.0;            // >= 0
  double momentum = 0.0;      // [0, 1)
  double dampening = 0.0;     // [0, 1]
  double weight_decay = 0.0;  // >= 0, coupled L2: g += wd * p
  bool nesterov = false;      // requires momentum > 0 and dampening == 0
  bool maximize = false;      // ascend: g := -g first
  absl::Status Validate() const;
};

// torch.optim.Adam, with AMSGrad (max of the raw v, as torch 1.13 does).
struct AdamOptions {
  static constexpr std::string_view kName = "adam";
  double lr = 1e-3;           // >= 0
  double beta1 = 0.9;         // [0, 1)
  double beta2 = 0.999;       // [0, 1)
  double eps = 1e-8;          // > 0 (eps = 0 turns a zero v into 0/0)
  double weight_decay = 0.0;  // >= 0, coupled L2
  bool amsgrad = false;
  bool maximize = false;
  absl::Status Validate() const;
};

// torch.optim.AdamW: p *= 1 - lr*wd, then the Adam update without wd in the gradient.
struct AdamWOptions {
  static constexpr std::string_view kName = "adamw";
  double lr = 1e-3;            // >= 0
  double beta1 = 0.9;          // [0, 1)
  double beta2 = 0.999;        // [0, 1)
  double eps = 1e-8;           // > 0
  double weight_decay = 1e-2;  // >= 0, and lr * weight_decay <= 1
  bool amsgrad = false;
  bool maximize = false;
  absl::Status Validate() const;
};

// torch.optim.Adagrad: eps outside the sqrt, lr / (1 + (t-1) * lr_decay).
struct AdagradOptions {
  static constexpr std::string_view kName = "adagrad";
  double lr = 1e-2;                        // >= 0
  double lr_decay = 0.0;                   // >= 0
  double weight_decay = 0.0;               // >= 0
  double initial_accumulator_value = 0.0;  // >= 0
  double eps = 1e-10;                      // >= 0, not 0 when initial_accumulator_value is 0
  bool maximize = false;
  absl::Status Validate() const;
};

// Normalized gradient descent: p -= lr * g / (||g|| + eps) (or / max(||g||, eps)).
// A zero gradient always gives a zero update, never NaN, whatever eps.
struct NormalizedGdOptions {
  static constexpr std::string_view kName = "normalized_gd";
  enum class Norm { kGlobal, kPerTensor };
  enum class Guard { kAddEps, kMaxEps };
  double lr = 1e-2;           // >= 0
  double eps = 1e-6;          // >= 0
  Norm norm = Norm::kGlobal;  // one norm over all tensors, or one per tensor
  Guard guard = Guard::kAddEps;
  absl::Status Validate() const;
};

using OptimizerOptions =
    std::variant<SgdOptions, AdamOptions, AdamWOptions, AdagradOptions, NormalizedGdOptions>;

// Validates whichever options `options` holds.
absl::Status Validate(const OptimizerOptions& options);

// The optimizer's short name ("adam", "normalized_gd", ...), for messages and metric labels.
std::string_view OptimizerName(const OptimizerOptions& options);

// The base learning rate (the options' lr).
double BaseLearningRate(const OptimizerOptions& options);

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_OPTIMIZER_OPTIONS_H_
