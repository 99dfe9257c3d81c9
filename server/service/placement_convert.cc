#include "server/service/placement_convert.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/session/tensor_spec.h"

namespace optd {
namespace {

absl::Status OutOfRange(const std::string& field, int64_t value, absl::string_view range) {
  return absl::InvalidArgumentError(
      absl::StrCat(field, " = ", value, " is out of range: must be ", range));
}

}  // namespace

absl::StatusOr<Placement> PlacementFromProto(const v1::Placement& placement,
                                             absl::string_view prefix) {
  const std::string field = absl::StrCat(prefix, "placement");
  Placement out;
  if (placement.shards() < 2 || placement.shards() > Placement::kMaxShards) {
    return OutOfRange(field + ".shards", placement.shards(),
                      absl::StrCat("2 to ", Placement::kMaxShards));
  }
  out.shards = static_cast<int>(placement.shards());
  if (placement.shard() >= placement.shards()) {
    return OutOfRange(field + ".shard", placement.shard(),
                      absl::StrCat("0 to ", placement.shards() - 1));
  }
  out.shard = static_cast<int>(placement.shard());
  if (placement.split_min_elements() < 1) {
    return OutOfRange(field + ".split_min_elements", placement.split_min_elements(),
                      ">= 1 (as PlanPlacement returns it)");
  }
  out.split_min_elements = placement.split_min_elements();
  const int max_slices = kMaxTensorsPerSession * Placement::kMaxShards;
  if (placement.slices_size() < 1 || placement.slices_size() > max_slices) {
    return OutOfRange(field + ".slices count", placement.slices_size(),
                      absl::StrCat("1 to ", max_slices));
  }
  for (int i = 0; i < placement.slices_size(); ++i) {
    const v1::PlacedSlice& s = placement.slices(i);
    const std::string at = absl::StrCat(field, ".slices[", i, "]");
    if (absl::Status st = ValidateTensorName(at + ".tensor", s.tensor()); !st.ok()) return st;
    if (absl::Status st = ValidateTensorName(at + ".name", s.name()); !st.ok()) return st;
    const std::vector<int64_t> shape(s.shape().begin(), s.shape().end());
    if (absl::StatusOr<int64_t> n = ValidateShape(at, shape); !n.ok()) return n.status();
    const int64_t rows = shape.empty() ? 1 : shape[0];
    if (s.row_begin() < 0 || s.row_begin() >= rows) {
      return OutOfRange(at + ".row_begin", s.row_begin(), absl::StrCat("0 to ", rows - 1));
    }
    if (s.row_end() <= s.row_begin() || s.row_end() > rows) {
      return OutOfRange(at + ".row_end", s.row_end(),
                        absl::StrCat(s.row_begin() + 1, " to ", rows));
    }
    if (s.shard() >= placement.shards()) {
      return OutOfRange(at + ".shard", s.shard(), absl::StrCat("0 to ", placement.shards() - 1));
    }
    out.slices.push_back(PlacedSlice{s.tensor(), shape, s.row_begin(), s.row_end(),
                                     static_cast<int>(s.shard()), s.name()});
  }
  out.fingerprint = placement.fingerprint();
  if (placement.checkpoint_every_versions() < 0) {
    return OutOfRange(field + ".checkpoint_every_versions", placement.checkpoint_every_versions(),
                      ">= 0 (0: no aligned checkpoints)");
  }
  out.checkpoint_every_versions = placement.checkpoint_every_versions();
  return out;
}

void PlacementToProto(const Placement& placement, v1::Placement* out) {
  out->set_shards(static_cast<uint32_t>(placement.shards));
  out->set_shard(static_cast<uint32_t>(placement.shard));
  out->set_split_min_elements(placement.split_min_elements);
  out->set_fingerprint(placement.fingerprint);
  out->set_checkpoint_every_versions(placement.checkpoint_every_versions);
  for (const PlacedSlice& s : placement.slices) {
    v1::PlacedSlice* slice = out->add_slices();
    slice->set_tensor(s.tensor);
    slice->mutable_shape()->Add(s.shape.begin(), s.shape.end());
    slice->set_row_begin(s.row_begin);
    slice->set_row_end(s.row_end);
    slice->set_shard(static_cast<uint32_t>(s.shard));
    slice->set_name(s.name);
  }
}

std::vector<ModelTensor> ModelFromProto(const v1::PlanPlacementRequest& request) {
  std::vector<ModelTensor> model;
  model.reserve(static_cast<size_t>(request.tensors_size()));
  for (const v1::TensorInfo& t : request.tensors()) {
    model.push_back({t.name(), std::vector<int64_t>(t.shape().begin(), t.shape().end())});
  }
  return model;
}

}  // namespace optd
