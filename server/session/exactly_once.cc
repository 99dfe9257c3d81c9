#include "server/session/exactly_once.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace optd {

absl::StatusOr<const ExactlyOnceTable::Outcome*> ExactlyOnceTable::Find(absl::string_view worker_id,
                                                                        int64_t sequence) const {
  const auto it = workers_.find(worker_id);
  if (it == workers_.end()) return nullptr;
  for (const Outcome& o : it->second.recent) {
    if (o.sequence == sequence) return &o;
  }
  if (sequence <= it->second.last_sequence) {
    return absl::FailedPreconditionError(absl::StrCat(
        "sequence = ", sequence, " of worker ", worker_id, " is not above its last sequence ",
        it->second.last_sequence, " and is not among its ", options_.replay_window,
        " most recent outcomes; a new step needs a larger sequence number"));
  }
  return nullptr;
}

void ExactlyOnceTable::Record(absl::string_view worker_id, int64_t sequence,
                              const StepOutput& output, int64_t version) {
  if (sequence <= 0 || worker_id.empty()) return;
  if (workers_.find(worker_id) == workers_.end() &&
      static_cast<int>(workers_.size()) >= options_.max_workers) {
    auto oldest = workers_.begin();
    for (auto it = workers_.begin(); it != workers_.end(); ++it) {
      if (it->second.last_active < oldest->second.last_active) oldest = it;
    }
    workers_.erase(oldest);
  }
  Entry& record = workers_[worker_id];
  record.last_sequence = std::max(record.last_sequence, sequence);
  record.last_active = version;
  Outcome outcome{sequence, output};
  outcome.output.parameters.clear();
  outcome.output.duplicate = false;
  record.recent.push_back(std::move(outcome));
  if (static_cast<int>(record.recent.size()) > options_.replay_window) record.recent.pop_front();
}

std::vector<ExactlyOnceTable::Worker> ExactlyOnceTable::Export() const {
  std::vector<Worker> workers;
  workers.reserve(workers_.size());
  for (const auto& [id, record] : workers_) {
    workers.push_back({id, record.last_sequence, record.last_active, record.recent});
  }
  return workers;
}

ExactlyOnceTable ExactlyOnceTable::Import(std::vector<Worker> workers, Options options) {
  ExactlyOnceTable table(options);
  for (Worker& w : workers) {
    table.workers_[w.id] = {w.last_sequence, w.last_active, std::move(w.recent)};
  }
  return table;
}

}  // namespace optd
