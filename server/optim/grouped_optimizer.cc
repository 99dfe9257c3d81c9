// GroupedOptimizer: one optimizer of the session's kind per parameter group (grouped_optimizer.h).

#include "server/optim/grouped_optimizer.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace optd {
namespace {

// "param_groups[i]" for group g >= 1 (the groups after group 0 count from 0, as the contract's
// SessionConfig.param_groups); "the session's optimizer" for group 0.
std::string GroupName(size_t group) {
  return group == 0 ? std::string("the session's optimizer")
                    : absl::StrCat("param_groups[", group - 1, "]");
}

}  // namespace

GroupedOptimizer::GroupedOptimizer(std::vector<int64_t> tensor_sizes, std::vector<Group> groups,
                                   std::vector<OptimizerOptions> options)
    : Optimizer(tensor_sizes),
      groups_(std::move(groups)),
      group_options_(std::move(options)),
      group_of_(tensor_sizes.size()),
      local_(tensor_sizes.size()) {
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (size_t i = 0; i < groups_[g].tensors.size(); ++i) {
      group_of_[groups_[g].tensors[i]] = g;
      local_[groups_[g].tensors[i]] = i;
    }
  }
}

int64_t GroupedOptimizer::StateBytesPerElement() const {
  int64_t most = 0;
  for (const Group& g : groups_) {
    if (g.optimizer != nullptr) most = std::max(most, g.optimizer->StateBytesPerElement());
  }
  return most;
}

absl::StatusOr<RowSparseRule> GroupedOptimizer::RowSparse() const {
  RowSparseRule rule = RowSparseRule::kLazy;
  for (const Group& g : groups_) {
    if (g.optimizer == nullptr) continue;
    absl::StatusOr<RowSparseRule> r = g.optimizer->RowSparse();
    if (!r.ok()) return r.status();
    if (*r != RowSparseRule::kLazy) rule = *r;
  }
  return rule;
}

absl::Status GroupedOptimizer::PartialSteps() const {
  for (const Group& g : groups_) {
    if (g.optimizer == nullptr) continue;
    if (absl::Status s = g.optimizer->PartialSteps(); !s.ok()) return s;
  }
  return absl::OkStatus();
}

std::vector<std::pair<std::string, double>> GroupedOptimizer::Estimates() const {
  std::vector<std::pair<std::string, double>> out;
  for (size_t g = 0; g < groups_.size(); ++g) {
    if (groups_[g].optimizer == nullptr) continue;
    for (auto& [name, value] : groups_[g].optimizer->Estimates()) {
      out.emplace_back(g == 0 ? name : absl::StrCat("param_groups[", g - 1, "].", name), value);
    }
  }
  return out;
}

absl::Status GroupedOptimizer::UpdateGroupOptions(size_t group, const OptimizerOptions& options) {
  if (group >= groups_.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("param_groups[%d] does not exist: the session has %d parameter groups",
                        static_cast<int64_t>(group) - 1, groups_.size() - 1));
  }
  if (group == 0) return UpdateOptions(options);
  Optimizer* o = groups_[group].optimizer.get();
  if (absl::Status s = o->UpdateOptions(options); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(GroupName(group), ": ", s.message()));
  }
  group_options_[group] = options;
  return absl::OkStatus();
}

void GroupedOptimizer::SetOptions(const OptimizerOptions& options) {
  group_options_[0] = options;
  if (groups_[0].optimizer != nullptr) groups_[0].optimizer->SetOptions(options);
}

std::string_view GroupedOptimizer::StructuralChange(const OptimizerOptions& options) const {
  if (groups_[0].optimizer == nullptr) return {};
  return groups_[0].optimizer->StructuralChange(options);
}

Optimizer::StateRefs GroupedOptimizer::StateOf(size_t tensor) {
  return groups_[group_of_[tensor]].optimizer->StateOf(local_[tensor]);
}

int64_t GroupedOptimizer::ArraySize(size_t tensor, std::string_view array) const {
  return groups_[group_of_[tensor]].optimizer->ArraySize(local_[tensor], array);
}

void GroupedOptimizer::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  const double base = BaseLearningRate(group_options_[0]);
  const double factor = base > 0.0 ? lr / base : 1.0;
  std::vector<TensorGrad> part;
  for (size_t g = 0; g < groups_.size(); ++g) {
    Group& group = groups_[g];
    if (group.optimizer == nullptr) continue;
    part.clear();
    for (size_t t : group.tensors) part.push_back(tensors[t]);
    const double group_lr = g == 0 ? lr : BaseLearningRate(group_options_[g]) * factor;
    StepResult result;
    // Checked by Step (sizes, rows, lr >= 0: factor and each group's lr are); absent tensors
    // arrive with Step's zero gradient and are put back by it.
    absl::Status s = group.optimizer->Step(part, group_lr, nullptr, &result);
    if (!s.ok()) continue;  // unreachable: every check of the inner Step was made by the outer
    for (size_t k = 0; k < result.non_finite_tensors.size(); ++k) {
      AddNonFinite(group.tensors[result.non_finite_tensors[k]], result.non_finite_counts[k]);
    }
  }
}

absl::StatusOr<std::unique_ptr<Optimizer>> CreateGroupedOptimizer(
    std::vector<ParamGroupSpec> groups, const TensorShapes& shapes, ThreadPool* pool) {
  if (groups.empty()) return absl::InvalidArgumentError("a grouped optimizer needs group 0");
  if (groups.size() == 1) return CreateOptimizerForShapes(groups[0].options, shapes, pool);
  const OptimizerOptions& first = groups[0].options;
  if (absl::Status s = Validate(first); !s.ok()) return s;
  std::vector<int> owner(shapes.size(), -1);
  for (size_t g = 0; g < groups.size(); ++g) {
    const std::string name = GroupName(g);
    if (g > 0 && groups[g].tensors.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ".tensors is empty: a parameter group needs at least one tensor"));
    }
    if (g > 0 && groups[g].options.index() != first.index()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ".optimizer is ", std::string(OptimizerName(groups[g].options)),
                       " but the session's optimizer is ", std::string(OptimizerName(first)),
                       "; every parameter group runs the session's optimizer kind"));
    }
    if (absl::Status s = Validate(groups[g].options); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": ", s.message()));
    }
    std::sort(groups[g].tensors.begin(), groups[g].tensors.end());
    for (size_t t : groups[g].tensors) {
      if (t >= shapes.size()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: tensor %d does not exist (%d tensors)", name, t, shapes.size()));
      }
      if (owner[t] >= 0) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: tensor %d is already in %s; a tensor is in one group only", name,
                            t, GroupName(static_cast<size_t>(owner[t]))));
      }
      owner[t] = static_cast<int>(g);
    }
  }
  for (size_t t = 0; t < shapes.size(); ++t) {
    if (owner[t] < 0) {
      return absl::InvalidArgumentError(absl::StrFormat("tensor %d is in no parameter group", t));
    }
  }
  std::vector<int64_t> sizes;
  for (const std::vector<int64_t>& shape : shapes) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    sizes.push_back(n);
  }
  std::vector<GroupedOptimizer::Group> built;
  std::vector<OptimizerOptions> options;
  for (size_t g = 0; g < groups.size(); ++g) {
    GroupedOptimizer::Group group;
    group.tensors = groups[g].tensors;
    options.push_back(groups[g].options);
    if (!group.tensors.empty()) {
      TensorShapes part;
      for (size_t t : group.tensors) part.push_back(shapes[t]);
      absl::StatusOr<std::unique_ptr<Optimizer>> o =
          CreateOptimizerForShapes(groups[g].options, part, pool);
      if (!o.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(GroupName(g), ": ", o.status().message()));
      }
      if (GroupedOptimizer::HasModelWideState(**o)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "param_groups: ", std::string(OptimizerName(first)),
            " keeps model-wide state (its estimates and counters span every tensor), so a session "
            "runs it as one group; give no param_groups, or make a session per group"));
      }
      group.optimizer = *std::move(o);
    }
    built.push_back(std::move(group));
  }
  std::unique_ptr<Optimizer> grouped(
      new GroupedOptimizer(std::move(sizes), std::move(built), std::move(options)));
  grouped->set_pool(pool);
  return grouped;
}

}  // namespace optd
