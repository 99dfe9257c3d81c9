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

#include <cstdint>
#include <limits>
#include <optional>
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

// torch.optim.Adadelta: square_avg and acc_delta, both with eps inside the sqrt; lr scales the
// un-scaled delta (1.0 reproduces Zeiler 2012).
struct AdadeltaOptions {
  static constexpr std::string_view kName = "adadelta";
  double lr = 1.0;            // >= 0
  double rho = 0.9;           // [0, 1) (torch accepts 1, which never moves the params)
  double eps = 1e-6;          // > 0 (eps = 0 never moves the params, and 0/0 on a zero gradient)
  double weight_decay = 0.0;  // >= 0, coupled L2
  bool maximize = false;
  absl::Status Validate() const;
};

// torch.optim.RMSprop: eps outside the sqrt; the momentum buffer starts at zeros and lr stays
// outside it.
struct RmspropOptions {
  static constexpr std::string_view kName = "rmsprop";
  double lr = 1e-2;           // >= 0
  double alpha = 0.99;        // [0, 1] (torch accepts alpha > 1)
  double eps = 1e-8;          // >= 0
  double weight_decay = 0.0;  // >= 0, coupled L2
  double momentum = 0.0;      // [0, 1)
  bool centered = false;      // divide by the centered sqrt(E[d^2] - E[d]^2)
  bool maximize = false;
  absl::Status Validate() const;
};

// torch.optim.NAdam (1.13): Dozat's momentum schedule mu_t = beta1 (1 - 0.5 * 0.96^(t psi)).
// torch 1.13 has no maximize for NAdam.
struct NadamOptions {
  static constexpr std::string_view kName = "nadam";
  double lr = 2e-3;              // >= 0
  double beta1 = 0.9;            // [0, 1)
  double beta2 = 0.999;          // [0, 1)
  double eps = 1e-8;             // > 0
  double weight_decay = 0.0;     // >= 0, coupled L2
  double momentum_decay = 4e-3;  // >= 0 (psi above)
  absl::Status Validate() const;
};

// torch.optim.RAdam (1.13): bias-corrected SGD with momentum until rho_t > 5, then the rectified
// adaptive step. torch 1.13 has no maximize for RAdam.
struct RadamOptions {
  static constexpr std::string_view kName = "radam";
  double lr = 1e-3;           // >= 0
  double beta1 = 0.9;         // [0, 1)
  double beta2 = 0.999;       // [0, 1)
  double eps = 1e-8;          // >= 0
  double weight_decay = 0.0;  // >= 0, coupled L2
  absl::Status Validate() const;
};

// Lion (Chen et al. 2023; not in torch): p = p (1 - lr wd) - lr sign(beta1 m + (1 - beta1) g),
// then m = beta2 m + (1 - beta2) g. Defaults: lr from lion-pytorch, the rest from optax.
struct LionOptions {
  static constexpr std::string_view kName = "lion";
  double lr = 1e-4;            // > 0
  double beta1 = 0.9;          // [0, 1]
  double beta2 = 0.99;         // [0, 1]
  double weight_decay = 1e-3;  // >= 0, decoupled: p *= 1 - lr * weight_decay
  absl::Status Validate() const;
};

// LAMB (You et al. 2019; not in torch), optax's lamb: the bias-corrected Adam direction plus
// decoupled weight decay, scaled per tensor by the trust ratio ||p|| / ||u|| (1 when either norm
// is 0).
struct LambOptions {
  static constexpr std::string_view kName = "lamb";
  double lr = 1e-3;           // >= 0
  double beta1 = 0.9;         // [0, 1)
  double beta2 = 0.999;       // [0, 1)
  double eps = 1e-6;          // > 0, outside the sqrt (as Adam: eps = 0 gives 0/0 on a zero v)
  double weight_decay = 0.0;  // >= 0, added to the direction inside the trust ratio
  absl::Status Validate() const;
};

// LARS (You et al. 2017; not in torch), optax's lars: u = g + wd p, scaled per tensor by
// trust_coefficient ||p|| / (||u|| + eps) (1 when either norm is 0), then by lr, then momentum
// with lr inside the buffer. lr has no default in optax; 1.0 here because the trust coefficient
// already scales each step to about lr * trust_coefficient * ||p|| (LARS is run with lr of order
// 0.1-10, e.g. SimCLR's 0.3 * batch / 256).
struct LarsOptions {
  static constexpr std::string_view kName = "lars";
  double lr = 1.0;                  // >= 0
  double momentum = 0.9;            // [0, 1)
  double weight_decay = 0.0;        // >= 0
  double trust_coefficient = 1e-3;  // > 0
  double eps = 0.0;                 // >= 0, added to ||u|| in the trust ratio
  bool nesterov = false;            // p -= s + momentum * buf instead of buf (s = lr trust u)
  absl::Status Validate() const;
};

// ---- Learning-rate-free and recent optimizers (reference/optimizers-lr-free.md). Their lr is a
// multiplier of the step each estimates (1.0 = as published), except Schedule-Free, Adafactor
// and Muon, whose lr is a learning rate. growth_rate may be +inf (unbounded, the default).

// Prodigy (Mishchenko & Defazio 2024), konstmish/prodigy's Prodigy: Adam whose step is scaled by
// d, an estimate of the distance to the solution, from a global reduction over every tensor.
struct ProdigyOptions {
  static constexpr std::string_view kName = "prodigy";
  double lr = 1.0;                   // > 0, multiplies d
  double beta1 = 0.9;                // [0, 1); 0 keeps no exp_avg
  double beta2 = 0.999;              // [0, 1)
  std::optional<double> beta3;       // [0, 1); unset: sqrt(beta2)
  double eps = 1e-8;                 // > 0, scaled by d
  double weight_decay = 0.0;         // >= 0
  bool decouple = true;              // AdamW-style decay (else added to the gradient)
  bool use_bias_correction = false;  // only through the step size
  bool safeguard_warmup = false;     // leave lr out of the s accumulator
  double d0 = 1e-6;                  // > 0, the initial estimate
  double d_coef = 1.0;               // > 0, multiplies the estimate
  double growth_rate = std::numeric_limits<double>::infinity();  // >= 1, or +inf
  int64_t slice_p = 1;  // >= 1: the estimate uses every slice_p-th element
  absl::Status Validate() const;
};

// D-Adaptation Adam (Defazio & Mishchenko 2023), facebookresearch/dadaptation's DAdaptAdam.
struct DAdaptAdamOptions {
  static constexpr std::string_view kName = "dadapt_adam";
  double lr = 1.0;                   // > 0, multiplies d
  double beta1 = 0.9;                // [0, 1)
  double beta2 = 0.999;              // [0, 1)
  double eps = 1e-8;                 // > 0
  double weight_decay = 0.0;         // >= 0
  bool decouple = false;             // coupled L2 by default, as upstream
  bool use_bias_correction = false;  // only through the step size
  double d0 = 1e-6;                  // > 0
  double growth_rate = std::numeric_limits<double>::infinity();  // >= 1, or +inf
  double layer_scale = 1.0;  // > 0 (upstream's per-group layer_scale; one group here)
  absl::Status Validate() const;
};

// D-Adaptation SGD, facebookresearch/dadaptation's DAdaptSGD (dual averaging from x0).
struct DAdaptSgdOptions {
  static constexpr std::string_view kName = "dadapt_sgd";
  double lr = 1.0;                                               // > 0
  double momentum = 0.0;                                         // [0, 1)
  double weight_decay = 0.0;                                     // >= 0, coupled
  double d0 = 1e-6;                                              // > 0
  double growth_rate = std::numeric_limits<double>::infinity();  // >= 1, or +inf
  absl::Status Validate() const;
};

// DoG (Ivgi, Hinder & Carmon 2023), formll/dog's DoG: eta = lr * max ||x - x0|| / sqrt(sum ||g||^2)
// over the whole model, with the optional polynomial-decay iterate averager.
struct DogOptions {
  static constexpr std::string_view kName = "dog";
  double lr = 1.0;                 // > 0
  double reps_rel = 1e-6;          // > 0 (forced to 0 when init_eta is set)
  double weight_decay = 0.0;       // >= 0, coupled
  double eps = 1e-8;               // > 0, added to the first sum of squares
  std::optional<double> init_eta;  // > 0: the first step's eta
  bool averaging = false;          // keep the polynomial-decay average of the iterates
  double averager_gamma = 8.0;     // >= 0
  absl::Status Validate() const;
};

// L-DoG: DoG with a distance and a sum per tensor (formll/dog's LDoG).
struct LdogOptions {
  static constexpr std::string_view kName = "ldog";
  double lr = 1.0;
  double reps_rel = 1e-6;
  double weight_decay = 0.0;
  double eps = 1e-8;
  std::optional<double> init_eta;
  bool averaging = false;
  double averager_gamma = 8.0;
  absl::Status Validate() const;
};

// Schedule-Free AdamW (Defazio et al. 2024), facebookresearch/schedule_free's AdamWScheduleFree.
// The parameters a session holds are the training point y; the evaluation point x is a view.
struct ScheduleFreeAdamWOptions {
  static constexpr std::string_view kName = "schedulefree_adamw";
  double lr = 0.0025;            // >= 0
  double beta1 = 0.9;            // (0, 1): x = (y - (1 - beta1) z) / beta1
  double beta2 = 0.999;          // [0, 1)
  double eps = 1e-8;             // > 0
  double weight_decay = 0.0;     // >= 0, taken at y
  int64_t warmup_steps = 0;      // >= 0
  double r = 0.0;                // >= 0
  double weight_lr_power = 2.0;  // >= 0
  double inner_momentum = 0.0;   // [0, 1); > 0 keeps exp_avg
  absl::Status Validate() const;
};

// Schedule-Free SGD, facebookresearch/schedule_free's SGDScheduleFree.
struct ScheduleFreeSgdOptions {
  static constexpr std::string_view kName = "schedulefree_sgd";
  double lr = 1.0;               // >= 0
  double momentum = 0.9;         // (0, 1)
  double weight_decay = 0.0;     // >= 0, coupled at y
  int64_t warmup_steps = 0;      // >= 0
  double r = 0.0;                // >= 0
  double weight_lr_power = 2.0;  // >= 0
  absl::Status Validate() const;
};

// torch.optim.Adafactor (Shazeer & Stern 2018 as torch implements it): factored second moments for
// matrices (the last two dims), a full one for vectors; the step is relative to RMS(p).
struct AdafactorOptions {
  static constexpr std::string_view kName = "adafactor";
  double lr = 1e-2;            // >= 0
  double beta2_decay = -0.8;   // <= 0
  std::optional<double> eps1;  // >= 0; unset: float32 epsilon (1.1920929e-07)
  double eps2 = 1e-3;          // >= 0, the floor of RMS(p)
  double d = 1.0;              // >= 1, the update clipping threshold
  double weight_decay = 0.0;   // >= 0, decoupled: p *= 1 - lr * weight_decay
  bool maximize = false;
  absl::Status Validate() const;
};

// Muon (Jordan et al. 2024), KellerJordan/Muon's SingleDeviceMuon: momentum, then a float32
// Newton-Schulz orthogonalization of each 2-D (or 4-D, viewed as 2-D) tensor. Other tensors take
// the AdamW update of MuonWithAuxAdam with the adam_* options; a schedule scales both lrs alike.
struct MuonOptions {
  static constexpr std::string_view kName = "muon";
  double lr = 0.02;           // >= 0
  double momentum = 0.95;     // [0, 1)
  double weight_decay = 0.0;  // >= 0, decoupled; lr * weight_decay <= 1
  bool nesterov = true;
  int64_t ns_steps = 5;            // >= 1
  double adam_lr = 3e-4;           // >= 0
  double adam_beta1 = 0.9;         // [0, 1)
  double adam_beta2 = 0.95;        // [0, 1)
  double adam_eps = 1e-10;         // > 0
  double adam_weight_decay = 0.0;  // >= 0; adam_lr * adam_weight_decay <= 1
  absl::Status Validate() const;
};

// Alternatives are only ever appended, so an index stays the same optimizer.
using OptimizerOptions =
    std::variant<SgdOptions, AdamOptions, AdamWOptions, AdagradOptions, NormalizedGdOptions,
                 AdadeltaOptions, RmspropOptions, NadamOptions, RadamOptions, LionOptions,
                 LambOptions, LarsOptions, ProdigyOptions, DAdaptAdamOptions, DAdaptSgdOptions,
                 DogOptions, LdogOptions, ScheduleFreeAdamWOptions, ScheduleFreeSgdOptions,
                 AdafactorOptions, MuonOptions>;

// Validates whichever options `options` holds.
absl::Status Validate(const OptimizerOptions& options);

// The optimizer's short name ("adam", "normalized_gd", ...), for messages and metric labels.
std::string_view OptimizerName(const OptimizerOptions& options);

// The base learning rate (the options' lr).
double BaseLearningRate(const OptimizerOptions& options);

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_OPTIMIZER_OPTIONS_H_
