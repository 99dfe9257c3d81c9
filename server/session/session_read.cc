// Session::Pull, Info and Snapshot: what reads a session without changing it (parameters, rows,
// optimizer state, at one version). The contract is in session.h.

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/quote.h"
#include "server/optim/grouped_optimizer.h"
#include "server/session/session.h"

namespace optd {

WireTensor Session::TensorOf(int index, WireDType dtype) const {
  // Encoded when the reply is written, outside the lock.
  return {specs_[index].name,
          specs_[index].shape,
          dtype,
          TensorBytes::Shared(parameters_.Share(index)),
          false,
          {}};
}

WireTensor Session::RowsOf(int index, absl::Span<const int64_t> rows, WireDType dtype) const {
  return {specs_[index].name,
          specs_[index].shape,
          dtype,
          TensorBytes::Owned(parameters_.EncodeRows(index, rows, specs_[index].row_size(), dtype)),
          true,
          std::vector<int64_t>(rows.begin(), rows.end())};
}

absl::StatusOr<PullOutput> Session::Pull(absl::Span<const absl::string_view> names, WireDType dtype,
                                         absl::Span<const RowSelection> rows,
                                         bool include_optimizer_state, ParameterPoint point) const {
  Touch();
  if (include_optimizer_state && !rows.empty()) {
    return absl::InvalidArgumentError(
        "include_optimizer_state returns whole tensors' state: it cannot be combined with rows");
  }
  if (point == ParameterPoint::kEvaluation) {
    if (!rows.empty()) {
      return absl::InvalidArgumentError(
          "point = EVALUATION returns whole tensors: it cannot be combined with rows");
    }
    absl::ReaderMutexLock lock(&mu_);
    if (!optimizer_->HasEvaluationPoint()) {
      return absl::FailedPreconditionError(
          absl::StrCat("point = EVALUATION: ", std::string(OptimizerName(optimizer_->options())),
                       " keeps no evaluation point apart from its parameters (Schedule-Free and "
                       "DoG with averaging do)"));
    }
  }
  std::vector<int> indices;
  if (names.empty()) {
    for (int k = 0; k < specs_.size(); ++k) indices.push_back(k);
  } else {
    std::vector<bool> seen(specs_.size(), false);
    for (size_t i = 0; i < names.size(); ++i) {
      const int k = specs_.Find(names[i]);
      if (k < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("names[", i, "] ", Quote(names[i]), " is not a tensor of session ", id_));
      }
      if (seen[k]) {
        return absl::InvalidArgumentError(
            absl::StrCat("names[", i, "] ", Quote(names[i]), " is repeated"));
      }
      seen[k] = true;
      indices.push_back(k);
    }
  }
  // For each tensor, the rows to return (null: all of it).
  std::vector<const RowSelection*> selection(specs_.size(), nullptr);
  for (size_t i = 0; i < rows.size(); ++i) {
    const int k = specs_.Find(rows[i].name);
    if (k < 0 || std::find(indices.begin(), indices.end(), k) == indices.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "rows[", i, "].name ", Quote(rows[i].name), " is not ",
          k < 0 ? absl::StrCat("a tensor of session ", id_) : std::string("among names")));
    }
    if (selection[k] != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("rows[", i, "].name ", Quote(rows[i].name), " is repeated"));
    }
    if (specs_[k].shape.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("rows[", i, "].name ", Quote(rows[i].name),
                                                     " is a scalar; rows need rank >= 1"));
    }
    for (size_t r = 0; r < rows[i].rows.size(); ++r) {
      if (rows[i].rows[r] < 0 || rows[i].rows[r] >= specs_[k].shape[0]) {
        return absl::InvalidArgumentError(
            absl::StrCat("rows[", i, "].indices[", r, "] = ", rows[i].rows[r],
                         " is out of range: must be in [0, ", specs_[k].shape[0], ")"));
      }
    }
    selection[k] = &rows[i];
  }
  // The reply must fit before anything is gathered.
  if (max_reply_bytes_ > 0) {
    int64_t bytes = kReplyFieldsBound;
    for (int k : indices) {
      const TensorSpec& spec = specs_[k];
      const int64_t num_rows =
          selection[k] != nullptr ? static_cast<int64_t>(selection[k]->rows.size()) : 0;
      const int64_t n = selection[k] != nullptr ? num_rows * spec.row_size() : spec.num_elements;
      bytes += TensorMessageBound(static_cast<int64_t>(spec.name.size()),
                                  static_cast<int64_t>(spec.shape.size()), num_rows,
                                  n * BytesPerElement(dtype));
      if (include_optimizer_state) {
        bytes += (spec.num_elements * StateBytesPerElementUnlocked() + 256) +
                 static_cast<int64_t>(spec.name.size()) * 4;
      }
      if (bytes > max_reply_bytes_) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "the reply would take more than ", max_reply_bytes_,
            " bytes, the server's limit (--max_message_bytes), by tensor ", Quote(spec.name),
            num_rows > 0 ? absl::StrCat(" (", num_rows, " rows)") : std::string(),
            "; nothing was gathered. Pull fewer tensors or rows at a time, or a 2-byte dtype"));
      }
    }
  }
  PullOutput out;
  {
    std::vector<std::optional<std::vector<int64_t>>> rows_of(specs_.size());
    for (int k : indices) {
      if (selection[k] != nullptr) {
        rows_of[k] = std::vector<int64_t>(selection[k]->rows.begin(), selection[k]->rows.end());
      }
    }
    // Encoded sizes: whole tensors (unless F32, which share the parameters) and rows.
    const int64_t width = BytesPerElement(dtype);
    int64_t bytes = 0;
    for (int k : indices) {
      bytes += selection[k] != nullptr
                   ? static_cast<int64_t>(selection[k]->rows.size()) * specs_[k].row_size() * width
                   : (dtype != WireDType::kF32 ? specs_[k].num_elements * width : 0);
      // The evaluation point is a float32 copy.
      if (point == ParameterPoint::kEvaluation) {
        bytes += specs_[k].num_elements * static_cast<int64_t>(sizeof(float));
      }
    }
    if (bytes > 0) {
      absl::StatusOr<MemoryReservation> reserved =
          budget_->Reserve(bytes, absl::StrCat("the encoded reply of session ", id_));
      if (!reserved.ok()) return reserved.status();
      out.encoding = std::make_shared<MemoryReservation>(*std::move(reserved));
    }
  }
  absl::ReaderMutexLock lock(&mu_);
  out.version = version_;
  if (include_optimizer_state) {
    OptimizerState all = optimizer_->ExportState();
    OptimizerState& pulled = out.optimizer_state.emplace();
    pulled.scalars = std::move(all.scalars);
    for (int k : indices) {
      pulled.tensors.push_back(std::move(all.tensors[k]));
      out.tensor_names.push_back(specs_[k]);
    }
  }
  out.tensors.reserve(indices.size());
  out.point = point;
  for (int k : indices) {
    if (point == ParameterPoint::kEvaluation) {
      out.tensors.push_back(EvaluationTensorOf(k, dtype));
      continue;
    }
    out.tensors.push_back(selection[k] != nullptr ? RowsOf(k, selection[k]->rows, dtype)
                                                  : TensorOf(k, dtype));
  }
  return out;
}

SessionConfig Session::ConfigLocked() const {
  SessionConfig config;
  config.optimizer = optimizer_->options();
  if (const auto* grouped = dynamic_cast<const GroupedOptimizer*>(optimizer_.get())) {
    for (size_t g = 1; g < grouped->num_groups(); ++g) {
      ParamGroupConfig group;
      for (size_t t : grouped->GroupTensors(g)) group.tensors.push_back(specs_[t].name);
      group.optimizer = grouped->GroupOptions(g);
      config.param_groups.push_back(std::move(group));
    }
  }
  config.schedule = schedule_.options();
  config.clipping = clipping_;
  config.consistency = consistency_;
  config.placement = placement_;
  return config;
}

SessionInfo Session::Info() const {
  SessionInfo info;
  info.id = id_;
  info.tensors = specs_.all();
  info.create_time = create_time_;
  info.num_parameters = specs_.num_elements();
  info.parameter_bytes = info.num_parameters * static_cast<int64_t>(sizeof(float));
  absl::ReaderMutexLock lock(&mu_);
  info.config = ConfigLocked();
  info.learning_rate = schedule_.Current();
  info.version = version_;
  info.optimizer_state_bytes = optimizer_->StateBytes();
  info.state_bytes_per_parameter = optimizer_->StateBytesPerElement();
  info.memory = MemoryLocked();
  info.estimates = optimizer_->Estimates();
  return info;
}

SessionState Session::Snapshot() const {
  absl::ReaderMutexLock lock(&mu_);
  return SnapshotLocked();
}

SessionState Session::SnapshotLocked() const {
  SessionState state;
  state.id = id_;
  state.tensors = specs_.all();
  state.create_time = create_time_;
  state.config = ConfigLocked();
  state.parameters.reserve(specs_.size());
  for (int k = 0; k < specs_.size(); ++k) state.parameters.push_back(parameters_.Share(k));
  state.optimizer = optimizer_->ExportState();
  state.schedule = schedule_.state();
  state.version = version_;
  state.revision = revision_;
  state.exactly_once = exactly_once_.Export();
  state.sync_workers_seen = barrier_.known_workers();
  return state;
}

}  // namespace optd
