// File: placement.h
//
// Placement: where a sharded session's tensors live. A session may span N optd servers
// ("shards"); each shard holds a session of the same id over its slices of the model: whole
// tensors, or row ranges [row_begin, row_end) of a large tensor whose optimizer is element-wise.
// The map is computed once (PlanPlacement), given whole to every shard at CreateSession, checked
// there (CheckShard), stored with the session (checkpoints too) and returned by GetSession, so
// every client reads the same map; its fingerprint travels with every step, and a shard refuses
// a step whose client holds another map (README, Sharding).
//
// The plan: tensors whose element count is at least split_min_elements, with at least two rows,
// under an element-wise optimizer, are cut into min(N, rows) near-equal row ranges, range i on
// shard i; then the other tensors, largest first (ties: model order), each on the shard holding
// the fewest elements so far (ties: lowest index). Every shard must get at least one slice.
//
// Optimizers and clipping that need a quantity over the whole model in every step (normalized
// GD's global norm, Prodigy, D-Adaptation, DoG; clipping by global norm) are refused on more than
// one shard (FailedPrecondition): no shard sees the whole model.
//
// Pure functions on plain data: thread-compatible. No gRPC, no protobuf.
//
// Errors: InvalidArgument naming the field (shards, split_min_elements, tensors[i], slices[i],
// shard), a short prefix of the value and the valid range; FailedPrecondition for an optimizer
// or clipping a sharded session cannot run.

#ifndef OPTD_SERVER_SESSION_PLACEMENT_H_
#define OPTD_SERVER_SESSION_PLACEMENT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/optim/clip.h"
#include "server/optim/optimizer_options.h"
#include "server/session/tensor_spec.h"

namespace optd {

// One slice of the model: rows [row_begin, row_end) of the model's tensor `tensor` of `shape`,
// held by shard `shard` under `name` (`tensor` itself when whole, else
// "<tensor>:rows:<row_begin>:<row_end>"). A scalar's one row is [0, 1).
struct PlacedSlice {
  std::string tensor;
  std::vector<int64_t> shape;
  int64_t row_begin = 0;
  int64_t row_end = 0;
  int shard = 0;
  std::string name;

  // The slice's own shape: shape with dim 0 cut to its rows ({} for a scalar).
  std::vector<int64_t> SliceShape() const;
  bool whole() const;
  bool operator==(const PlacedSlice& o) const;
};

struct Placement {
  static constexpr int kMaxShards = 64;
  // The default split_min_elements: 4Mi elements (16 MiB of float32).
  static constexpr int64_t kDefaultSplitMinElements = int64_t{4} << 20;

  int shards = 0;  // N in [2, kMaxShards]
  int shard = 0;   // the shard this copy belongs to, in [0, N)
  int64_t split_min_elements = kDefaultSplitMinElements;  // >= 1
  // Every slice of the model, in model order (a split tensor's ranges in row order).
  std::vector<PlacedSlice> slices;
  // Of shards, split_min_elements and slices (not `shard`): the same on every shard.
  uint64_t fingerprint = 0;
  // With checkpoints: each shard writes one at every multiple of this version (0: none); not in
  // the fingerprint (the proto's Placement.checkpoint_every_versions).
  int64_t checkpoint_every_versions = 0;

  // The slices of `shard`, in model order.
  std::vector<PlacedSlice> SlicesOf(int shard) const;
};

// A model tensor as PlanPlacement takes it.
struct ModelTensor {
  std::string name;
  std::vector<int64_t> shape;
};

// The placement of `tensors` (the whole model, in its order) over `shards` shards for a session
// of `optimizer` with `clipping` (shard 0's copy). split_min_elements 0 takes the default.
absl::StatusOr<Placement> PlanPlacement(const std::vector<ModelTensor>& tensors,
                                        const OptimizerOptions& optimizer,
                                        const ClipOptions& clipping, int shards,
                                        int64_t split_min_elements);

// FailedPrecondition if a sharded session cannot run `optimizer` with `clipping` (they need the
// whole model in every step), or if `optimizer` is not element-wise and `placement` splits a
// tensor (UpdateSession changing the optimizer's options, or a fork, must not break the map).
absl::Status CheckShardable(const Placement& placement, const OptimizerOptions& optimizer,
                            const ClipOptions& clipping);

// Checks a placement given to CreateSession on shard `placement.shard` whose tensors are `specs`:
// it is the plan of its own model (same slices and fingerprint, for this optimizer and clipping),
// and `specs` are exactly this shard's slices (names and shapes, in any order).
absl::Status CheckShard(const Placement& placement, const OptimizerOptions& optimizer,
                        const ClipOptions& clipping, const TensorSpecs& specs);

// OK if a step naming `fingerprint` may step session `session_id`, sharded per `placement` (or not
// sharded: fingerprint 0); FailedPrecondition saying which map the client should hold otherwise.
absl::Status CheckStepFingerprint(const std::optional<Placement>& placement,
                                  absl::string_view session_id, uint64_t fingerprint);

// The fingerprint of shards, split_min_elements and slices: 64-bit FNV-1a over their canonical
// bytes (a check against mismatched maps, not against forgery).
uint64_t PlacementFingerprint(const Placement& placement);

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_PLACEMENT_H_
