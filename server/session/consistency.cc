#include "server/session/consistency.h"

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "base/quote.h"

namespace optd {

const char* ModeName(ConsistencyOptions::Mode mode) {
  switch (mode) {
    case ConsistencyOptions::Mode::kAsync:
      return "ASYNC";
    case ConsistencyOptions::Mode::kSync:
      return "SYNC";
    case ConsistencyOptions::Mode::kBounded:
      return "BOUNDED";
  }
  return "?";
}

absl::Status ValidateWorkerId(const std::string& field, const std::string& id) {
  constexpr size_t kMaxLength = 128;
  bool ok = !id.empty() && id.size() <= kMaxLength;
  for (char c : id) {
    ok &= (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '_' || c == ':' || c == '-';
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " ", Quote(id),
                   " is not a valid worker id: must be 1 to 128 characters of [A-Za-z0-9._:-]"));
}

absl::Status ConsistencyOptions::Validate() const {
  if (mode != Mode::kSync) {
    if (max_staleness < 0) {
      return absl::InvalidArgumentError(absl::StrCat("consistency.max_staleness = ", max_staleness,
                                                     " is out of range: must be >= 0"));
    }
    return absl::OkStatus();
  }
  if (workers < 1 || workers > kMaxSyncWorkers) {
    return absl::InvalidArgumentError(absl::StrCat("consistency.workers = ", workers,
                                                   " is out of range: must be in [1, ",
                                                   kMaxSyncWorkers, "]"));
  }
  if (!worker_ids.empty()) {
    if (static_cast<int>(worker_ids.size()) != workers) {
      return absl::InvalidArgumentError(
          absl::StrCat("consistency.worker_ids has ", worker_ids.size(),
                       " ids but consistency.workers = ", workers, "; they must be equal"));
    }
    absl::flat_hash_set<std::string> seen;
    for (size_t i = 0; i < worker_ids.size(); ++i) {
      const std::string field = absl::StrCat("consistency.worker_ids[", i, "]");
      if (absl::Status s = ValidateWorkerId(field, worker_ids[i]); !s.ok()) return s;
      if (!seen.insert(worker_ids[i]).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, " ", Quote(worker_ids[i]), " is repeated; ids must be distinct"));
      }
    }
  }
  if (quorum < 0 || quorum > workers) {
    return absl::InvalidArgumentError(absl::StrCat("consistency.quorum = ", quorum,
                                                   " is out of range: must be in [0, ", workers,
                                                   "] (0 means all workers)"));
  }
  if (barrier_timeout <= absl::ZeroDuration() || barrier_timeout > absl::Hours(24)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "consistency.barrier_timeout_seconds = ", absl::ToDoubleSeconds(barrier_timeout),
        " is out of range: must be in (0, 86400]"));
  }
  return absl::OkStatus();
}

}  // namespace optd
