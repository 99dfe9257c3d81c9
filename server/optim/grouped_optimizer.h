// File: grouped_optimizer.h
//
// GroupedOptimizer: an optimizer with parameter groups, as torch.optim's param_groups: the
// tensors are split into groups, and each group is stepped by an optimizer of the same kind with
// its own options (lr, weight_decay, betas, eps, momentum, ...) over its tensors only. Group 0 is
// the session's own optimizer (its options are options()); it may hold no tensor.
//
// Who uses it: the session (server/session), through CreateGroupedOptimizer, when its config has
// parameter groups; Optimizer's API is unchanged for it (Step, ExportState, ImportState, partial
// steps, ...), plus GroupOptions and UpdateGroupOptions.
//
// The step's learning rate (the session schedule's value for group 0's base lr) scales every
// group's own lr by the same factor, lr / base lr(group 0) (1 when that base lr is 0): a constant
// schedule gives each group its own lr, as torch; a multiplicative schedule (step, exponential,
// cosine without a floor, warmup) moves every group's lr as a torch scheduler does.
//
// Optimizers with model-wide state (Prodigy, D-Adaptation, DoG, L-DoG, Schedule-Free: their
// GlobalScalars) take one group only: CreateGroupedOptimizer refuses more with InvalidArgument.
// The update-norm probe is not run for a grouped step (each group's optimizer steps on its own);
// non-finite counts are.
//
// Not thread-safe, like every Optimizer.

#ifndef OPTD_SERVER_OPTIM_GROUPED_OPTIMIZER_H_
#define OPTD_SERVER_OPTIM_GROUPED_OPTIMIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/thread_pool.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

// One parameter group: the indexes of its tensors (into the optimizer's tensors, increasing) and
// its options.
struct ParamGroupSpec {
  std::vector<size_t> tensors;
  OptimizerOptions options;
};

// Declared first so that GroupedOptimizer can befriend it (documented below).
absl::StatusOr<std::unique_ptr<Optimizer>> CreateGroupedOptimizer(
    std::vector<ParamGroupSpec> groups, const TensorShapes& shapes,
    ThreadPool* pool = ThreadPool::Default());

class GroupedOptimizer final : public Optimizer {
 public:
  OptimizerOptions options() const override { return group_options_[0]; }
  int64_t StateBytesPerElement() const override;
  absl::StatusOr<RowSparseRule> RowSparse() const override;
  absl::Status PartialSteps() const override;
  std::vector<std::pair<std::string, double>> Estimates() const override;

  // The number of groups (group 0 included) and group `group`'s tensors and options.
  size_t num_groups() const { return group_options_.size(); }
  const std::vector<size_t>& GroupTensors(size_t group) const { return groups_[group].tensors; }
  const OptimizerOptions& GroupOptions(size_t group) const { return group_options_[group]; }

  // Replaces group `group`'s options as UpdateOptions does (same kind, valid, no structural
  // change; InvalidArgument naming the group otherwise, nothing changed).
  absl::Status UpdateGroupOptions(size_t group, const OptimizerOptions& options);

 private:
  friend absl::StatusOr<std::unique_ptr<Optimizer>> CreateGroupedOptimizer(
      std::vector<ParamGroupSpec> groups, const TensorShapes& shapes, ThreadPool* pool);

  struct Group {
    std::vector<size_t> tensors;
    std::unique_ptr<Optimizer> optimizer;  // null for a group without tensors
  };

  GroupedOptimizer(std::vector<int64_t> tensor_sizes, std::vector<Group> groups,
                   std::vector<OptimizerOptions> options);

  // Whether `o` keeps model-wide scalars (Optimizer::GlobalScalars).
  static bool HasModelWideState(Optimizer& o) { return !o.GlobalScalars().empty(); }

  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  void SetOptions(const OptimizerOptions& options) override;
  std::string_view StructuralChange(const OptimizerOptions& options) const override;
  StateRefs StateOf(size_t tensor) override;
  int64_t ArraySize(size_t tensor, std::string_view array) const override;

  std::vector<Group> groups_;
  std::vector<OptimizerOptions> group_options_;
  // Tensor t is tensor local_[t] of group group_of_[t].
  std::vector<size_t> group_of_;
  std::vector<size_t> local_;
};

// An Optimizer over tensors of `shapes` with the given groups: groups[0] is group 0 (the
// session's options; its tensor list may be empty), every other group holds at least one tensor,
// every tensor is in exactly one group, and every group's options are of groups[0]'s kind and
// valid. A single group is the plain optimizer (CreateOptimizerForShapes). InvalidArgument naming
// the group ("param_groups[i]": i counts the groups after group 0, from 0) otherwise, and for an
// optimizer with model-wide state given more than one group. (Declared above the class.)

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_GROUPED_OPTIMIZER_H_
