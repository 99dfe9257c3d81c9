#include "client/cpp/shard_slices.h"

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace optd {
namespace client {
namespace {

std::vector<int64_t> ShapeOf(const v1::PlacedSlice& s) {
  return std::vector<int64_t>(s.shape().begin(), s.shape().end());
}

// Rows of the model's tensor: shape[0], or 1 for a scalar.
int64_t RowsOf(const v1::PlacedSlice& s) { return s.shape().empty() ? 1 : s.shape(0); }

bool IsWhole(const v1::PlacedSlice& s) { return s.row_begin() == 0 && s.row_end() == RowsOf(s); }

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// The slice's own shape: dim 0 cut to its rows.
std::vector<int64_t> SliceShape(const v1::PlacedSlice& s) {
  std::vector<int64_t> shape = ShapeOf(s);
  if (!shape.empty()) shape[0] = s.row_end() - s.row_begin();
  return shape;
}

// A copy of `tensor` named `name` (a whole tensor's only slice, either way).
HostTensor Renamed(const HostTensor& tensor, const std::string& name) {
  HostTensor out = tensor;
  out.name = name;
  return out;
}

// Rows [b, e) of `tensor` (dense, or row-sparse: the rows inside, renumbered from b).
HostTensor CutRows(const HostTensor& tensor, const v1::PlacedSlice& s) {
  const int64_t b = s.row_begin(), e = s.row_end();
  const int64_t row = tensor.row_size();
  HostTensor out;
  out.name = s.name();
  out.shape = SliceShape(s);
  if (!tensor.row_sparse()) {
    out.values.assign(tensor.values.begin() + b * row, tensor.values.begin() + e * row);
    return out;
  }
  out.rows.emplace();
  const std::vector<int64_t>& rows = *tensor.rows;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] < b || rows[i] >= e) continue;
    out.rows->push_back(rows[i] - b);
    out.values.insert(out.values.end(), tensor.values.begin() + i * row,
                      tensor.values.begin() + (i + 1) * row);
  }
  return out;
}

}  // namespace

absl::StatusOr<ShardSlices> ShardSlices::FromPlacement(const v1::Placement& placement) {
  if (placement.shards() < 2 || placement.shards() > 64) {
    return absl::InvalidArgumentError(absl::StrCat("placement.shards = ", placement.shards(),
                                                   "; a sharded session has 2 to 64 shards"));
  }
  if (placement.slices_size() == 0) {
    return absl::InvalidArgumentError("placement.slices is empty");
  }
  ShardSlices out;
  out.shards_ = static_cast<int>(placement.shards());
  out.fingerprint_ = placement.fingerprint();
  out.slices_.assign(placement.slices().begin(), placement.slices().end());
  std::set<std::string> seen;
  for (size_t i = 0; i < out.slices_.size(); ++i) {
    const v1::PlacedSlice& s = out.slices_[i];
    const std::string field = absl::StrCat("placement.slices[", i, "] (", s.name(), ")");
    if (s.shard() >= placement.shards()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": shard = ", s.shard(), "; must be below ", placement.shards()));
    }
    for (int64_t d : s.shape()) {
      if (d < 0) return absl::InvalidArgumentError(absl::StrCat(field, ": negative dimension"));
    }
    const bool continues = !out.names_.empty() && out.names_.back() == s.tensor();
    const int64_t expected_begin = continues ? out.slices_[i - 1].row_end() : 0;
    if (continues && ShapeOf(s) != ShapeOf(out.slices_[i - 1])) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": another shape than the tensor's"));
    }
    if (s.row_begin() != expected_begin || s.row_end() <= s.row_begin() ||
        s.row_end() > RowsOf(s)) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": rows [", s.row_begin(), ", ", s.row_end(), ") of tensor ", s.tensor(), " of ",
          RowsOf(s), " rows; a tensor's slices must cover its rows in order"));
    }
    if (!continues) {
      if (!seen.insert(s.tensor()).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": the slices of tensor ", s.tensor(), " are not consecutive"));
      }
      if (i > 0 && out.slices_[i - 1].row_end() != RowsOf(out.slices_[i - 1])) {
        return absl::InvalidArgumentError(absl::StrCat("placement: tensor ", out.names_.back(),
                                                       "'s slices do not reach its last row"));
      }
      out.names_.push_back(s.tensor());
      out.ranges_.push_back(Range{i, 0});
    }
    ++out.ranges_.back().count;
  }
  if (out.slices_.back().row_end() != RowsOf(out.slices_.back())) {
    return absl::InvalidArgumentError(absl::StrCat("placement: tensor ", out.names_.back(),
                                                   "'s slices do not reach its last row"));
  }
  return out;
}

std::optional<ShardSlices::Range> ShardSlices::Find(const std::string& name) const {
  for (size_t i = 0; i < names_.size(); ++i) {
    if (names_[i] == name) return ranges_[i];
  }
  return std::nullopt;
}

absl::StatusOr<std::vector<std::vector<HostTensor>>> ShardSlices::Split(
    const std::vector<HostTensor>& whole) const {
  absl::flat_hash_map<std::string, const HostTensor*> given;
  std::vector<std::string> unknown;
  for (const HostTensor& t : whole) {
    if (!Find(t.name).has_value()) {
      unknown.push_back(t.name);
    } else if (!given.emplace(t.name, &t).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", t.name, " is given twice"));
    }
  }
  std::vector<std::string> missing;
  for (const std::string& name : names_) {
    if (!given.contains(name)) missing.push_back(name);
  }
  if (!unknown.empty() || !missing.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the tensors given name [", absl::StrJoin(unknown, ", "), "] unknown and lack [",
        absl::StrJoin(missing, ", "), "]; the session has [", absl::StrJoin(names_, ", "), "]"));
  }
  std::vector<std::vector<HostTensor>> out(shards_);
  for (size_t t = 0; t < names_.size(); ++t) {
    const HostTensor& tensor = *given.at(names_[t]);
    const v1::PlacedSlice& first = slices_[ranges_[t].first];
    if (tensor.shape != ShapeOf(first)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", tensor.name, " has shape ", ShapeString(tensor.shape),
                       "; the session's is ", ShapeString(ShapeOf(first))));
    }
    const size_t want = tensor.row_sparse() ? tensor.rows->size() * tensor.row_size()
                                            : static_cast<size_t>(tensor.num_elements());
    if (tensor.values.size() != want) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", tensor.name, " has ", tensor.values.size(), " values; its shape ",
          ShapeString(tensor.shape), tensor.row_sparse() ? " and rows" : "", " need ", want));
    }
    if (tensor.row_sparse()) {
      if (tensor.shape.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor ", tensor.name, " is a row-sparse scalar"));
      }
      for (size_t i = 0; i < tensor.rows->size(); ++i) {
        const int64_t r = (*tensor.rows)[i];
        if (r < 0 || r >= tensor.shape[0]) {
          return absl::InvalidArgumentError(absl::StrCat("tensor ", tensor.name, ": rows[", i,
                                                         "] = ", r, " is outside [0, ",
                                                         tensor.shape[0], ")"));
        }
      }
    }
    for (size_t i = 0; i < ranges_[t].count; ++i) {
      const v1::PlacedSlice& s = slices_[ranges_[t].first + i];
      out[s.shard()].push_back(IsWhole(s) ? Renamed(tensor, s.name()) : CutRows(tensor, s));
    }
  }
  return out;
}

absl::StatusOr<std::vector<HostTensor>> ShardSlices::Assemble(
    std::vector<std::vector<HostTensor>> per_shard) const {
  if (per_shard.size() != static_cast<size_t>(shards_)) {
    return absl::InternalError(
        absl::StrCat("slices of ", per_shard.size(), " shards for a placement of ", shards_));
  }
  std::vector<absl::flat_hash_map<std::string, HostTensor*>> by_name(shards_);
  for (int shard = 0; shard < shards_; ++shard) {
    for (HostTensor& t : per_shard[shard]) by_name[shard].emplace(t.name, &t);
  }
  std::vector<HostTensor> out;
  for (size_t t = 0; t < names_.size(); ++t) {
    std::vector<HostTensor*> pieces(ranges_[t].count, nullptr);
    size_t present = 0, sparse = 0;
    for (size_t i = 0; i < pieces.size(); ++i) {
      const v1::PlacedSlice& s = slices_[ranges_[t].first + i];
      const auto it = by_name[s.shard()].find(s.name());
      if (it == by_name[s.shard()].end()) continue;
      pieces[i] = it->second;
      ++present;
      if (it->second->row_sparse()) ++sparse;
    }
    if (present == 0) continue;
    const v1::PlacedSlice& first = slices_[ranges_[t].first];
    // Row-sparse slices are some rows each: a shard with none of them may leave its slice out.
    if (present != pieces.size() && sparse != present) {
      for (size_t i = 0; i < pieces.size(); ++i) {
        if (pieces[i] != nullptr) continue;
        const v1::PlacedSlice& s = slices_[ranges_[t].first + i];
        return absl::InternalError(absl::StrCat("shard ", s.shard(), " returned no slice ",
                                                s.name(), " of tensor ", s.tensor()));
      }
    }
    if (sparse != 0 && sparse != present) {
      return absl::InternalError(absl::StrCat("the shards returned tensor ", names_[t],
                                              " dense from some slices, row-sparse from others"));
    }
    HostTensor whole;
    whole.name = names_[t];
    whole.shape = ShapeOf(first);
    if (sparse != 0) whole.rows.emplace();
    for (size_t i = 0; i < pieces.size(); ++i) {
      HostTensor* piece = pieces[i];
      if (piece == nullptr) continue;
      const v1::PlacedSlice& s = slices_[ranges_[t].first + i];
      if (piece->shape != SliceShape(s)) {
        return absl::InternalError(absl::StrCat(
            "shard ", s.shard(), " returned slice ", s.name(), " of shape ",
            ShapeString(piece->shape), "; the placement's is ", ShapeString(SliceShape(s))));
      }
      if (piece->row_sparse()) {
        for (int64_t r : *piece->rows) whole.rows->push_back(r + s.row_begin());
      }
      if (pieces.size() == 1) {
        whole.values = std::move(piece->values);  // a whole tensor: no copy
      } else {
        whole.values.insert(whole.values.end(), piece->values.begin(), piece->values.end());
      }
    }
    out.push_back(std::move(whole));
  }
  return out;
}

absl::StatusOr<std::vector<std::optional<PullOptions>>> ShardSlices::SplitPull(
    const PullOptions& options) const {
  if (options.optimizer_state) {
    return absl::InvalidArgumentError(
        "optimizer_state: a sharded session's optimizer state is per shard; pull it from each "
        "shard's session with Client::Pull");
  }
  std::vector<std::string> wanted = options.names.empty() ? names_ : options.names;
  std::set<std::string> wanted_set;
  for (const std::string& name : wanted) {
    if (!Find(name).has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "names: no tensor ", name, "; the session has [", absl::StrJoin(names_, ", "), "]"));
    }
    wanted_set.insert(name);
  }
  std::map<std::string, const TensorRows*> rows;
  for (const TensorRows& r : options.rows) {
    const std::optional<Range> range = Find(r.name);
    if (!range.has_value() || !wanted_set.count(r.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("rows: tensor ", r.name, " is not among the tensors pulled"));
    }
    const v1::PlacedSlice& first = slices_[range->first];
    if (first.shape().empty()) {
      return absl::InvalidArgumentError(absl::StrCat("rows: tensor ", r.name, " is a scalar"));
    }
    for (size_t i = 0; i < r.indices.size(); ++i) {
      if (r.indices[i] < 0 || r.indices[i] >= first.shape(0)) {
        return absl::InvalidArgumentError(absl::StrCat("rows of ", r.name, ": indices[", i,
                                                       "] = ", r.indices[i], " is outside [0, ",
                                                       first.shape(0), ")"));
      }
    }
    rows[r.name] = &r;
  }
  std::vector<std::optional<PullOptions>> out(shards_);
  for (const std::string& name : names_) {  // model order
    if (!wanted_set.count(name)) continue;
    const Range range = *Find(name);
    const auto r = rows.find(name);
    for (size_t i = 0; i < range.count; ++i) {
      const v1::PlacedSlice& s = slices_[range.first + i];
      TensorRows cut{s.name(), {}};
      if (r != rows.end()) {
        for (int64_t index : r->second->indices) {
          if (index >= s.row_begin() && index < s.row_end()) {
            cut.indices.push_back(index - s.row_begin());
          }
        }
        if (cut.indices.empty()) continue;  // no row of this slice is asked for
      }
      std::optional<PullOptions>& shard = out[s.shard()];
      if (!shard.has_value()) {
        shard.emplace();
        shard->dtype = options.dtype;
        shard->point = options.point;
      }
      shard->names.push_back(s.name());
      if (r != rows.end()) shard->rows.push_back(std::move(cut));
    }
  }
  return out;
}

absl::StatusOr<HostTensor> ReorderRows(const HostTensor& tensor,
                                       const std::vector<int64_t>& indices) {
  if (!tensor.row_sparse()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", tensor.name, " is not row-sparse"));
  }
  absl::flat_hash_map<int64_t, size_t> position;
  for (size_t i = 0; i < tensor.rows->size(); ++i) position.emplace((*tensor.rows)[i], i);
  const int64_t row = tensor.row_size();
  HostTensor out{tensor.name, tensor.shape, {}, std::vector<int64_t>()};
  out.values.reserve(indices.size() * row);
  for (int64_t index : indices) {
    const auto it = position.find(index);
    if (it == position.end()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", tensor.name, " lacks row ", index));
    }
    out.rows->push_back(index);
    out.values.insert(out.values.end(), tensor.values.begin() + it->second * row,
                      tensor.values.begin() + (it->second + 1) * row);
  }
  return out;
}

}  // namespace client
}  // namespace optd
