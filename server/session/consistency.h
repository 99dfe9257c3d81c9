// File: consistency.h
//
// ConsistencyOptions: how a session turns gradients from many workers into steps (ASYNC, SYNC with
// a barrier, BOUNDED staleness), with defaults in place and a Validate() that names the field, the
// value and the valid range. Plain data, thread-compatible.

#ifndef OPTD_SERVER_SESSION_CONSISTENCY_H_
#define OPTD_SERVER_SESSION_CONSISTENCY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace optd {

struct ConsistencyOptions {
  enum class Mode {
    kAsync,    // apply each gradient on arrival
    kSync,     // combine `workers` gradients of the current version into one step
    kBounded,  // apply on arrival unless the gradient is more than `max_staleness` versions old
  };
  enum class Reduce { kMean, kSum };

  Mode mode = Mode::kAsync;

  // Parameters that affect SYNC only.
  int workers = 1;                      // K, in [1, kMaxSyncWorkers]
  std::vector<std::string> worker_ids;  // if not empty, exactly K distinct ids
  Reduce reduce = Reduce::kMean;
  absl::Duration barrier_timeout = absl::Seconds(30);  // in (0, 1 day]
  int quorum = 0;                                      // in [0, workers]; 0 means workers

  // Parameters that affect BOUNDED only.
  int64_t max_staleness = 0;  // S >= 0

  static constexpr int kMaxSyncWorkers = 4096;

  absl::Status Validate() const;

  // The quorum in force: `quorum`, or `workers` when it is 0.
  int effective_quorum() const { return quorum == 0 ? workers : quorum; }
};

// "ASYNC", "SYNC", "BOUNDED".
const char* ModeName(ConsistencyOptions::Mode mode);

// Returns InvalidArgument unless `id` is 1-128 characters of [A-Za-z0-9._:-].
absl::Status ValidateWorkerId(const std::string& field, const std::string& id);

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_CONSISTENCY_H_
