// Session::Update, Freeze and Thaw: what changes a session without a step. UpdateSession (new
// options, schedule, clipping, an imported optimizer state: all of it or nothing), and freezing a
// session for its unload checkpoint. The contract is in session.h.

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/quote.h"
#include "server/optim/grouped_optimizer.h"
#include "server/session/session.h"

namespace optd {
namespace {

// The largest step counter an imported state may carry: far beyond any run, and small enough that
// counting on cannot overflow (and that a double holds it exactly).
constexpr int64_t kMaxImportedStep = int64_t{1} << 53;

// Optimizer state arrays that are sums or averages of squares: never negative.
bool IsNonNegativeState(absl::string_view name) {
  return name == "exp_avg_sq" || name == "max_exp_avg_sq" || name == "sum" ||
         name == "square_avg" || name == "acc_delta";
}

}  // namespace

absl::Status Session::ImportStateLocked(const OptimizerState& given) {
  // The arrays in the optimizer's own order, matched by name.
  OptimizerState state = optimizer_->ExportState();
  if (given.tensors.size() != state.tensors.size()) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer_state has ", given.tensors.size(),
                                                   " tensors; the session has ",
                                                   state.tensors.size()));
  }
  for (size_t t = 0; t < state.tensors.size(); ++t) {
    OptimizerState::Tensor& into = state.tensors[t];
    const OptimizerState::Tensor& from = given.tensors[t];
    if (from.arrays.size() != into.arrays.size()) {
      std::vector<std::string> names;
      for (const auto& a : into.arrays) names.push_back(a.name);
      return absl::InvalidArgumentError(absl::StrCat(
          "optimizer_state of tensor ", Quote(specs_[t].name), " has ", from.arrays.size(),
          " arrays; ", std::string(OptimizerName(optimizer_->options())),
          " with these options keeps ", into.arrays.size(),
          names.empty() ? "" : absl::StrCat(" (", absl::StrJoin(names, ", "), ")")));
    }
    const std::string where = absl::StrCat("optimizer_state of tensor ", Quote(specs_[t].name));
    if (from.step < 0 || from.step > kMaxImportedStep) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": step = ", from.step, " is out of range: must be in [0, 2^53]"));
    }
    into.step = from.step;
    for (OptimizerState::Array& a : into.arrays) {
      auto match = std::find_if(from.arrays.begin(), from.arrays.end(),
                                [&](const OptimizerState::Array& b) { return b.name == a.name; });
      if (match == from.arrays.end()) {
        return absl::InvalidArgumentError(absl::StrCat(where, " has no array ", Quote(a.name)));
      }
      // A value the optimizer could never have made poisons every later step: refused here
      // (a checkpoint restores whatever the session held, non-finite values included).
      const bool non_negative = IsNonNegativeState(a.name);
      for (size_t i = 0; i < match->values.size(); ++i) {
        const float v = match->values[i];
        if (!std::isfinite(v) || (non_negative && v < 0)) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": ", Quote(a.name), " element ", i,
                                                         " is ", v, "; every value must be finite",
                                                         non_negative ? " and >= 0" : ""));
        }
      }
      a.values = match->values;
    }
    for (const auto& [name, value] : from.scalars) {
      if (!std::isfinite(value)) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": scalar ", Quote(name), " is ", value, "; it must be finite"));
      }
    }
    into.scalars = from.scalars;
  }
  state.scalars = given.scalars;
  return optimizer_->ImportState(state);
}

absl::Status Session::Update(const SessionUpdate& update) {
  Touch();
  if (update.clipping.has_value()) {
    if (absl::Status s = update.clipping->Validate(); !s.ok()) return s;
  }
  absl::MutexLock lock(&mu_);
  if (!closed_.ok()) return closed_;
  OptimizerOptions options = optimizer_->options();
  if (update.optimizer) {
    if (absl::Status s = update.optimizer(&options); !s.ok()) return s;
    if (options.index() != optimizer_->options().index()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "optimizer is ", std::string(OptimizerName(options)), " but the session runs ",
          std::string(OptimizerName(optimizer_->options())), "; the optimizer kind cannot change"));
    }
  }
  if (placement_.has_value()) {  // a shard keeps running what its placement allows
    if (absl::Status s = CheckShardable(*placement_, options, update.clipping.value_or(clipping_));
        !s.ok()) {
      return s;
    }
  }
  // Parameter groups' new options (index into SessionConfig::param_groups = group - 1), checked
  // here and applied with the session's own below: all of them or none.
  auto* grouped = dynamic_cast<GroupedOptimizer*>(optimizer_.get());
  std::vector<std::pair<size_t, OptimizerOptions>> group_options;
  for (const auto& [index, edit] : update.param_groups) {
    const size_t groups = grouped == nullptr ? 0 : grouped->num_groups() - 1;
    if (index < 0 || static_cast<size_t>(index) >= groups) {
      return absl::InvalidArgumentError(
          absl::StrCat("param_groups: index = ", index, " is out of range: the session has ",
                       groups, " parameter groups",
                       groups == 0 ? "" : absl::StrCat(" (indexes 0 to ", groups - 1, ")")));
    }
    for (const auto& [seen, unused] : group_options) {
      if (seen == static_cast<size_t>(index) + 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("param_groups: index ", index, " is given twice; once per group"));
      }
    }
    OptimizerOptions o = grouped->GroupOptions(index + 1);
    if (absl::Status s = edit(&o); !s.ok()) return s;
    group_options.emplace_back(index + 1, std::move(o));
  }
  const double base_lr = update.optimizer ? BaseLearningRate(options) : schedule_.base_lr();
  // Build the new schedule first: nothing changes unless every part is valid.
  LrSchedule schedule = schedule_;
  if (update.schedule.has_value()) {
    absl::StatusOr<LrSchedule> fresh = LrSchedule::Create(*update.schedule, base_lr);
    if (!fresh.ok()) return fresh.status();
    LrScheduleState state = fresh->state();
    state.step = schedule_.steps();  // the new schedule continues at the current step
    if (absl::Status s = fresh->RestoreState(state); !s.ok()) return s;
    schedule = *std::move(fresh);
  } else if (base_lr != schedule_.base_lr()) {
    if (absl::Status s = schedule.SetBaseLr(base_lr); !s.ok()) return s;
  }
  // The new options first (the imported state is laid out as they say), taken back if the state
  // does not fit them: nothing changes unless every part is valid.
  //
  // Memory: the state may grow to what the new options keep (SGD's momentum turned on) and an
  // imported state may hold more than the options need (a momentum buffer for SGD without
  // momentum): whichever is more is reserved first. What neither needs any more (momentum turned
  // off) is given back after.
  int64_t needed = state_reservation_.bytes();
  if (update.optimizer) {
    absl::StatusOr<std::unique_ptr<Optimizer>> probe = CreateOptimizer(options, {1});
    if (probe.ok()) needed = specs_.num_elements() * (*probe)->StateBytesPerElement();
  }
  for (const auto& [group, o] : group_options) {  // a group's state may grow too (at most all)
    absl::StatusOr<std::unique_ptr<Optimizer>> probe = CreateOptimizer(o, {1});
    if (probe.ok()) {
      needed = std::max(needed, specs_.num_elements() * (*probe)->StateBytesPerElement());
    }
  }
  int64_t imported = 0;
  if (update.optimizer_state.has_value()) {
    for (const OptimizerState::Tensor& t : update.optimizer_state->tensors) {
      for (const OptimizerState::Array& a : t.arrays) {
        imported += static_cast<int64_t>(a.values.size() * sizeof(float));
      }
    }
  }
  MemoryReservation more;
  if (const int64_t want = std::max(needed, imported); want > state_reservation_.bytes()) {
    absl::StatusOr<MemoryReservation> reserved = budget_->Reserve(
        want - state_reservation_.bytes(), absl::StrCat("the optimizer state of session ", id_));
    if (!reserved.ok()) return reserved.status();
    more = *std::move(reserved);
  }
  const OptimizerOptions old_options = optimizer_->options();
  std::vector<std::pair<size_t, OptimizerOptions>> old_groups;
  // Puts back what was applied (every old value was valid) when a later part is refused. (The
  // optimizer is read here, under mu_: the lambda itself is not analysed as holding it.)
  Optimizer* const optimizer = optimizer_.get();
  auto undo = [&] {
    if (update.optimizer) optimizer->UpdateOptions(old_options).IgnoreError();
    for (const auto& [group, o] : old_groups) grouped->UpdateGroupOptions(group, o).IgnoreError();
  };
  if (update.optimizer) {
    if (absl::Status s = optimizer_->UpdateOptions(options); !s.ok()) return s;
  }
  for (const auto& [group, o] : group_options) {
    const OptimizerOptions old = grouped->GroupOptions(group);
    if (absl::Status s = grouped->UpdateGroupOptions(group, o); !s.ok()) {
      undo();
      return s;
    }
    old_groups.emplace_back(group, old);
  }
  if (update.optimizer_state.has_value()) {
    if (absl::Status s = ImportStateLocked(*update.optimizer_state); !s.ok()) {
      undo();
      return s;
    }
  }
  state_reservation_.Absorb(std::move(more));
  const int64_t keep = std::max(needed, optimizer_->StateBytes());
  state_reservation_.Split(state_reservation_.bytes() - keep);  // dropped: given back
  schedule_ = std::move(schedule);
  if (update.clipping.has_value()) clipping_ = *update.clipping;
  ++revision_;
  return absl::OkStatus();
}

bool Session::Freeze(const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  if (barrier_.contributions() > 0 || !closed_.ok()) return false;
  closed_ = status;
  return true;
}

void Session::Thaw(const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  if (closed_ == status) closed_ = absl::OkStatus();  // deleted meanwhile: stays closed
}

int64_t Session::revision() const {
  absl::ReaderMutexLock lock(&mu_);
  return revision_;
}

}  // namespace optd
