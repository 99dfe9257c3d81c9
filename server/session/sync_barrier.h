// File: sync_barrier.h
//
// SyncBarrier: the SYNC barrier of a session's current version. Each of K workers contributes one
// gradient; the barrier keeps them and the calls waiting for the result, and hands everything
// over in one piece when it completes (K gradients, or a quorum at its deadline) or fails (quorum
// not reached, session closed). Then the next barrier opens, with a new id, so a deadline set for
// an old barrier finds it gone.
//
// The reduction does not depend on the order the contributions arrived in: at completion they
// are summed in double in the order of their workers' ids (sparse ones by row; finite float32
// values cannot overflow a double), and the mean or sum rounded to float32 once. So the same
// workers sending the same gradients give the same bits however the network orders them (a double
// sum of float32 values depends on its order once they span more than ~29 bits of magnitude).
//
// A retry of a contribution still waiting (same worker, same sequence) waits for the same outcome
// (IsPending, AttachRetry) instead of contributing twice. The barrier also remembers every worker
// that ever contributed, to name the missing ones when the session does not list its workers.
//
// Who uses it: Session, under its lock; the session schedules the deadline (DeadlineScheduler)
// when Add opens a barrier and applies the reduced gradient. NOT thread-safe. Holds no lock while
// calling anything: waiters' callbacks are only moved, never called, here.

#ifndef OPTD_SERVER_SESSION_SYNC_BARRIER_H_
#define OPTD_SERVER_SESSION_SYNC_BARRIER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "base/thread_pool.h"
#include "server/session/consistency.h"
#include "server/session/gradient.h"
#include "server/session/memory_budget.h"
#include "server/session/step.h"
#include "server/session/tensor_spec.h"

namespace optd {

class SyncBarrier {
 public:
  // A call waiting for the barrier's outcome.
  struct Waiter {
    std::string worker_id;
    int64_t incarnation = 0;
    int64_t sequence = 0;
    ReturnMode return_mode = ReturnMode::kAll;
    WireDType return_dtype = WireDType::kF32;
    bool duplicate = false;  // a retry attached to a pending contribution
    int64_t bytes_received = 0;
    StepCallback done;
    std::shared_ptr<MemoryReservation> encoding;  // pays for the reply's encoded bytes
    ParameterPoint return_point = ParameterPoint::kTraining;
  };

  // What a completed barrier hands over.
  struct Reduced {
    // One per tensor: the mean (Reduce::kMean) or sum of the contributions, computed in double and
    // rounded to float32 once; dense if any contribution was dense, else sparse over the rows
    // they touched.
    std::vector<Gradient> gradients;
    // The first tensor whose reduced value does not fit a float32 (a REDUCE_SUM of huge
    // gradients), or -1.
    int overflow_tensor = -1;
    // Per tensor: the rows touched when only sparse contributions came (for kTouched replies);
    // nullopt for a tensor with a dense contribution.
    std::vector<std::optional<std::vector<int64_t>>> touched;
    std::optional<double> loss;                // the mean of the losses reported, if any
    int workers = 0;                           // contributions
    std::vector<std::string> missing_workers;  // when fewer than K contributed
    absl::Duration waited;                     // since the first contribution
    std::vector<Waiter> waiters;
  };

  // REQUIRES: `specs` outlives the barrier; options.mode is kSync.
  SyncBarrier(const ConsistencyOptions& options, const TensorSpecs* specs);

  // Changes every time a barrier completes or fails.
  int64_t id() const { return id_; }
  int contributions() const { return static_cast<int>(contributions_.size()); }
  // When the first contribution of the open barrier came.
  absl::Time opened() const { return opened_; }

  // Whether (worker, incarnation, sequence) has a contribution waiting (sequence > 0).
  bool IsPending(absl::string_view worker_id, int64_t incarnation, int64_t sequence) const;

  // Adds `waiter`, a retry of a pending contribution (IsPending), to wait for the same outcome; it
  // is answered as a duplicate.
  void AttachRetry(Waiter waiter);

  bool HasContributed(absl::string_view worker_id) const;

  // The bytes the barrier keeps for a contribution of `gradients` (its values and rows): what
  // the session reserves from the memory budget before Add.
  static int64_t ContributionBytes(const std::vector<Gradient>& gradients);
  // The bytes the open barrier keeps (its contributions).
  int64_t bytes() const { return bytes_; }

  // Adds `worker`'s gradients (one per tensor, from DecodeGradients; values read in place from
  // the request are copied) and its waiting call. Returns true if this contribution opened the
  // barrier (its deadline is then opened() + options.barrier_timeout). The barrier keeps
  // `memory` (ContributionBytes(gradients) of the memory budget) until it completes or fails.
  // REQUIRES: !HasContributed(waiter.worker_id).
  bool Add(std::vector<Gradient> gradients, std::optional<double> loss, Waiter waiter,
           absl::Time now, MemoryReservation memory = MemoryReservation());

  // All K workers have contributed.
  bool full() const { return contributions() == options_.workers; }
  // Enough have for the barrier to complete at its deadline.
  bool quorate() const { return contributions() >= options_.effective_quorum(); }

  // The workers expected and not heard from yet (the session's worker_ids, or every worker that
  // ever contributed).
  std::vector<std::string> MissingWorkers() const;
  // The workers that contributed, in arrival order.
  std::vector<std::string> contributors() const;

  // Hands over the open barrier, its gradients reduced in worker-id order on `pool` when large
  // (REQUIRES: contributions() > 0), and opens the next one.
  Reduced Take(absl::Time now, ThreadPool* pool = ThreadPool::Default());

  // Hands over the waiters of the open barrier, for the caller to fail, and opens the next one.
  std::vector<Waiter> Fail();

  // Every worker that ever contributed (at most ConsistencyOptions::kMaxSyncWorkers), for the
  // session's durable state, and restoring it.
  const std::vector<std::string>& known_workers() const { return known_workers_; }
  void set_known_workers(std::vector<std::string> workers) { known_workers_ = std::move(workers); }

 private:
  struct Contribution {
    std::string worker_id;
    std::vector<Gradient> gradients;  // one per tensor, owning their values
    std::optional<double> loss;
    MemoryReservation memory;  // ContributionBytes(gradients) of the budget
  };

  void Reset();
  // Tensor k's reduction of `order`'s contributions into `out` (and its touched rows).
  void ReduceTensor(size_t k, const std::vector<const Contribution*>& order, double scale,
                    ThreadPool* pool, Reduced* out) const;

  const ConsistencyOptions options_;
  const TensorSpecs* const specs_;
  int64_t id_ = 0;
  absl::Time opened_;
  std::vector<Contribution> contributions_;  // in arrival order
  int64_t bytes_ = 0;                        // their ContributionBytes
  std::vector<Waiter> waiters_;
  std::vector<std::string> known_workers_;
};

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_SYNC_BARRIER_H_
