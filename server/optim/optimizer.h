// File: optimizer.h
//
// The optimizer interface of optd: a small stateful object that applies one update rule to a fixed
// list of float32 tensors. Everything in server/optim is pure math on spans of floats: C++17 and
// abseil only, no protobuf, no gRPC, no Prometheus.
//
// Who may call it: server/session, which owns one Optimizer per session and calls it under the
// session's lock, and tests. An Optimizer is NOT thread-safe: one caller at a time.
//
// Threads: a step over many elements (kParallelMinElements in all) runs its element loops on a
// ThreadPool (parallel.h), by default the process-wide ThreadPool::Default(). The pool is not
// owned by the optimizer and is shared by every optimizer that uses it; it is thread-safe, so
// steps of different sessions may run at once. Step still returns only when the whole update is
// done, and its results are bit-identical whatever the pool size (see UpdateSegments).
//
// Semantics follow torch.optim 1.13 single-tensor code paths (reference/optimizers.md): state is
// created lazily on a tensor's first step, step counters are int64 and per tensor, and scalar
// coefficients are computed in double and rounded to float once per step.
//
// A step is one or two phases. Element-wise optimizers make one pass (UpdateSegments). Those whose
// update needs a quantity over the whole model (normalized GD's global norm, LAMB's and LARS's
// per-tensor norms, Prodigy's and D-Adaptation's sums, DoG's distance) first fold partial sums per
// segment in double (SumPerTensor, SumOverModel: one partial per segment, added in segment order,
// then in tensor order), compute their scalars from the reduced sums, then finish each segment
// with them. The result has the same bits whatever the pool size or block split. The cut and the
// reduction are ModelSegments' (model_segments.h), which gradient clipping uses too. The
// learning-rate-free optimizers keep their model-wide scalars (d, eta, step counts) in the
// exported state (OptimizerState::scalars), so checkpoints carry them.
//
// A step reports what it found out about its own result (StepResult): how many parameters it left
// NaN or inf, counted in the loop that writes them, so the caller learns it without a second pass
// over the parameters.

#ifndef OPTD_SERVER_OPTIM_OPTIMIZER_H_
#define OPTD_SERVER_OPTIM_OPTIMIZER_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/thread_pool.h"
#include "server/optim/model_segments.h"
#include "server/optim/optimizer_options.h"
#include "server/optim/optimizer_state.h"
#include "server/optim/step_probe.h"

namespace optd {

// One tensor of a step: its parameters, updated in place, and its gradient.
// REQUIRES: param.size() == grad.size(), and the two do not overlap.
//
// Row-sparse (row_size > 0): the tensor is a matrix of rows of `row_size` elements and `grad`
// holds only the rows listed in `rows` (sorted, unique, in range), rows.size() * row_size values.
// Only optimizers whose RowSparse() is kLazy take them; the caller densifies for the others.
//
// Absent (a partial step; torch: the parameter's .grad is None): the tensor is skipped exactly as
// torch.optim skips it: its parameters, its state and its step counter are left as they were (no
// weight decay, no moment decay). `grad` must be empty. Every optimizer here keeps its state per
// tensor (StateOf), so Step applies the others with a zero gradient for the absent ones and
// restores the absent ones' parameters and state afterwards; a quantity over the whole model
// (normalized GD's global norm, clipping's) is then the one over the tensors sent, as in torch.
// An optimizer with state that is not per tensor must not accept absent tensors.
struct TensorGrad {
  absl::Span<float> param;
  absl::Span<const float> grad;
  absl::Span<const int64_t> rows;
  int64_t row_size = 0;
  bool absent = false;
  bool sparse() const { return row_size > 0; }
};

// What a step found out about its own result. Filled by Optimizer::Step.
struct StepResult {
  // Parameters the step wrote that are NaN or +-inf after it, over all tensors. A parameter the
  // step did not write is not counted: the rows a row-sparse gradient does not list, and the
  // tensors whose normalized-GD update is zero (a zero gradient, or lr 0), which it skips. A
  // parameter that was already non-finite and is written again is counted again.
  int64_t non_finite_parameters = 0;
  // The tensors holding them (indexes into Step's `tensors`), in increasing order, each once.
  std::vector<int> non_finite_tensors;
  // How many each of those tensors holds (the same order).
  std::vector<int64_t> non_finite_counts;
};

// How an optimizer applies row-sparse gradients.
enum class RowSparseRule {
  kDensify,  // as the dense gradient with zero rows (the same as lazy where no state decays)
  kLazy,     // only the rows sent, and their state, change (torch SparseAdam)
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;

  // Applies one step with learning rate `lr` (the schedule's value for this step; the options'
  // lr is the base) to every tensor. `tensors` lists the tensors in the order and with the sizes
  // given at creation.
  //
  // Absent tensors (TensorGrad::absent) are left exactly as they were; at least one must be
  // present, and the optimizer must take partial steps (PartialSteps()). The step's probe also
  // sees the absent tensors' discarded zero-gradient update. Model-wide scalars that do not depend
  // on the gradients (Schedule-Free's k, weight_sum, lr_max) advance as upstream's per-group
  // counters do when it skips a parameter whose grad is None.
  //
  // Returns InvalidArgument, and changes nothing, if the number of tensors or any size differs
  // from creation, every tensor is absent, some are absent and PartialSteps() refuses, a param
  // and grad size differ, a row-sparse gradient is
  // malformed or not taken by this optimizer (RowSparse() is not kLazy), or `lr` is not finite and
  // >= 0. Does not check that gradients are finite: the caller does, before calling.
  //
  // With a `probe`, calls it around the update of every segment and with the squares of changes
  // made outside that pass (step_probe.h); the optimizer keeps nothing of it after Step returns.
  //
  // With a `result`, replaces *result, on success only, with what the step found out about the
  // parameters it wrote (StepResult). The kernels count in the loops that write the parameters,
  // whether or not a result is asked for: asking costs no pass over the parameters. The counts
  // are the same whatever the pool size; the optimizer keeps nothing of them after Step returns.
  absl::Status Step(absl::Span<const TensorGrad> tensors, double lr, StepProbe* probe = nullptr,
                    StepResult* result = nullptr);

  // The options in force, with every default filled in.
  virtual OptimizerOptions options() const = 0;

  // How row-sparse gradients are applied with the options in force, or InvalidArgument naming the
  // option that forbids them (as torch raises, e.g. Adagrad with weight decay).
  virtual absl::StatusOr<RowSparseRule> RowSparse() const { return RowSparseRule::kDensify; }

  // Whether a step may leave some tensors out (TensorGrad::absent, torch's grad None): OK, or
  // InvalidArgument naming the optimizer and why it cannot (a model-wide estimate summed over
  // every tensor's state each step: Prodigy, D-Adaptation, DoG and L-DoG).
  virtual absl::Status PartialSteps() const { return absl::OkStatus(); }

  // Replaces the options for the next step, keeping all state (moments, accumulators, step
  // counters), as changing a torch param_group does. Returns InvalidArgument, and changes nothing,
  // if `options` holds another optimizer, fails Validate(), or changes an option that decides which
  // state exists (Adam's amsgrad; RMSprop's centered, or momentum to or from 0): that state would
  // have no history.
  absl::Status UpdateOptions(const OptimizerOptions& options);

  // Bytes of optimizer state allocated now (grows as tensors take their first step).
  int64_t StateBytes() const;

  // A copy of the state (optimizer_state.h).
  OptimizerState ExportState() const;

  // Replaces the state with `state`, as if the steps that produced it had been taken here.
  // Returns InvalidArgument naming what does not fit, and changes nothing, if the number of
  // tensors differs, a tensor's arrays are not exactly those the options in force keep (by name)
  // or have the wrong length, a step counter is negative, arrays are present for a tensor that has
  // not stepped (or missing for one that has). Values are taken as they are, non-finite ones too:
  // a checkpoint restores a session exactly, even one a step drove to inf (StepResult).
  absl::Status ImportState(const OptimizerState& state);

  // Bytes of state per parameter element once every tensor has stepped (e.g. 8 for Adam, 12 for
  // Adam with amsgrad, 0 for plain SGD and normalized GD).
  virtual int64_t StateBytesPerElement() const = 0;

  const std::vector<int64_t>& tensor_sizes() const { return tensor_sizes_; }

  // Whether the optimizer keeps an evaluation point apart from the parameters it trains
  // (Schedule-Free's x, whose parameters are the training point y; DoG's iterate average).
  virtual bool HasEvaluationPoint() const { return false; }

  // Writes tensor `tensor`'s evaluation point into `out`, given its current parameters `param`
  // (the training point the caller holds). Before the tensor's first step the evaluation point is
  // the parameters. Returns FailedPrecondition when HasEvaluationPoint() is false, and
  // InvalidArgument if `tensor` or a size is wrong.
  absl::Status EvaluationPoint(size_t tensor, absl::Span<const float> param,
                               absl::Span<float> out) const;

  // The model-wide estimates of a learning-rate-free optimizer, by name, for GetSession, the Step
  // reply and metrics: e.g. Prodigy's {"d", "effective_lr"}, DoG's {"eta"}. Empty for the others.
  virtual std::vector<std::pair<std::string, double>> Estimates() const { return {}; }

  // The pool large steps run on: not owned, and must outlive the optimizer or be replaced before
  // it is destroyed. nullptr runs every step on the calling thread. ThreadPool::Default() unless
  // set. Not thread-safe: set it under the same exclusion as Step.
  void set_pool(ThreadPool* pool) { pool_ = pool; }
  ThreadPool* pool() const { return pool_; }

  // Steps with at least this many elements in all run on the pool.
  static constexpr int64_t kParallelMinElements = ModelSegments::kParallelMinElements;
  // Each tensor is cut into segments of this many elements (model_segments.h).
  static constexpr int64_t kBlockElements = ModelSegments::kBlockElements;

  // How the tensors are cut into segments and sums over them reduced: the layout clipping must use
  // for the same bits (clip.h).
  const ModelSegments& layout() const { return layout_; }

 protected:
  // REQUIRES: tensor_sizes non-empty and every size >= 1 (CreateOptimizer checks).
  explicit Optimizer(std::vector<int64_t> tensor_sizes);

  // Does the work of Step once the sizes are checked: its update pass runs through UpdateSegments
  // (once), and writes outside it go through AddUpdateSquares and AddNonFinite.
  virtual void StepImpl(absl::Span<const TensorGrad> tensors, double lr) = 0;

  // EvaluationPoint once its arguments are checked (HasEvaluationPoint() is true).
  virtual void EvaluationPointImpl(size_t tensor, absl::Span<const float> param,
                                   absl::Span<float> out) const {}

  // Replaces the options; `options` holds this optimizer's kind and is valid.
  virtual void SetOptions(const OptimizerOptions& options) = 0;

  // The name of an option whose new value in `options` would need state that does not exist, or
  // empty when the change is fine.
  virtual std::string_view StructuralChange(const OptimizerOptions& options) const { return {}; }

  // Tensor `tensor`'s state as references into the optimizer's own fields, for ExportState,
  // ImportState and StateBytes: its step counter (null if the optimizer counts none), and the
  // arrays and scalars the options in force keep, by torch.optim's names, in a fixed order.
  // Arrays are empty until the tensor's first step.
  struct StateRefs {
    int64_t* step = nullptr;
    std::vector<std::pair<std::string_view, std::vector<float>*>> arrays;
    std::vector<std::pair<std::string_view, float*>> scalars;
  };
  virtual StateRefs StateOf(size_t tensor) { return {}; }

  // The model-wide scalars the optimizer keeps (Prodigy's d, D-Adaptation's sums, DoG's eta, step
  // counters shared by all tensors), by upstream's names, as references into its own fields, for
  // ExportState and ImportState (OptimizerState::scalars). Counters are held as double. Empty for
  // the optimizers whose state is all per tensor.
  virtual std::vector<std::pair<std::string_view, double*>> GlobalScalars() { return {}; }

  // The length array `array` of tensor `tensor` has once the tensor has stepped: the tensor's
  // elements unless overridden (Adafactor's factored moments, Prodigy's slices are shorter).
  virtual int64_t ArraySize(size_t tensor, std::string_view array) const {
    return tensor_sizes_[tensor];
  }

  // Elements [begin, end) of tensor `tensor`; segments()[index] is this segment.
  using Segment = ModelSegments::Segment;

  // Every tensor cut every kBlockElements elements from its own start (model_segments.h). Fixed
  // at creation: depends only on tensor_sizes().
  const std::vector<Segment>& segments() const { return layout_.segments(); }

  // Calls fn once for every segment: the update pass of a step, which writes the parameters (each
  // StepImpl calls it once). Inline and in order when the step has fewer than
  // kParallelMinElements elements, there is no pool or it has one thread; otherwise on the pool,
  // concurrently and in any order. fn must only write state of its own segment. Elementwise
  // kernels give the same bits either way: a cut does not change the math of any element.
  // With a probe (Step's), fn runs between the probe's BeforeSegment and AfterSegment.
  //
  // fn returns how many of its segment's parameters it left NaN or +-inf (0 for a segment it does
  // not write), counted in the loop that writes them; Step adds them up, per segment and in
  // segment order, into its StepResult.
  void UpdateSegments(const std::function<int64_t(const Segment&)>& fn) const;

  // UpdateSegments for an fn that reports no count (every segment counts 0). Kernels that write
  // parameters call UpdateSegments, so that a step reports the non-finite ones.
  void ForEachSegment(const std::function<void(const Segment&)>& fn) const {
    UpdateSegments([&fn](const Segment& s) -> int64_t {
      fn(s);
      return 0;
    });
  }

  // For parameter changes made outside UpdateSegments (row-sparse updates, before it): tells the
  // step's probe, if any, the sum of their squares. Call on the thread that called Step.
  void AddUpdateSquares(double sum_of_squares) const {
    if (probe_ != nullptr) probe_->AddUpdateSquares(sum_of_squares);
  }

  // For parameters written outside UpdateSegments (row-sparse updates): `count` of those written
  // in tensor `tensor` are NaN or +-inf after the write. Call on the thread that called Step.
  void AddNonFinite(size_t tensor, int64_t count) const {
    if (!tensor_non_finite_.empty()) tensor_non_finite_[tensor] += count;
  }

  // Returns, for each tensor, the kWidth sums over its segments of value(segment), which runs
  // over the segments as UpdateSegments does. Partials are kept per segment and added in segment
  // order, so the result is the same bits whatever the pool size.
  //
  // This is the reduction phase of a two-phase step: optimizers that need a quantity over the
  // whole model fold their partial sums here, then finish the step with UpdateSegments.
  template <size_t kWidth>
  std::vector<std::array<double, kWidth>> SumPerTensor(
      const std::function<std::array<double, kWidth>(const Segment&)>& value) const {
    return layout_.SumPerTensor<kWidth>(pool_, value);
  }

  // The kWidth sums over the whole model: SumPerTensor's per-tensor sums added in tensor order,
  // in double. The same bits whatever the pool size and however the blocks fall.
  template <size_t kWidth>
  std::array<double, kWidth> SumOverModel(
      const std::function<std::array<double, kWidth>(const Segment&)>& value) const {
    return layout_.SumOverModel<kWidth>(pool_, value);
  }

 private:
  // Steps each of its groups with an optimizer of its own (grouped_optimizer.h).
  friend class GroupedOptimizer;

  // An absent tensor of a partial step: the zero gradient the update pass reads, and what it had
  // before the step (parameters, step counter, arrays and scalars in StateOf's order).
  struct AbsentTensor {
    size_t tensor = 0;
    std::vector<float> zeros;
    std::vector<float> param;
    int64_t step = 0;
    std::vector<std::vector<float>> arrays;
    std::vector<float> scalars;
  };
  // Copies tensor `tensor`'s parameters and state aside (may throw std::bad_alloc).
  AbsentTensor Keep(size_t tensor, absl::Span<const float> param);
  // Puts them back after the update pass.
  void PutBack(AbsentTensor kept, absl::Span<float> param);

  // UpdateSegments without measuring or counting (reductions).
  void RunSegments(const std::function<void(const Segment&)>& fn) const { layout_.Run(pool_, fn); }

  const std::vector<int64_t> tensor_sizes_;
  const ModelSegments layout_;
  ThreadPool* pool_ = ThreadPool::Default();

  // The call context of the step in progress (Step is not reentrant), null and empty between
  // steps: its probe and tensors, and, when its caller asked for a StepResult, where its
  // non-finite counts go: one slot per segment (written only by that segment's fn) and one per
  // tensor (AddNonFinite). The counts live in Step's frame.
  StepProbe* probe_ = nullptr;
  absl::Span<const TensorGrad> current_;
  absl::Span<int64_t> segment_non_finite_;
  absl::Span<int64_t> tensor_non_finite_;
};

// Creates the optimizer `options` names for tensors of the given element counts, running large
// steps on `pool` (not owned; see Optimizer::set_pool).
// Returns InvalidArgument, naming the field, value and valid range, if options.Validate() fails or
// `tensor_sizes` is empty or has a size < 1.
absl::StatusOr<std::unique_ptr<Optimizer>> CreateOptimizer(
    const OptimizerOptions& options, std::vector<int64_t> tensor_sizes,
    ThreadPool* pool = ThreadPool::Default());

// The dims of every tensor, in order (row-major; {} or {n} for a vector).
using TensorShapes = std::vector<std::vector<int64_t>>;

// As above, for tensors of the given shapes: the optimizers that treat matrices apart (Muon's
// orthogonalized update, Adafactor's factored moments) use them; the others see only the element
// counts. Also InvalidArgument if a dim is < 1.
absl::StatusOr<std::unique_ptr<Optimizer>> CreateOptimizerForShapes(
    const OptimizerOptions& options, const TensorShapes& shapes,
    ThreadPool* pool = ThreadPool::Default());

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_OPTIMIZER_H_
