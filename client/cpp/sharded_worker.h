// File: sharded_worker.h
//
// optd::client::ShardedWorker: one worker's handle on a sharded session (sharded_client.h; the
// C++ counterpart of the Python optd.ShardedSession). It holds one Worker (worker.h) per shard,
// all with the same worker id, so each shard sees an ordinary worker: joined, its steps numbered
// with increasing sequences (the idempotency key; a retry reuses its sequence, so a shard applies
// each step once) and its version tracked. A step takes whole tensors (dense or row-sparse), cuts
// them along the placement, sends every shard its slices at once (one thread per shard), each
// request naming the placement's fingerprint, and puts the replies back into whole tensors.
//
//   ShardedWorker worker(client.get(), session);    // session: CreateSession or Attach
//   absl::StatusOr<ShardedPullResult> p = worker.Pull();
//   for (...) {
//     absl::StatusOr<ShardedStepResult> r = worker.Step(whole_gradients);
//     if (CurrentVersion(r.status())) { /* stale on a shard (ABORTED): pull, recompute */ }
//     params = r->merged.parameters;                // whole tensors, model order
//   }
//
// What holds across shards (README "Sharding"): SYNC: every shard's barrier takes the same
// workers' gradients for the same version, the shards step together and their versions stay
// equal; a step whose shards answer with different versions is an error here (FailedPrecondition
// naming every shard's version: a shard was restored from an older checkpoint). ASYNC and
// BOUNDED: each shard applies the step when it arrives, so with several workers one shard may
// answer version v and another v + 1; the result then carries the lowest version (merged.version)
// and every shard's (shard_versions, versions_agree()). A step one shard refuses (e.g. stale,
// ABORTED) may have been applied by the others; the error names the shard and those that applied.
//
// Who may call it: worker loops, benchmarks, examples, tests.
//
// Thread safety: not thread-safe; one thread drives a ShardedWorker (its steps use threads of
// their own inside). Give each thread its own ShardedWorker, with its own worker id.
// REQUIRES: the ShardedClient outlives it.
//
// Errors: those of Worker::Step / Pull / Join, prefixed with the shard and its address (AtShard,
// sharded_client.h), code and payloads kept; the first failing shard's (in shard order) when
// several fail. InvalidArgument, before any RPC, for gradients that do not fit the placement
// (unknown or missing tensors, another shape, values that do not match the shape); Internal for
// shards' replies that cannot be put together.

#ifndef OPTD_CLIENT_CPP_SHARDED_WORKER_H_
#define OPTD_CLIENT_CPP_SHARDED_WORKER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/cpp/client.h"
#include "client/cpp/host_tensor.h"
#include "client/cpp/sharded_client.h"
#include "client/cpp/worker.h"

namespace optd {
namespace client {

struct ShardedStepResult {
  // The shards' results put together: parameters as whole tensors (model order; none with
  // RETURN_PARAMETERS_NONE, row-sparse with the model's row indices for TOUCHED row-sparse
  // gradients); version and parameters_version the lowest of the shards'; gradient_norm over the
  // whole gradient; duplicate only if every shard answered duplicate; workers the fewest, missing
  // workers all the shards name; staleness, attempts and rejoins the most; durable_version the
  // lowest; server_restarted if any shard restarted; sequence, worker_incarnation,
  // server_incarnation, learning_rate, point and estimates shard 0's.
  StepResult merged;
  // Each shard's version after the step and the sequence number it was sent under, by shard.
  std::vector<int64_t> shard_versions;
  std::vector<int64_t> shard_sequences;

  bool versions_agree() const;
};

struct ShardedPullResult {
  // Whole tensors (model order; those asked for), version the lowest of the shards asked.
  PullResult merged;
  // Each shard's version, by shard; -1 for a shard that holds none of the tensors asked (not
  // called).
  std::vector<int64_t> shard_versions;

  bool versions_agree() const;  // among the shards called
};

class ShardedWorker {
 public:
  // One Worker per shard of `session`, with options.worker_id (empty: DefaultWorkerId(), the same
  // for every shard), options.first_sequence and options.version (unset: each shard's version in
  // `session`, as it was at CreateSession or Attach).
  // REQUIRES: client != nullptr and outlives the worker; `session` comes from `client`.
  ShardedWorker(ShardedClient* client, ShardedSession session, WorkerOptions options = {});

  ShardedWorker(const ShardedWorker&) = delete;
  ShardedWorker& operator=(const ShardedWorker&) = delete;

  const std::string& worker_id() const { return worker_id_; }
  const ShardedSession& session() const { return session_; }
  int num_shards() const { return session_.num_shards(); }
  // The Worker of shard `shard` (its sequence, incarnation, version, server incarnation).
  Worker& shard_worker(int shard) { return *workers_[shard]; }

  // The lowest of the shards' workers' versions; nullopt while any is unknown.
  std::optional<int64_t> version() const;

  // Joins every shard at once (Worker::Join): a new incarnation of the worker on each. Steps join
  // by themselves when needed; call it to fail fast, or before a SYNC session's first step.
  absl::Status Join();

  // Pulls from every shard holding a tensor asked for, at once, and puts the tensors together
  // (PullOptions: names, rows, dtype and point; optimizer_state is InvalidArgument, it is per
  // shard). Rows come back in the order asked. Each shard's worker takes its shard's version.
  absl::StatusOr<ShardedPullResult> Pull(const PullOptions& options = {});

  // One step: `gradients` (one whole tensor per model tensor, any order, dense or row-sparse) cut
  // along the placement and sent to every shard at once through its Worker (joins, sequences,
  // retries), each naming the placement's fingerprint; see the file comment for versions.
  // options.worker_id, sequence, worker_incarnation and placement_fingerprint are ignored.
  absl::StatusOr<ShardedStepResult> Step(const std::vector<HostTensor>& gradients,
                                         const StepOptions& options = {});

  // Deletes the session on every shard (ShardedClient::DeleteSession).
  absl::Status DeleteSession();

 private:
  ShardedClient* const client_;
  const ShardedSession session_;
  const std::string worker_id_;
  std::vector<std::unique_ptr<Worker>> workers_;  // by shard
};

}  // namespace client
}  // namespace optd

#endif  // OPTD_CLIENT_CPP_SHARDED_WORKER_H_
