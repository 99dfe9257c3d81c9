#include "server/optim/optimizer.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "server/optim/adadelta.h"
#include "server/optim/adagrad.h"
#include "server/optim/adam.h"
#include "server/optim/kernel_internal.h"
#include "server/optim/lamb.h"
#include "server/optim/lars.h"
#include "server/optim/lion.h"
#include "server/optim/nadam.h"
#include "server/optim/normalized_gd.h"
#include "server/optim/parallel.h"
#include "server/optim/radam.h"
#include "server/optim/rmsprop.h"
#include "server/optim/sgd.h"

namespace optd {
namespace {

// The Optimizer class built for each options type; a missing one does not compile.
template <typename T>
struct OptimizerFor;
template <>
struct OptimizerFor<SgdOptions> {
  using type = Sgd;
};
template <>
struct OptimizerFor<AdamOptions> {
  using type = Adam;
};
template <>
struct OptimizerFor<AdamWOptions> {
  using type = Adam;
};
template <>
struct OptimizerFor<AdagradOptions> {
  using type = Adagrad;
};
template <>
struct OptimizerFor<NormalizedGdOptions> {
  using type = NormalizedGd;
};
template <>
struct OptimizerFor<AdadeltaOptions> {
  using type = Adadelta;
};
template <>
struct OptimizerFor<RmspropOptions> {
  using type = Rmsprop;
};
template <>
struct OptimizerFor<NadamOptions> {
  using type = Nadam;
};
template <>
struct OptimizerFor<RadamOptions> {
  using type = Radam;
};
template <>
struct OptimizerFor<LionOptions> {
  using type = Lion;
};
template <>
struct OptimizerFor<LambOptions> {
  using type = Lamb;
};
template <>
struct OptimizerFor<LarsOptions> {
  using type = Lars;
};

// {sum of (p - before)^2, sum of p^2} in double, each in eight interleaved partial sums combined
// pairwise (as SumOfSquares): the loop vectorises, and the order is fixed, so the bits do not
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

}  // namespace

Optimizer::Optimizer(std::vector<int64_t> tensor_sizes) : tensor_sizes_(std::move(tensor_sizes)) {
  for (size_t t = 0; t < tensor_sizes_.size(); ++t) {
    for (int64_t begin = 0; begin < tensor_sizes_[t];) {
      const int64_t flat = total_elements_ + begin;
      const int64_t block = flat / kBlockElements;
      const int64_t end = std::min(tensor_sizes_[t], begin + (block + 1) * kBlockElements - flat);
      while (static_cast<int64_t>(block_first_segment_.size()) <= block) {
        block_first_segment_.push_back(segments_.size());
      }
      segments_.push_back(Segment{segments_.size(), t, begin, end});
      begin = end;
    }
    total_elements_ += tensor_sizes_[t];
  }
  block_first_segment_.push_back(segments_.size());
}

void Optimizer::ForEachSegment(const std::function<void(const Segment&)>& fn) const {
  if (!measuring_) return RunSegments(fn);
  RunSegments([&](const Segment& s) {
    float* p = current_[s.tensor].param.data() + s.begin;
    const int64_t n = s.end - s.begin;
    thread_local std::vector<float> before;
    before.assign(p, p + n);  // the kernel reads these next: copying now costs little
    fn(s);
    const std::array<double, 2> squares = UpdateAndParameterSquares(p, before.data(), n);
    update_squares_[s.index] = squares[0];
    parameter_squares_[s.index] = squares[1];
  });
}

void Optimizer::RunSegments(const std::function<void(const Segment&)>& fn) const {
  if (pool_ == nullptr || pool_->num_threads() == 1 || total_elements_ < kParallelMinElements) {
    for (const Segment& s : segments_) fn(s);
    return;
  }
  pool_->ParallelFor(total_elements_, kBlockElements, [&](int64_t begin, int64_t /*end*/) {
    const size_t block = static_cast<size_t>(begin / kBlockElements);
    for (size_t i = block_first_segment_[block]; i < block_first_segment_[block + 1]; ++i) {
      fn(segments_[i]);
    }
  });
}

absl::Status Optimizer::UpdateOptions(const OptimizerOptions& options) {
  const OptimizerOptions current = this->options();
  if (options.index() != current.index()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "optimizer is %s but this one runs %s; the kind cannot change", OptimizerName(options),
        OptimizerName(current)));
  }
  if (absl::Status s = Validate(options); !s.ok()) return s;
  if (const std::string_view field = StructuralChange(options); !field.empty()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s.%s cannot change on a running session: the state it needs would have no history "
        "(create a new session instead)",
        OptimizerName(options), field));
  }
  SetOptions(options);
  return absl::OkStatus();
}

absl::Status Optimizer::Step(absl::Span<const TensorGrad> tensors, double lr, StepNorms* norms) {
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
    if (tensors[i].sparse()) {
      absl::StatusOr<RowSparseRule> rule = RowSparse();
      if (!rule.ok()) return rule.status();
      if (*rule != RowSparseRule::kLazy) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "tensor %d has a row-sparse gradient; %s applies them dense: densify it first", i,
            OptimizerName(options())));
      }
      const int64_t row_size = tensors[i].row_size;
      const absl::Span<const int64_t> rows = tensors[i].rows;
      if (param_size % row_size != 0 ||
          grad_size != static_cast<int64_t>(rows.size()) * row_size) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "tensor %d: a row-sparse gradient of %d rows of %d elements has %d values for %d "
            "parameters",
            i, rows.size(), row_size, grad_size, param_size));
      }
      for (size_t r = 0; r < rows.size(); ++r) {
        if (rows[r] < 0 || rows[r] >= param_size / row_size || (r > 0 && rows[r] <= rows[r - 1])) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "tensor %d: rows must be sorted, unique and in [0, %d); rows[%d] = %d", i,
              param_size / row_size, r, rows[r]));
        }
      }
    } else if (grad_size != param_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "tensor %d has a gradient of %d elements for %d parameters", i, grad_size, param_size));
    }
  }
  if (norms == nullptr) {
    StepImpl(tensors, lr);
    return absl::OkStatus();
  }
  measuring_ = true;
  current_ = tensors;
  extra_update_squares_ = 0;
  update_squares_.assign(segments_.size(), 0.0);
  parameter_squares_.assign(segments_.size(), 0.0);
  StepImpl(tensors, lr);
  measuring_ = false;
  double update = extra_update_squares_, parameter = 0;
  for (size_t i = 0; i < segments_.size(); ++i) {  // segment order: the same bits on any pool
    update += update_squares_[i];
    parameter += parameter_squares_[i];
  }
  norms->update_norm = std::sqrt(update);
  norms->parameter_norm = std::sqrt(parameter);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Optimizer>> CreateOptimizer(const OptimizerOptions& options,
                                                           std::vector<int64_t> tensor_sizes,
                                                           ThreadPool* pool) {
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
  std::unique_ptr<Optimizer> optimizer = std::visit(
      [&tensor_sizes](const auto& o) -> std::unique_ptr<Optimizer> {
        using Class = typename OptimizerFor<std::decay_t<decltype(o)>>::type;
        return std::make_unique<Class>(o, std::move(tensor_sizes));
      },
      options);
  optimizer->set_pool(pool);
  return optimizer;
}

}  // namespace optd
