#include "server/optim/optimizer.h"

#include <cmath>
#include <cstddef>
#include <memory>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "server/optim/adagrad.h"
#include "server/optim/adam.h"
#include "server/optim/normalized_gd.h"
#include "server/optim/sgd.h"

namespace optd {

absl::Status Optimizer::Step(absl::Span<const TensorGrad> tensors, double lr) {
  if (!std::isfinite(lr) || lr < 0.0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("lr = %g is out of range: must be finite and >= 0", lr));
  }
  if (tensors.size() != tensor_sizes_.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "step has %d tensors, expected %d (as at creation)", tensors.size(), tensor_sizes_.size()));
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t param_size = static_cast<int64_t>(tensors[i].param.size());
    const int64_t grad_size = static_cast<int64_t>(tensors[i].grad.size());
    if (param_size != tensor_sizes_[i]) {
      return absl::InvalidArgumentError(
          absl::StrFormat("tensor %d has %d parameters, expected %d (as at creation)", i,
                          param_size, tensor_sizes_[i]));
    }
    if (grad_size != param_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "tensor %d has a gradient of %d elements for %d parameters", i, grad_size, param_size));
    }
  }
  StepImpl(tensors, lr);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Optimizer>> CreateOptimizer(const OptimizerOptions& options,
                                                           std::vector<int64_t> tensor_sizes) {
  if (absl::Status status = Validate(options); !status.ok()) return status;
  if (tensor_sizes.empty()) {
    return absl::InvalidArgumentError(
        "tensor_sizes is empty: an optimizer needs at least one tensor");
  }
  for (size_t i = 0; i < tensor_sizes.size(); ++i) {
    if (tensor_sizes[i] < 1) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "tensor_sizes[%d] = %d is out of range: must be >= 1", i, tensor_sizes[i]));
    }
  }
  return std::visit(
      [&tensor_sizes](const auto& o) -> std::unique_ptr<Optimizer> {
        using T = std::decay_t<decltype(o)>;
        if constexpr (std::is_same_v<T, SgdOptions>) {
          return std::make_unique<Sgd>(o, std::move(tensor_sizes));
        } else if constexpr (std::is_same_v<T, AdamOptions> || std::is_same_v<T, AdamWOptions>) {
          return std::make_unique<Adam>(o, std::move(tensor_sizes));
        } else if constexpr (std::is_same_v<T, AdagradOptions>) {
          return std::make_unique<Adagrad>(o, std::move(tensor_sizes));
        } else {
          static_assert(std::is_same_v<T, NormalizedGdOptions>, "unhandled optimizer options");
          return std::make_unique<NormalizedGd>(o, std::move(tensor_sizes));
        }
      },
      options);
}

}  // namespace optd
