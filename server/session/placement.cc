#include "server/session/placement.h"

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/optim/clip.h"
#include "server/optim/optimizer_options.h"
#include "server/session/tensor_spec.h"

namespace optd {
namespace {

// How an optimizer's update depends on the tensors, for placement.
enum class Reach {
  kElement,  // element by element: a tensor may be split into row ranges
  kTensor,   // per tensor (norms, matrices, factored moments): tensors stay whole
  kModel,    // over the whole model in every step: not on more than one shard
};

Reach ReachOf(const OptimizerOptions& optimizer) {
  if (const auto* n = std::get_if<NormalizedGdOptions>(&optimizer)) {
    return n->norm == NormalizedGdOptions::Norm::kGlobal ? Reach::kModel : Reach::kTensor;
  }
  if (std::holds_alternative<ProdigyOptions>(optimizer) ||
      std::holds_alternative<DAdaptAdamOptions>(optimizer) ||
      std::holds_alternative<DAdaptSgdOptions>(optimizer) ||
      std::holds_alternative<DogOptions>(optimizer)) {
    return Reach::kModel;
  }
  if (std::holds_alternative<LambOptions>(optimizer) ||
      std::holds_alternative<LarsOptions>(optimizer) ||
      std::holds_alternative<LdogOptions>(optimizer) ||
      std::holds_alternative<AdafactorOptions>(optimizer) ||
      std::holds_alternative<MuonOptions>(optimizer)) {
    return Reach::kTensor;
  }
  return Reach::kElement;
}

int64_t Elements(const std::vector<int64_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
}

int64_t Rows(const std::vector<int64_t>& shape) { return shape.empty() ? 1 : shape[0]; }

std::string SliceName(const std::string& tensor, int64_t begin, int64_t end, bool whole) {
  return whole ? tensor : absl::StrCat(tensor, ":rows:", begin, ":", end);
}

void Mix(uint64_t* h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    *h ^= p[i];
    *h *= 1099511628211ULL;
  }
}

void MixInt(uint64_t* h, int64_t v) {
  unsigned char bytes[8];
  for (int i = 0; i < 8; ++i)
    bytes[i] = static_cast<unsigned char>(static_cast<uint64_t>(v) >> (8 * i));
  Mix(h, bytes, 8);
}

void MixString(uint64_t* h, const std::string& s) {
  MixInt(h, static_cast<int64_t>(s.size()));
  Mix(h, s.data(), s.size());
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace

std::vector<int64_t> PlacedSlice::SliceShape() const {
  std::vector<int64_t> out = shape;
  if (!out.empty()) out[0] = row_end - row_begin;
  return out;
}

bool PlacedSlice::whole() const { return row_begin == 0 && row_end == Rows(shape); }

bool PlacedSlice::operator==(const PlacedSlice& o) const {
  return tensor == o.tensor && shape == o.shape && row_begin == o.row_begin &&
         row_end == o.row_end && shard == o.shard && name == o.name;
}

std::vector<PlacedSlice> Placement::SlicesOf(int index) const {
  std::vector<PlacedSlice> out;
  for (const PlacedSlice& s : slices) {
    if (s.shard == index) out.push_back(s);
  }
  return out;
}

uint64_t PlacementFingerprint(const Placement& placement) {
  uint64_t h = 14695981039346656037ULL;
  MixInt(&h, placement.shards);
  MixInt(&h, placement.split_min_elements);
  MixInt(&h, static_cast<int64_t>(placement.slices.size()));
  for (const PlacedSlice& s : placement.slices) {
    MixString(&h, s.tensor);
    MixInt(&h, static_cast<int64_t>(s.shape.size()));
    for (int64_t d : s.shape) MixInt(&h, d);
    MixInt(&h, s.row_begin);
    MixInt(&h, s.row_end);
    MixInt(&h, s.shard);
    MixString(&h, s.name);
  }
  return h == 0 ? 1 : h;  // 0 means "no placement" in a StepRequest
}

absl::Status CheckShardable(const Placement& placement, const OptimizerOptions& optimizer,
                            const ClipOptions& clipping) {
  const Reach reach = ReachOf(optimizer);
  if (reach == Reach::kModel) {
    return absl::FailedPreconditionError(absl::StrCat(
        "optimizer ", std::string(OptimizerName(optimizer)),
        (std::holds_alternative<NormalizedGdOptions>(optimizer) ? " with norm = global" : ""),
        " needs a sum over the whole model in every step, which no shard of a sharded session "
        "sees; use one server (or normalized_gd with norm = per_tensor)"));
  }
  if (clipping.max_norm > 0) {
    return absl::FailedPreconditionError(
        "clipping.max_norm needs the whole model's gradient norm in every step, which no shard "
        "of a sharded session sees; use clipping.clip_value, or one server");
  }
  if (reach == Reach::kTensor) {
    for (const PlacedSlice& s : placement.slices) {
      if (!s.whole()) {
        return absl::FailedPreconditionError(
            absl::StrCat("optimizer ", std::string(OptimizerName(optimizer)),
                         " updates each tensor as a whole, but the "
                         "placement splits ",
                         s.tensor, " into row ranges; only element-wise optimizers may"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Placement> PlanPlacement(const std::vector<ModelTensor>& tensors,
                                        const OptimizerOptions& optimizer,
                                        const ClipOptions& clipping, int shards,
                                        int64_t split_min_elements) {
  if (shards < 2 || shards > Placement::kMaxShards) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shards = ", shards, " is out of range: must be 2 to ", Placement::kMaxShards));
  }
  if (split_min_elements < 0) {
    return absl::InvalidArgumentError(absl::StrCat("split_min_elements = ", split_min_elements,
                                                   " is out of range: must be >= 0 (0: default ",
                                                   Placement::kDefaultSplitMinElements, ")"));
  }
  if (tensors.empty() || tensors.size() > static_cast<size_t>(kMaxTensorsPerSession)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensors has ", tensors.size(), " entries; must be 1 to ", kMaxTensorsPerSession));
  }
  Placement placement;
  placement.shards = shards;
  placement.split_min_elements =
      split_min_elements == 0 ? Placement::kDefaultSplitMinElements : split_min_elements;
  if (absl::Status s = CheckShardable(placement, optimizer, clipping); !s.ok()) return s;
  absl::flat_hash_set<std::string> names;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::string field = absl::StrCat("tensors[", i, "]");
    if (absl::Status s = ValidateTensorName(field, tensors[i].name); !s.ok()) return s;
    if (!names.insert(tensors[i].name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".name \"", tensors[i].name, "\" is repeated; names must be unique"));
    }
    if (absl::StatusOr<int64_t> n = ValidateShape(field, tensors[i].shape); !n.ok()) {
      return n.status();
    }
  }
  const bool splittable = ReachOf(optimizer) == Reach::kElement;
  std::vector<int64_t> load(static_cast<size_t>(shards), 0);
  // Per tensor, its slices (filled below), then laid out in model order.
  std::vector<std::vector<PlacedSlice>> per_tensor(tensors.size());
  std::vector<size_t> whole;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const ModelTensor& t = tensors[i];
    const int64_t rows = Rows(t.shape);
    const int64_t n = Elements(t.shape);
    if (!splittable || n < placement.split_min_elements || rows < 2) {
      whole.push_back(i);
      continue;
    }
    const int64_t parts = std::min<int64_t>(shards, rows);
    for (int64_t k = 0; k < parts; ++k) {
      PlacedSlice s{t.name, t.shape, rows * k / parts, rows * (k + 1) / parts, static_cast<int>(k),
                    ""};
      s.name = SliceName(t.name, s.row_begin, s.row_end, false);
      load[k] += (s.row_end - s.row_begin) * (n / rows);
      per_tensor[i].push_back(std::move(s));
    }
  }
  std::stable_sort(whole.begin(), whole.end(), [&](size_t a, size_t b) {
    return Elements(tensors[a].shape) > Elements(tensors[b].shape);
  });
  for (size_t i : whole) {
    const int shard = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    load[shard] += Elements(tensors[i].shape);
    per_tensor[i].push_back(PlacedSlice{tensors[i].name, tensors[i].shape, 0,
                                        Rows(tensors[i].shape), shard, tensors[i].name});
  }
  for (std::vector<PlacedSlice>& slices : per_tensor) {
    for (PlacedSlice& s : slices) {
      if (absl::Status st = ValidateTensorName("slice name", s.name); !st.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor ", s.tensor, " is split into row ranges whose names (", s.name,
                         ") would be too long; use a shorter name or a larger split_min_elements"));
      }
      placement.slices.push_back(std::move(s));
    }
  }
  for (int k = 0; k < shards; ++k) {
    if (load[k] == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "shards = ", shards, " leaves shard ", k, " without a tensor (", tensors.size(),
          " tensors, none split: split_min_elements = ", placement.split_min_elements,
          "); use fewer shards or a smaller split_min_elements"));
    }
  }
  placement.fingerprint = PlacementFingerprint(placement);
  return placement;
}

absl::Status CheckShard(const Placement& placement, const OptimizerOptions& optimizer,
                        const ClipOptions& clipping, const TensorSpecs& specs) {
  if (placement.shard < 0 || placement.shard >= placement.shards) {
    return absl::InvalidArgumentError(absl::StrCat("placement.shard = ", placement.shard,
                                                   " is out of range: must be 0 to ",
                                                   placement.shards - 1));
  }
  if (absl::Status s = CheckShardable(placement, optimizer, clipping); !s.ok()) return s;
  // The model, from the slices: each tensor once, in order.
  std::vector<ModelTensor> model;
  for (const PlacedSlice& s : placement.slices) {
    if (model.empty() || model.back().name != s.tensor) model.push_back({s.tensor, s.shape});
  }
  absl::StatusOr<Placement> plan =
      PlanPlacement(model, optimizer, clipping, placement.shards, placement.split_min_elements);
  if (!plan.ok()) {
    return absl::Status(plan.status().code(), absl::StrCat("placement: ", plan.status().message()));
  }
  if (plan->slices != placement.slices || plan->fingerprint != placement.fingerprint) {
    return absl::InvalidArgumentError(absl::StrCat(
        "placement (fingerprint ", placement.fingerprint, ", ", placement.slices.size(),
        " slices) is not the plan of its own model (fingerprint ", plan->fingerprint, ", ",
        plan->slices.size(), " slices): take it unchanged from PlanPlacement"));
  }
  const std::vector<PlacedSlice> mine = placement.SlicesOf(placement.shard);
  for (const PlacedSlice& s : mine) {
    const int k = specs.Find(s.name);
    if (k < 0) {
      return absl::InvalidArgumentError(absl::StrCat("tensors lacks ", s.name, ", shard ",
                                                     placement.shard, "'s slice of ", s.tensor,
                                                     " in the placement"));
    }
    if (specs[k].shape != s.SliceShape()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensors ", s.name, " has shape ", ShapeText(specs[k].shape),
          "; the placement gives shard ", placement.shard, " ", ShapeText(s.SliceShape())));
    }
  }
  if (static_cast<size_t>(specs.size()) != mine.size()) {
    for (const TensorSpec& spec : specs) {
      if (std::none_of(mine.begin(), mine.end(),
                       [&](const PlacedSlice& s) { return s.name == spec.name; })) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensors has ", spec.name,
                         ", which the placement puts on no slice of shard ", placement.shard));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckStepFingerprint(const std::optional<Placement>& placement,
                                  absl::string_view session_id, uint64_t fingerprint) {
  const uint64_t mine = placement.has_value() ? placement->fingerprint : 0;
  if (fingerprint == mine) return absl::OkStatus();
  if (!placement.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "session ", session_id, " is not sharded, but the step names placement fingerprint ",
        fingerprint, ": the client holds a map of another session; read it again"));
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "session ", session_id, " is shard ", placement->shard, " of ", placement->shards,
      " (placement fingerprint ", mine, "); the step names ",
      fingerprint == 0 ? std::string("none") : absl::StrCat("fingerprint ", fingerprint),
      ": step through a client given every shard's address, which reads the placement from "
      "GetSession; nothing was applied"));
}

}  // namespace optd
