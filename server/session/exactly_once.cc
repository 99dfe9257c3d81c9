#include "server/session/exactly_once.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace optd {

int64_t ExactlyOnceTable::OutcomeBytes(const Outcome& outcome) {
  int64_t bytes = sizeof(Outcome);
  for (const std::string& m : outcome.output.missing_workers) {
    bytes += static_cast<int64_t>(sizeof(std::string) + m.size());
  }
  return bytes;
}

int64_t ExactlyOnceTable::EntryBytes(absl::string_view id, const Entry& entry) {
  int64_t bytes = static_cast<int64_t>(sizeof(std::string) + id.size() + sizeof(Entry));
  for (const Outcome& o : entry.recent) bytes += OutcomeBytes(o);
  return bytes;
}

int64_t ExactlyOnceTable::Join(absl::string_view worker_id) {
  Entry& entry = Touch(worker_id);
  entry.incarnation = ++last_incarnation_;
  entry.last_sequence = 0;
  for (const Outcome& o : entry.recent) bytes_ -= OutcomeBytes(o);
  entry.recent.clear();
  return entry.incarnation;
}

absl::StatusOr<const ExactlyOnceTable::Outcome*> ExactlyOnceTable::Find(absl::string_view worker_id,
                                                                        int64_t incarnation,
                                                                        int64_t sequence) const {
  const auto it = workers_.find(worker_id);
  if (it == workers_.end()) {
    if (incarnation > 0) {
      return WithRejoin(absl::FailedPreconditionError(absl::StrCat(
          "worker ", worker_id, " incarnation ", incarnation,
          " is not known to this session: it was forgotten (more than ", options_.max_workers,
          " workers) or the session was restored without it; join again (JoinSession). Whether "
          "a retried step was applied cannot be told")));
    }
    if (forgot_unjoined_) {
      return WithRejoin(absl::FailedPreconditionError(
          absl::StrCat("worker ", worker_id,
                       " did not join and is not known to this session, which has "
                       "forgotten workers (more than ",
                       options_.max_workers,
                       "): it cannot tell a retry from a new step. Join (JoinSession) and send "
                       "worker_incarnation with the steps")));
    }
    return nullptr;
  }
  const Entry& entry = it->second;
  if (incarnation != entry.incarnation) {
    if (entry.incarnation == 0 || incarnation == 0) {
      return WithRejoin(absl::FailedPreconditionError(absl::StrCat(
          "worker ", worker_id,
          incarnation == 0 ? " joined this session: send its worker_incarnation with the steps"
                           : absl::StrCat(" incarnation ", incarnation,
                                          " is not known to this session; join again"))));
    }
    return WithRejoin(absl::FailedPreconditionError(
        absl::StrCat("worker ", worker_id, " incarnation ", incarnation,
                     incarnation < entry.incarnation
                         ? absl::StrCat(" was superseded by incarnation ", entry.incarnation,
                                        " (the worker id joined again, e.g. a restarted process)")
                         : std::string(" is not known to this session"),
                     "; join again (JoinSession)")));
  }
  for (const Outcome& o : entry.recent) {
    if (o.sequence == sequence) return &o;
  }
  if (sequence <= entry.last_sequence) {
    return absl::FailedPreconditionError(absl::StrCat(
        "sequence = ", sequence, " of worker ", worker_id, " is not above its last sequence ",
        entry.last_sequence, " and is not among its ", options_.replay_window,
        " most recent outcomes; a new step needs a larger sequence number"));
  }
  return nullptr;
}

void ExactlyOnceTable::Record(absl::string_view worker_id, int64_t incarnation, int64_t sequence,
                              const StepOutput& output) {
  if (sequence <= 0 || worker_id.empty()) return;
  Entry& entry = Touch(worker_id);
  entry.incarnation = incarnation;
  entry.last_sequence = std::max(entry.last_sequence, sequence);
  Outcome outcome{sequence, output};
  outcome.output.parameters.clear();
  outcome.output.duplicate = false;
  if (outcome.output.missing_workers.size() > kRecordedMissing) {
    outcome.output.missing_workers.resize(kRecordedMissing);
  }
  bytes_ += OutcomeBytes(outcome);
  entry.recent.push_back(std::move(outcome));
  if (static_cast<int>(entry.recent.size()) > options_.replay_window) {
    bytes_ -= OutcomeBytes(entry.recent.front());
    entry.recent.pop_front();
  }
}

ExactlyOnceTable::Entry& ExactlyOnceTable::Touch(absl::string_view worker_id) {
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) {
    if (static_cast<int>(workers_.size()) >= options_.max_workers) {
      auto oldest = workers_.begin();
      for (auto w = workers_.begin(); w != workers_.end(); ++w) {
        if (w->second.last_active < oldest->second.last_active) oldest = w;
      }
      if (oldest->second.incarnation == 0) forgot_unjoined_ = true;
      bytes_ -= EntryBytes(oldest->first, oldest->second);
      workers_.erase(oldest);
    }
    it = workers_.emplace(std::string(worker_id), Entry()).first;
    bytes_ += EntryBytes(worker_id, it->second);
  }
  it->second.last_active = ++activity_;
  return it->second;
}

ExactlyOnceTable::State ExactlyOnceTable::Export() const {
  State state;
  state.workers.reserve(workers_.size());
  for (const auto& [id, e] : workers_) {
    state.workers.push_back({id, e.incarnation, e.last_sequence, e.last_active, e.recent});
  }
  state.last_incarnation = last_incarnation_;
  state.activity = activity_;
  state.forgot_unjoined = forgot_unjoined_;
  return state;
}

ExactlyOnceTable ExactlyOnceTable::Import(State state, ExactlyOnceOptions options) {
  ExactlyOnceTable table(options);
  for (Worker& w : state.workers) {
    Entry& entry = table.workers_[w.id];
    entry = {w.incarnation, w.last_sequence, w.last_active, std::move(w.recent)};
    table.bytes_ += EntryBytes(w.id, entry);
  }
  table.last_incarnation_ = state.last_incarnation;
  table.activity_ = state.activity;
  table.forgot_unjoined_ = state.forgot_unjoined;
  return table;
}

void ExactlyOnceTable::SkipIncarnationsTo(int64_t floor) {
  last_incarnation_ = std::max(last_incarnation_, floor);
}

int64_t ExactlyOnceTable::IncarnationFloor(absl::Time now) {
  return std::max<int64_t>(0, absl::ToUnixMicros(now));
}

}  // namespace optd
