#include "server/optim/optimizer.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/thread_pool.h"
#include "server/optim/adadelta.h"
#include "server/optim/adafactor.h"
#include "server/optim/adagrad.h"
#include "server/optim/adam.h"
#include "server/optim/dadapt_adam.h"
#include "server/optim/dadapt_sgd.h"
#include "server/optim/dog.h"
#include "server/optim/kernel_internal.h"
#include "server/optim/lamb.h"
#include "server/optim/lars.h"
#include "server/optim/lion.h"
#include "server/optim/muon.h"
#include "server/optim/nadam.h"
#include "server/optim/normalized_gd.h"
#include "server/optim/prodigy.h"
#include "server/optim/radam.h"
#include "server/optim/rmsprop.h"
#include "server/optim/schedule_free.h"
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
template <>
struct OptimizerFor<ProdigyOptions> {
  using type = Prodigy;
};
template <>
struct OptimizerFor<DAdaptAdamOptions> {
  using type = DAdaptAdam;
};
template <>
struct OptimizerFor<DAdaptSgdOptions> {
  using type = DAdaptSgd;
};
template <>
struct OptimizerFor<DogOptions> {
  using type = Dog;
};
template <>
struct OptimizerFor<LdogOptions> {
  using type = Dog;
};
template <>
struct OptimizerFor<ScheduleFreeAdamWOptions> {
  using type = ScheduleFree;
};
template <>
struct OptimizerFor<ScheduleFreeSgdOptions> {
  using type = ScheduleFree;
};
template <>
struct OptimizerFor<AdafactorOptions> {
  using type = Adafactor;
};
template <>
struct OptimizerFor<MuonOptions> {
  using type = Muon;
};

}  // namespace

Optimizer::Optimizer(std::vector<int64_t> tensor_sizes)
    : tensor_sizes_(std::move(tensor_sizes)), layout_(tensor_sizes_) {}

void Optimizer::UpdateSegments(const std::function<int64_t(const Segment&)>& fn) const {
  // Each segment writes only its own slot; Step adds them up after the pass.
  const absl::Span<int64_t> counts = segment_non_finite_;
  if (probe_ == nullptr) {
    if (counts.empty()) return RunSegments([&](const Segment& s) { fn(s); });
    return RunSegments([&](const Segment& s) { counts[s.index] = fn(s); });
  }
  RunSegments([&](const Segment& s) {
    const absl::Span<float> params =
        current_[s.tensor].param.subspan(s.begin, static_cast<size_t>(s.end - s.begin));
    probe_->BeforeSegment(s.index, params);
    const int64_t count = fn(s);
    probe_->AfterSegment(s.index, params);
    if (!counts.empty()) counts[s.index] = count;
  });
}

absl::Status Optimizer::UpdateOptions(const OptimizerOptions& options) {
  const OptimizerOptions current = this->options();
  if (options.index() != current.index()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("optimizer is %s but this one runs %s; the kind cannot change",
                        OptimizerName(options), OptimizerName(current)));
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

absl::Status Optimizer::Step(absl::Span<const TensorGrad> tensors, double lr, StepProbe* probe,
                             StepResult* result) {
  if (!std::isfinite(lr) || lr < 0.0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("lr = %g is out of range: must be finite and >= 0", lr));
  }
  if (tensors.size() != tensor_sizes_.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "step has %d tensors, expected %d (as at creation)", tensors.size(), tensor_sizes_.size()));
  }
  size_t absent = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t param_size = static_cast<int64_t>(tensors[i].param.size());
    const int64_t grad_size = static_cast<int64_t>(tensors[i].grad.size());
    if (param_size != tensor_sizes_[i]) {
      return absl::InvalidArgumentError(
          absl::StrFormat("tensor %d has %d parameters, expected %d (as at creation)", i,
                          param_size, tensor_sizes_[i]));
    }
    if (tensors[i].absent) {
      if (grad_size != 0 || tensors[i].sparse()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("tensor %d is absent from the step but has a gradient", i));
      }
      ++absent;
    } else if (tensors[i].sparse()) {
      absl::StatusOr<RowSparseRule> rule = RowSparse();
      if (!rule.ok()) return rule.status();
      if (*rule != RowSparseRule::kLazy) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "tensor %d has a row-sparse gradient; %s applies them dense: densify it first", i,
            OptimizerName(options())));
      }
      const int64_t row_size = tensors[i].row_size;
      const absl::Span<const int64_t> rows = tensors[i].rows;
      if (param_size % row_size != 0 || grad_size != static_cast<int64_t>(rows.size()) * row_size) {
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
  // Everything this step may allocate is allocated first, so that running out of memory changes
  // nothing: the state a tensor's first step creates (its arrays take this capacity, and
  // assigning within it allocates no more) and the step's own bookkeeping.
  try {
    if (StateBytesPerElement() > 0) {
      for (size_t t = 0; t < tensor_sizes_.size(); ++t) {
        for (const auto& [name, values] : StateOf(t).arrays) {
          if (values->empty()) values->reserve(static_cast<size_t>(ArraySize(t, name)));
        }
      }
    }
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%s: no memory for the optimizer state of the first step", OptimizerName(options())));
  }
  if (absent == tensors.size()) {
    return absl::InvalidArgumentError("a step needs the gradient of at least one tensor");
  }
  if (absent > 0) {
    if (absl::Status s = PartialSteps(); !s.ok()) return s;
  }
  // Absent tensors: a zero gradient for the update pass, and their parameters and state kept
  // aside to be put back after it (allocated before anything changes).
  std::vector<TensorGrad> substituted;
  std::vector<AbsentTensor> kept;
  if (absent > 0) {
    try {
      substituted.assign(tensors.begin(), tensors.end());
      kept.reserve(absent);
      for (size_t t = 0; t < tensors.size(); ++t) {
        if (!tensors[t].absent) continue;
        kept.push_back(Keep(t, tensors[t].param));
        substituted[t].grad = kept.back().zeros;
        substituted[t].absent = false;
      }
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "%s: no memory to keep the absent tensors of a partial step", OptimizerName(options())));
    }
    tensors = substituted;
  }
  // The call context, cleared before returning: the optimizer keeps nothing of it.
  std::vector<int64_t> segment_non_finite;
  std::vector<int64_t> tensor_non_finite;
  if (result != nullptr) {
    segment_non_finite.assign(segments().size(), 0);
    tensor_non_finite.assign(tensor_sizes_.size(), 0);
    segment_non_finite_ = absl::MakeSpan(segment_non_finite);
    tensor_non_finite_ = absl::MakeSpan(tensor_non_finite);
  }
  probe_ = probe;
  current_ = tensors;
  if (probe != nullptr) probe->BeginStep(segments().size());
  StepImpl(tensors, lr);
  for (AbsentTensor& k : kept) PutBack(std::move(k), tensors[k.tensor].param);
  if (result != nullptr) {
    for (const AbsentTensor& k : kept) {
      for (const Segment& seg : segments()) {
        if (seg.tensor == k.tensor) segment_non_finite[seg.index] = 0;
      }
      tensor_non_finite[k.tensor] = 0;
    }
  }
  probe_ = nullptr;
  current_ = {};
  segment_non_finite_ = {};
  tensor_non_finite_ = {};
  if (result == nullptr) return absl::OkStatus();

  for (const Segment& s : segments()) tensor_non_finite[s.tensor] += segment_non_finite[s.index];
  result->non_finite_parameters = 0;
  result->non_finite_tensors.clear();
  result->non_finite_counts.clear();
  for (size_t t = 0; t < tensor_non_finite.size(); ++t) {
    if (tensor_non_finite[t] == 0) continue;
    result->non_finite_parameters += tensor_non_finite[t];
    result->non_finite_tensors.push_back(static_cast<int>(t));
    result->non_finite_counts.push_back(tensor_non_finite[t]);
  }
  return absl::OkStatus();
}

Optimizer::AbsentTensor Optimizer::Keep(size_t tensor, absl::Span<const float> param) {
  AbsentTensor k;
  k.tensor = tensor;
  k.zeros.assign(param.size(), 0.0f);
  k.param.assign(param.begin(), param.end());
  StateRefs refs = StateOf(tensor);
  if (refs.step != nullptr) k.step = *refs.step;
  for (const auto& [name, values] : refs.arrays) k.arrays.push_back(*values);
  for (const auto& [name, value] : refs.scalars) k.scalars.push_back(*value);
  return k;
}

void Optimizer::PutBack(AbsentTensor kept, absl::Span<float> param) {
  std::copy(kept.param.begin(), kept.param.end(), param.begin());
  StateRefs refs = StateOf(kept.tensor);
  if (refs.step != nullptr) *refs.step = kept.step;
  for (size_t i = 0; i < refs.arrays.size(); ++i) {
    // Moved back: an array the zero-gradient pass created (a first step) is empty again.
    refs.arrays[i].second->swap(kept.arrays[i]);
  }
  for (size_t i = 0; i < refs.scalars.size(); ++i) *refs.scalars[i].second = kept.scalars[i];
}

absl::Status Optimizer::EvaluationPoint(size_t tensor, absl::Span<const float> param,
                                        absl::Span<float> out) const {
  if (!HasEvaluationPoint()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s keeps no evaluation point apart from its parameters", OptimizerName(options())));
  }
  if (tensor >= tensor_sizes_.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tensor %d does not exist (%d tensors)", tensor, tensor_sizes_.size()));
  }
  const int64_t n = tensor_sizes_[tensor];
  if (static_cast<int64_t>(param.size()) != n || static_cast<int64_t>(out.size()) != n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tensor %d has %d elements; got %d parameters and room for %d", tensor, n,
                        param.size(), out.size()));
  }
  EvaluationPointImpl(tensor, param, out);
  return absl::OkStatus();
}

int64_t Optimizer::StateBytes() const {
  int64_t bytes = 0;
  for (size_t t = 0; t < tensor_sizes_.size(); ++t) {
    // StateOf hands out writable references for ImportState; here they are only read.
    for (const auto& [name, values] : const_cast<Optimizer*>(this)->StateOf(t).arrays) {
      bytes += static_cast<int64_t>(values->size() * sizeof(float));
    }
  }
  return bytes;
}

OptimizerState Optimizer::ExportState() const {
  OptimizerState state;
  state.tensors.resize(tensor_sizes_.size());
  for (size_t t = 0; t < tensor_sizes_.size(); ++t) {
    const StateRefs refs = const_cast<Optimizer*>(this)->StateOf(t);  // only read
    OptimizerState::Tensor& out = state.tensors[t];
    if (refs.step != nullptr) out.step = *refs.step;
    for (const auto& [name, values] : refs.arrays) {
      out.arrays.push_back({std::string(name), *values});
    }
    for (const auto& [name, value] : refs.scalars)
      out.scalars.emplace_back(std::string(name), *value);
  }
  for (const auto& [name, value] : const_cast<Optimizer*>(this)->GlobalScalars()) {
    state.scalars.emplace_back(std::string(name), *value);
  }
  return state;
}

absl::Status Optimizer::ImportState(const OptimizerState& state) {
  const std::string kind(OptimizerName(options()));
  if (state.tensors.size() != tensor_sizes_.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("optimizer state has %d tensors; the session has %d", state.tensors.size(),
                        tensor_sizes_.size()));
  }
  // Model-wide scalars are matched by name (a checkpoint may hold them in any order).
  const std::vector<std::pair<std::string_view, double*>> globals = GlobalScalars();
  if (globals.empty() && !state.scalars.empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("optimizer state has scalar \"%s\"; %s keeps no model-wide scalars",
                        state.scalars[0].first.substr(0, 64), kind));
  }
  std::vector<double> global_values(globals.size());
  for (size_t k = 0; k < globals.size(); ++k) {
    int found = 0;
    for (const auto& [name, value] : state.scalars) {
      if (name != globals[k].first) continue;
      ++found;
      global_values[k] = value;
    }
    if (found != 1) {
      return absl::InvalidArgumentError(
          absl::StrFormat("optimizer state has model-wide scalar \"%s\" %d times; %s keeps it once",
                          globals[k].first, found, kind));
    }
  }
  if (state.scalars.size() != globals.size()) {
    std::string expected;
    for (const auto& [name, value] : globals) {
      absl::StrAppend(&expected, expected.empty() ? "" : ", ", std::string(name));
    }
    return absl::InvalidArgumentError(
        absl::StrFormat("optimizer state has %d model-wide scalars; %s keeps %d (%s)",
                        state.scalars.size(), kind, globals.size(), expected));
  }
  // Check everything first: nothing changes unless all of it fits.
  for (size_t t = 0; t < tensor_sizes_.size(); ++t) {
    const StateRefs refs = StateOf(t);
    const OptimizerState::Tensor& in = state.tensors[t];
    const std::string where = absl::StrFormat("optimizer state of tensor %d", t);
    if (in.step < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: step = %d is out of range: must be >= 0", where, in.step));
    }
    if (refs.step == nullptr && in.step != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: step = %d, but %s counts no steps (must be 0)", where, in.step, kind));
    }
    if (in.arrays.size() != refs.arrays.size()) {
      std::string expected;
      for (const auto& [name, values] : refs.arrays) {
        absl::StrAppend(&expected, expected.empty() ? "" : ", ", std::string(name));
      }
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s has %d arrays; %s with these options keeps %d (%s)", where, in.arrays.size(), kind,
          refs.arrays.size(), expected.empty() ? "none" : expected));
    }
    for (size_t a = 0; a < in.arrays.size(); ++a) {
      const OptimizerState::Array& array = in.arrays[a];
      if (array.name != refs.arrays[a].first) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: array %d is \"%s\"; %s keeps \"%s\" there", where, a,
                            array.name.substr(0, 64), kind, refs.arrays[a].first));
      }
      // With a step counter, a tensor that has stepped has every array and one that has not has
      // none; without one, each array is created at its first use.
      const bool empty_ok = refs.step == nullptr || in.step == 0;
      const bool full_ok = refs.step == nullptr || in.step > 0;
      const int64_t size = static_cast<int64_t>(array.values.size());
      const int64_t want = ArraySize(t, array.name);
      if (!(size == 0 && empty_ok) && !(size == want && full_ok)) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s: \"%s\" has %d values at step %d; must be %s", where, array.name, size, in.step,
            full_ok ? absl::StrFormat("%d (%s)%s", want,
                                      want == tensor_sizes_[t] ? "the tensor's elements"
                                                               : "this array's length",
                                      empty_ok ? ", or 0 before its first use" : "")
                    : std::string("0 (a tensor that has not stepped has no state)")));
      }
    }
    if (in.scalars.size() != refs.scalars.size()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s has %d scalars; %s keeps %d", where, in.scalars.size(), kind, refs.scalars.size()));
    }
    for (size_t k = 0; k < in.scalars.size(); ++k) {
      if (in.scalars[k].first != refs.scalars[k].first) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s: scalar %d is \"%s\" = %g; %s keeps a finite \"%s\" there", where, k,
            in.scalars[k].first.substr(0, 64), in.scalars[k].second, kind, refs.scalars[k].first));
      }
    }
  }
  for (size_t t = 0; t < tensor_sizes_.size(); ++t) {
    const StateRefs refs = StateOf(t);
    const OptimizerState::Tensor& in = state.tensors[t];
    if (refs.step != nullptr) *refs.step = in.step;
    for (size_t a = 0; a < refs.arrays.size(); ++a) *refs.arrays[a].second = in.arrays[a].values;
    for (size_t k = 0; k < refs.scalars.size(); ++k) *refs.scalars[k].second = in.scalars[k].second;
  }
  for (size_t k = 0; k < globals.size(); ++k) *globals[k].second = global_values[k];
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Optimizer>> CreateOptimizer(const OptimizerOptions& options,
                                                           std::vector<int64_t> tensor_sizes,
                                                           ThreadPool* pool) {
  TensorShapes shapes;
  shapes.reserve(tensor_sizes.size());
  for (int64_t size : tensor_sizes) shapes.push_back({size});
  return CreateOptimizerForShapes(options, shapes, pool);
}

absl::StatusOr<std::unique_ptr<Optimizer>> CreateOptimizerForShapes(const OptimizerOptions& options,
                                                                    const TensorShapes& shapes,
                                                                    ThreadPool* pool) {
  if (absl::Status status = Validate(options); !status.ok()) return status;
  std::vector<int64_t> tensor_sizes;
  for (size_t i = 0; i < shapes.size(); ++i) {
    int64_t size = 1;
    for (size_t d = 0; d < shapes[i].size(); ++d) {
      if (shapes[i][d] < 1 && shapes[i].size() > 1) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "tensor %d: dim %d = %d is out of range: must be >= 1", i, d, shapes[i][d]));
      }
      size *= shapes[i][d];
    }
    tensor_sizes.push_back(size);
  }
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
      [&tensor_sizes, &shapes](const auto& o) -> std::unique_ptr<Optimizer> {
        using Class = typename OptimizerFor<std::decay_t<decltype(o)>>::type;
        if constexpr (std::is_constructible_v<Class, decltype(o), const TensorShapes&>) {
          return std::make_unique<Class>(o, shapes);
        } else {
          return std::make_unique<Class>(o, std::move(tensor_sizes));
        }
      },
      options);
  optimizer->set_pool(pool);
  return optimizer;
}

}  // namespace optd
