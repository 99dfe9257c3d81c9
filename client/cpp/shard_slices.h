// File: shard_slices.h
//
// optd::client::ShardSlices: the client's view of a sharded session's placement (v1::Placement,
// README "Sharding"): which shard holds which whole tensor or row range "<tensor>:rows:<b>:<e>".
// It cuts whole tensors (initial values, dense or row-sparse gradients, the rows of a pull) into
// each shard's slices, and puts the shards' slices (step replies, pulls) back into whole tensors.
// The placement itself is planned by the server (Client::PlanPlacement); this only reads it.
//
// Who may call it: ShardedClient and ShardedWorker (sharded_client.h, sharded_worker.h); tests.
//
// Thread safety: immutable after FromPlacement; thread-safe.
//
// Errors: InvalidArgument for a placement that is not one (fewer than two shards, a slice outside
// its tensor, a shard index out of range, a tensor's ranges not covering its rows in order), and
// for tensors that do not fit it (unknown or missing names, another shape, a row index out of
// range), naming the tensor; Internal when the shards' slices cannot be put back together (a
// shard's reply lacks a slice or has another shape).

#ifndef OPTD_CLIENT_CPP_SHARD_SLICES_H_
#define OPTD_CLIENT_CPP_SHARD_SLICES_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/cpp/client.h"
#include "client/cpp/host_tensor.h"
#include "optd/v1/optd.pb.h"

namespace optd {
namespace client {

class ShardSlices {
 public:
  // Checks `placement` (any shard's copy: `shard` is ignored) and indexes it.
  static absl::StatusOr<ShardSlices> FromPlacement(const v1::Placement& placement);

  int shards() const { return shards_; }
  uint64_t fingerprint() const { return fingerprint_; }
  // The model's tensor names, in model order.
  const std::vector<std::string>& tensor_names() const { return names_; }
  // The slices of every tensor, in model order (a split tensor's ranges in row order).
  const std::vector<v1::PlacedSlice>& slices() const { return slices_; }

  // Cuts one whole tensor per model tensor (any order; dense or row-sparse) into the slices of
  // every shard: result[shard] holds that shard's slices, named as the shard names them, in model
  // order. A row-sparse tensor gives each slice the rows inside it, renumbered from the slice's
  // first row (possibly none). InvalidArgument for an unknown, repeated or missing tensor, or
  // another shape than the placement's.
  absl::StatusOr<std::vector<std::vector<HostTensor>>> Split(
      const std::vector<HostTensor>& whole) const;

  // The reverse: whole tensors (model order) from every shard's slices (result[shard] as a shard
  // returned them, by slice name, any order). A tensor of which no shard returned a slice is left
  // out (e.g. RETURN_PARAMETERS_NONE, or a pull of some tensors); one with some slices missing is
  // Internal. Row-sparse slices (TOUCHED replies, pulls of rows) give a row-sparse tensor whose
  // indices are the model's, in slice order. Takes the slices by value: a whole tensor's values
  // are moved, not copied.
  absl::StatusOr<std::vector<HostTensor>> Assemble(
      std::vector<std::vector<HostTensor>> per_shard) const;

  // What each shard is asked for a Pull of `options` (names and rows renamed and cut to the
  // shard's slices; nullopt for a shard that holds none of the tensors asked). InvalidArgument for
  // an unknown tensor or a row index out of range; optimizer_state is not supported (it is per
  // shard) and is InvalidArgument too.
  absl::StatusOr<std::vector<std::optional<PullOptions>>> SplitPull(
      const PullOptions& options) const;

 private:
  ShardSlices() = default;

  // The index in slices_ of the first slice of tensor `name`, and their count; nullopt if unknown.
  struct Range {
    size_t first = 0;
    size_t count = 0;
  };
  std::optional<Range> Find(const std::string& name) const;

  int shards_ = 0;
  uint64_t fingerprint_ = 0;
  std::vector<std::string> names_;
  std::vector<Range> ranges_;  // by position in names_
  std::vector<v1::PlacedSlice> slices_;
};

// `tensor` (row-sparse) with its rows reordered to `indices` (each present in it): the rows a
// pull asked for in the order asked, from an assembly in slice order. InvalidArgument if a row
// is missing.
absl::StatusOr<HostTensor> ReorderRows(const HostTensor& tensor,
                                       const std::vector<int64_t>& indices);

}  // namespace client
}  // namespace optd

#endif  // OPTD_CLIENT_CPP_SHARD_SLICES_H_
