#include "server/session/session.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <iterator>
#include <memory>
#include <string>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace optd {
namespace {

// Largest tensor, in elements: 2^31 - 1 floats (8 GiB), far beyond any single message.
constexpr int64_t kMaxTensorElements = (int64_t{1} << 31) - 1;

bool IsIdChar(char c, absl::string_view extra) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         extra.find(c) != absl::string_view::npos;
}

std::string ShapeString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status ValidateTensorName(absl::string_view field, absl::string_view name) {
  if (name.empty() || name.size() > kMaxTensorNameLength) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".name \"", name, "\" has length ",
                                                   name.size(), "; must be 1 to ",
                                                   kMaxTensorNameLength, " characters"));
  }
  for (char c : name) {
    if (!IsIdChar(c, "._/:-")) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".name \"", name, "\" has an invalid character; allowed: [A-Za-z0-9._/:-]"));
    }
  }
  return absl::OkStatus();
}

// Checks rank and dimensions; returns the element count.
absl::StatusOr<int64_t> ValidateShape(absl::string_view field, absl::Span<const int64_t> shape) {
  if (shape.size() > kMaxTensorRank) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".shape ", ShapeString(shape),
                                                   " has rank ", shape.size(), "; must be at most ",
                                                   kMaxTensorRank));
  }
  int64_t n = 1;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] < 1 || shape[d] > kMaxTensorElements || n * shape[d] > kMaxTensorElements) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".shape ", ShapeString(shape), ": dimension ", d, " is ", shape[d],
          "; every dimension must be >= 1 and the product at most ", kMaxTensorElements));
    }
    n *= shape[d];
  }
  return n;
}

// Returns the index of the first non-finite value, or -1. One branch-free pass (it vectorises)
// in the common case that every value is finite.
int64_t FirstNonFinite(absl::Span<const float> values) {
  bool all_finite = true;
  for (float v : values) all_finite &= std::isfinite(v);
  if (all_finite) return -1;
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) return static_cast<int64_t>(i);
  }
  return -1;
}

absl::Status NonFiniteError(absl::string_view field, absl::string_view name, int64_t index,
                            float value) {
  return absl::InvalidArgumentError(absl::StrCat(field, " \"", name, "\" element ", index, " is ",
                                                 value, "; every value must be finite"));
}

// OptimizerName as an absl::string_view (Debian's abseil does not take std::string_view).
absl::string_view NameOf(const OptimizerOptions& options) {
  const std::string_view name = OptimizerName(options);
  return absl::string_view(name.data(), name.size());
}

constexpr char kVersionPayload[] = "type.optd/current_version";

absl::Status WithVersion(absl::Status status, int64_t version) {
  status.SetPayload(kVersionPayload, absl::Cord(absl::StrCat(version)));
  return status;
}

// The pieces of a tensor's bytes (WireTensorView::pieces), indexed for random access.
class PieceIndex {
 public:
  explicit PieceIndex(absl::Span<const absl::string_view> pieces) : pieces_(pieces) {
    starts_.reserve(pieces.size());
    int64_t at = 0;
    for (const absl::string_view piece : pieces) {
      starts_.push_back(at);
      at += static_cast<int64_t>(piece.size());
    }
  }

  // Copies bytes [offset, offset + size) of the pieces laid end to end to `out`.
  // REQUIRES: the range lies within them.
  void Gather(int64_t offset, int64_t size, char* out) const {
    size_t k = PieceOf(offset);
    int64_t skip = offset - starts_[k];
    while (size > 0) {
      const int64_t take = std::min<int64_t>(size, pieces_[k].size() - skip);
      std::memcpy(out, pieces_[k].data() + skip, take);
      out += take;
      size -= take;
      skip = 0;
      ++k;
    }
  }

  // Bytes [offset, offset + size): a view into the piece that holds them all, or, when they
  // span pieces, a copy gathered into `*scratch`.
  absl::string_view View(int64_t offset, int64_t size, std::string* scratch) const {
    const size_t k = PieceOf(offset);
    const int64_t skip = offset - starts_[k];
    if (skip + size <= static_cast<int64_t>(pieces_[k].size())) {
      return pieces_[k].substr(skip, size);
    }
    scratch->resize(size);
    Gather(offset, size, scratch->data());
    return *scratch;
  }

 private:
  // The piece holding byte `offset`.
  size_t PieceOf(int64_t offset) const {
    return std::upper_bound(starts_.begin(), starts_.end(), offset) - starts_.begin() - 1;
  }

  absl::Span<const absl::string_view> pieces_;
  std::vector<int64_t> starts_;  // of each piece
};

// One buffer of its own per tensor.
std::vector<std::shared_ptr<std::vector<float>>> SharedBuffers(
    std::vector<std::vector<float>> values) {
  std::vector<std::shared_ptr<std::vector<float>>> buffers;
  buffers.reserve(values.size());
  for (std::vector<float>& v : values) {
    buffers.push_back(std::make_shared<std::vector<float>>(std::move(v)));
  }
  return buffers;
}

}  // namespace

int64_t CurrentVersionOf(const absl::Status& status) {
  absl::optional<absl::Cord> payload = status.GetPayload(kVersionPayload);
  int64_t version = -1;
  if (!payload.has_value() || !absl::SimpleAtoi(std::string(*payload), &version)) return -1;
  return version;
}

absl::string_view RefusalReasonName(RefusalReason reason) {
  switch (reason) {
    case RefusalReason::kInvalid:
      return "invalid";
    case RefusalReason::kNonFinite:
      return "non_finite";
    case RefusalReason::kStale:
      return "stale";
    case RefusalReason::kDuplicate:
      return "duplicate";
    case RefusalReason::kBarrierTimeout:
      return "barrier_timeout";
  }
  return "unknown";
}

absl::Status ValidateSessionId(absl::string_view id) {
  if (id.empty() || id.size() > kMaxSessionIdLength) {
    return absl::InvalidArgumentError(absl::StrCat("session_id \"", id, "\" has length ", id.size(),
                                                   "; must be 1 to ", kMaxSessionIdLength,
                                                   " characters"));
  }
  for (char c : id) {
    if (!IsIdChar(c, "._-")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "session_id \"", id, "\" has an invalid character; allowed: [A-Za-z0-9._-]"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Session>> Session::Create(std::string id, SessionConfig config,
                                                         absl::Span<const WireTensorView> tensors,
                                                         absl::Time now, SessionObserver* observer,
                                                         DeadlineScheduler* scheduler) {
  if (absl::Status s = ValidateSessionId(id); !s.ok()) return s;
  if (absl::Status s = config.consistency.Validate(); !s.ok()) return s;
  if (config.consistency.mode == ConsistencyOptions::Mode::kSync && scheduler == nullptr) {
    return absl::InternalError("a SYNC session needs a DeadlineScheduler");
  }
  if (tensors.empty() || tensors.size() > kMaxTensorsPerSession) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensors has ", tensors.size(), " entries; must be 1 to ", kMaxTensorsPerSession));
  }
  std::vector<TensorSpec> specs;
  std::vector<std::vector<float>> values;
  std::vector<int64_t> sizes;
  absl::flat_hash_set<absl::string_view> names;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const WireTensorView& t = tensors[i];
    const std::string field = absl::StrCat("tensors[", i, "]");
    if (absl::Status s = ValidateTensorName(field, t.name); !s.ok()) return s;
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".name \"", t.name, "\" is repeated; names must be unique"));
    }
    absl::StatusOr<int64_t> n = ValidateShape(field, t.shape);
    if (!n.ok()) return n.status();
    std::vector<float> v;
    if (absl::Status s = DecodeFloats(field, t.dtype, t.data, *n, &v); !s.ok()) return s;
    if (int64_t bad = FirstNonFinite(v); bad >= 0) {
      return NonFiniteError(field, t.name, bad, v[bad]);
    }
    specs.push_back(
        {std::string(t.name), std::vector<int64_t>(t.shape.begin(), t.shape.end()), *n});
    sizes.push_back(*n);
    values.push_back(std::move(v));
  }
  absl::StatusOr<std::unique_ptr<Optimizer>> optimizer =
      CreateOptimizer(config.optimizer, std::move(sizes));
  if (!optimizer.ok()) return optimizer.status();
  absl::StatusOr<LrSchedule> schedule =
      LrSchedule::Create(config.schedule, BaseLearningRate(config.optimizer));
  if (!schedule.ok()) return schedule.status();
  if (absl::Status s = config.clipping.Validate(); !s.ok()) return s;
  return std::shared_ptr<Session>(new Session(std::move(id), std::move(specs), std::move(values),
                                              *std::move(optimizer), *std::move(schedule),
                                              config.clipping, std::move(config.consistency), now,
                                              observer, scheduler));
}

Session::Session(std::string id, std::vector<TensorSpec> specs,
                 std::vector<std::vector<float>> values, std::unique_ptr<Optimizer> optimizer,
                 LrSchedule schedule, ClipOptions clipping, ConsistencyOptions consistency,
                 absl::Time create_time, SessionObserver* observer, DeadlineScheduler* scheduler)
    : id_(std::move(id)),
      specs_(std::move(specs)),
      consistency_(std::move(consistency)),
      create_time_(create_time),
      observer_(observer),
      scheduler_(scheduler),
      values_(SharedBuffers(std::move(values))),
      optimizer_(std::move(optimizer)),
      schedule_(std::move(schedule)),
      clipping_(clipping) {}

int Session::FindTensor(absl::string_view name) const {
  for (size_t i = 0; i < specs_.size(); ++i) {
    if (specs_[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

int64_t Session::RowSize(int index) const {
  const TensorSpec& spec = specs_[index];
  return spec.shape.empty() ? 1 : spec.num_elements / spec.shape[0];
}

std::vector<float> Session::Densify(int index, Gradient&& g) const {
  if (!g.sparse) return std::move(g.Own());
  const int64_t row_size = RowSize(index);
  std::vector<float> dense(specs_[index].num_elements, 0.0f);
  const float* values = g.values().data();
  for (size_t r = 0; r < g.rows.size(); ++r) {
    std::copy_n(values + r * row_size, row_size, dense.data() + g.rows[r] * row_size);
  }
  return dense;
}

absl::Status Session::DecodeGradients(const StepInput& input, std::vector<Gradient>* grads,
                                      RefusalReason* reason) const {
  const size_t n = specs_.size();
  grads->clear();
  grads->resize(n);
  std::vector<bool> seen(n, false);
  *reason = RefusalReason::kInvalid;
  for (size_t i = 0; i < input.gradients.size(); ++i) {
    const WireTensorView& g = input.gradients[i];
    const std::string field = absl::StrCat("gradients[", i, "]");
    const int k = FindTensor(g.name);
    if (k < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".name \"", g.name, "\" is not a tensor of session ", id_));
    }
    if (seen[k]) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".name \"", g.name, "\" is repeated; one gradient per tensor"));
    }
    seen[k] = true;
    const TensorSpec& spec = specs_[k];
    if (!std::equal(g.shape.begin(), g.shape.end(), spec.shape.begin(), spec.shape.end())) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".shape ", ShapeString(g.shape),
                                                     " of \"", g.name, "\" must be ",
                                                     ShapeString(spec.shape)));
    }
    Gradient& out = (*grads)[k];
    if (!g.has_rows) {
      // One pass measures the gradient and checks it: the sum is finite iff every value is.
      double squares;
      if (const std::optional<absl::Span<const float>> view =
              g.pieces.empty() ? F32View(g.dtype, g.data, spec.num_elements) : std::nullopt) {
        out.Borrow(*view);  // read in place from the request
        squares = SquaredNorm(*view);
      } else {
        if (absl::Status s = CheckEncodedSize(field, g.dtype, g.size(), spec.num_elements);
            !s.ok()) {
          return s;
        }
        // Decoded (gathered from the pieces, if any) block by block, on the pool if large, each
        // block measured while in cache: the request's bytes are read once.
        const absl::string_view whole[] = {g.data};
        const PieceIndex index(g.pieces.empty() ? absl::MakeConstSpan(whole) : g.pieces);
        const absl::Span<float> values = out.Allocate(spec.num_elements);
        const int64_t width = BytesPerElement(g.dtype);
        squares = FillAndSquaredNorm(
            spec.num_elements,
            [&](int64_t begin, int64_t end) {
              const absl::Span<float> block = values.subspan(begin, end - begin);
              if (g.dtype == WireDType::kF32) {  // the bytes are the floats: one copy
                index.Gather(begin * width, block.size() * width,
                             reinterpret_cast<char*>(block.data()));
                return;
              }
              thread_local std::string scratch;
              (void)DecodeFloats(field, g.dtype,
                                 index.View(begin * width, block.size() * width, &scratch), block);
            },
            values.data());
      }
      if (!std::isfinite(squares)) {
        const int64_t bad = FirstNonFinite(out.values());
        *reason = RefusalReason::kNonFinite;
        return NonFiniteError(field, g.name, bad, out.values()[bad]);
      }
      out.squares = squares;
      continue;
    }
    // Row-sparse.
    if (spec.shape.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, " \"", g.name, "\" has rows but the tensor is a scalar; rows need rank >= 1"));
    }
    const int64_t row_size = RowSize(k);
    for (size_t r = 0; r < g.rows.size(); ++r) {
      if (g.rows[r] < 0 || g.rows[r] >= spec.shape[0]) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ".rows.indices[", r, "] = ", g.rows[r],
                         " is out of range: must be in [0, ", spec.shape[0], ")"));
      }
    }
    std::vector<float> raw;
    if (absl::Status s = DecodeFloats(field, g.dtype, g.data,
                                      static_cast<int64_t>(g.rows.size()) * row_size, &raw);
        !s.ok()) {
      return s;
    }
    if (int64_t bad = FirstNonFinite(raw); bad >= 0) {
      *reason = RefusalReason::kNonFinite;
      return NonFiniteError(field, g.name, bad, raw[bad]);
    }
    // Coalesce: sorted unique rows; duplicates summed in the order they came.
    std::vector<size_t> order(g.rows.size());
    for (size_t r = 0; r < order.size(); ++r) order[r] = r;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return g.rows[a] < g.rows[b]; });
    out.sparse = true;
    std::vector<float>& values = out.Own();
    for (size_t r : order) {
      const float* src = raw.data() + r * row_size;
      if (out.rows.empty() || out.rows.back() != g.rows[r]) {
        out.rows.push_back(g.rows[r]);
        values.insert(values.end(), src, src + row_size);
      } else {
        float* dst = values.data() + values.size() - row_size;
        for (int64_t j = 0; j < row_size; ++j) dst[j] += src[j];
      }
    }
  }
  for (size_t k = 0; k < n; ++k) {
    if (!seen[k]) {
      return absl::InvalidArgumentError(absl::StrCat("gradients has no entry for tensor \"",
                                                     specs_[k].name, "\"; every one of the ", n,
                                                     " tensors needs a gradient"));
    }
  }
  return absl::OkStatus();
}

absl::Status Session::Admit(const StepInput& input, const Outcome** duplicate_of,
                            int64_t* staleness, RefusalReason* reason) {
  *duplicate_of = nullptr;
  *staleness = 0;
  *reason = RefusalReason::kInvalid;
  if (input.sequence > 0) {
    auto it = workers_.find(input.worker_id);
    if (it != workers_.end()) {
      for (const Outcome& o : it->second.recent) {
        if (o.sequence == input.sequence) {
          *duplicate_of = &o;
          return absl::OkStatus();
        }
      }
      if (input.sequence <= it->second.last_sequence) {
        *reason = RefusalReason::kDuplicate;
        return absl::FailedPreconditionError(absl::StrCat(
            "sequence = ", input.sequence, " of worker ", input.worker_id,
            " is not above its last sequence ", it->second.last_sequence, " and is not among its ",
            kReplayWindow, " most recent outcomes; a new step needs a larger sequence number"));
      }
    }
  }
  if (consistency_.mode == ConsistencyOptions::Mode::kSync && !consistency_.worker_ids.empty() &&
      std::find(consistency_.worker_ids.begin(), consistency_.worker_ids.end(), input.worker_id) ==
          consistency_.worker_ids.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "worker_id \"", input.worker_id, "\" is not one of the session's SYNC workers (",
        absl::StrJoin(consistency_.worker_ids, ", "), ")"));
  }
  if (input.version.has_value()) {
    if (*input.version > version_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "version = ", *input.version, " is ahead of the session, which is at version ", version_,
          "; must be in [0, ", version_, "]"));
    }
    *staleness = version_ - *input.version;
  }
  if (consistency_.mode == ConsistencyOptions::Mode::kBounded &&
      *staleness > consistency_.max_staleness) {
    *reason = RefusalReason::kStale;
    return WithVersion(
        absl::AbortedError(absl::StrCat(
            "gradient computed at version ", *input.version, " is ", *staleness,
            " versions old; this BOUNDED session accepts at most ", consistency_.max_staleness,
            ". The session is at version ", version_, ": pull and recompute")),
        version_);
  }
  if (consistency_.mode == ConsistencyOptions::Mode::kSync && *staleness != 0) {
    *reason = RefusalReason::kStale;
    return WithVersion(
        absl::AbortedError(absl::StrCat("gradient computed at version ", *input.version,
                                        " cannot join the SYNC barrier of version ", version_,
                                        ": pull and recompute")),
        version_);
  }
  return absl::OkStatus();
}

absl::Status Session::ApplyLocked(std::vector<Gradient>& gradients, float scale,
                                  std::optional<double> loss, StepOutput* out, StepEvent* event) {
  // Row-sparse gradients stay sparse for optimizers with a lazy rule (Adam: torch SparseAdam);
  // the others get the dense equivalent, where rows not sent have a zero gradient.
  bool lazy = false;
  for (const Gradient& g : gradients) {
    if (!g.sparse) continue;
    absl::StatusOr<RowSparseRule> rule = optimizer_->RowSparse();
    if (!rule.ok()) return rule.status();
    lazy = *rule == RowSparseRule::kLazy;
    break;
  }
  for (size_t k = 0; k < gradients.size(); ++k) {
    if (gradients[k].sparse && !lazy) {
      std::vector<float> dense = Densify(k, std::move(gradients[k]));
      gradients[k] = Gradient();
      gradients[k].Own() = std::move(dense);
    }
  }
  if (scale != 1.0f) {
    for (Gradient& g : gradients) {
      for (float& x : g.Own()) x *= scale;
    }
  }
  // The norm of the gradient the optimizer uses (SYNC: the combined one), before clipping. Only
  // clipping writes the gradients; without it they stay where they are (borrowed ones too).
  if (clipping_.enabled()) {
    std::vector<absl::Span<float>> grad_spans;
    for (Gradient& g : gradients) grad_spans.push_back(absl::MakeSpan(g.Own()));
    out->gradient_norm = Clip(clipping_, grad_spans);
  } else {
    // GlobalNorm, from the sums measured while decoding where they still hold.
    double squares = 0;
    for (const Gradient& g : gradients) {
      squares += g.squares.has_value() ? *g.squares : SquaredNorm(g.values());
    }
    out->gradient_norm = std::sqrt(squares);
  }
  std::vector<TensorGrad> step(gradients.size());
  int64_t copied_bytes = 0;
  for (size_t k = 0; k < gradients.size(); ++k) {
    step[k] = {absl::MakeSpan(WritableValues(k, &copied_bytes)), gradients[k].values(),
               gradients[k].rows, gradients[k].sparse ? RowSize(k) : 0};
  }
  const double lr = schedule_.Current();
  bool measure = false;  // the update and parameter norms, for the observer
  if (observer_ != nullptr) {
    int64_t elements = 0;
    for (const TensorSpec& spec : specs_) elements += spec.num_elements;
    measure = elements <= kNormsEveryStepElements;
    if (!measure) {
      const absl::Time now = absl::Now();
      measure = now - norms_measured_ >= kNormsInterval;
      if (measure) norms_measured_ = now;
    }
  }
  StepNorms norms;
  if (absl::Status s = optimizer_->Step(step, lr, measure ? &norms : nullptr); !s.ok()) {
    return s;
  }
  schedule_.Advance(loss);
  event->loss = loss;
  if (measure) {
    event->update_norm = norms.update_norm;
    event->parameter_norm = norms.parameter_norm;
  }
  out->version = ++version_;
  out->parameters_version = version_;
  out->learning_rate = lr;
  event->session_id = id_;
  event->optimizer = NameOf(optimizer_->options());
  event->version = version_;
  event->workers = out->workers;
  event->gradient_norm = out->gradient_norm;
  event->learning_rate = lr;
  event->optimizer_state_bytes = optimizer_->StateBytes();
  event->parameter_bytes_copied = copied_bytes;
  return absl::OkStatus();
}

void Session::RecordOutcome(const std::string& worker_id, int64_t sequence, const StepOutput& out) {
  if (sequence <= 0 || worker_id.empty()) return;
  if (workers_.find(worker_id) == workers_.end() &&
      static_cast<int>(workers_.size()) >= kMaxTrackedWorkers) {
    auto oldest = workers_.begin();
    for (auto it = workers_.begin(); it != workers_.end(); ++it) {
      if (it->second.last_active < oldest->second.last_active) oldest = it;
    }
    workers_.erase(oldest);
  }
  WorkerRecord& record = workers_[worker_id];
  record.last_sequence = std::max(record.last_sequence, sequence);
  record.last_active = version_;
  Outcome outcome{sequence, out};
  outcome.output.parameters.clear();
  outcome.output.duplicate = false;
  record.recent.push_back(std::move(outcome));
  if (static_cast<int>(record.recent.size()) > kReplayWindow) record.recent.pop_front();
}

void Session::EncodeParameters(ReturnMode mode, WireDType dtype,
                               const std::vector<const std::vector<int64_t>*>& touched,
                               StepOutput* out) const {
  out->parameters.clear();
  out->parameters_version = version_;
  if (mode == ReturnMode::kNone) return;
  out->parameters.reserve(specs_.size());
  for (size_t k = 0; k < specs_.size(); ++k) {
    const bool rows_only = mode == ReturnMode::kTouched && k < touched.size() && touched[k];
    out->parameters.push_back(rows_only ? EncodeRows(k, *touched[k], dtype)
                                        : EncodeTensor(k, dtype));
  }
}

WireTensor Session::EncodeRows(int index, absl::Span<const int64_t> rows, WireDType dtype) const {
  const int64_t row_size = RowSize(index);
  std::vector<float> gathered(rows.size() * row_size);
  for (size_t r = 0; r < rows.size(); ++r) {
    std::copy_n(values_[index]->data() + rows[r] * row_size, row_size,
                gathered.data() + r * row_size);
  }
  WireTensor t{specs_[index].name,
               specs_[index].shape,
               dtype,
               {},
               {},
               true,
               std::vector<int64_t>(rows.begin(), rows.end())};
  EncodeFloats(dtype, gathered, &t.data);
  return t;
}

std::vector<std::string> Session::MissingWorkersLocked() const {
  const std::vector<std::string>& expected =
      consistency_.worker_ids.empty() ? known_workers_ : consistency_.worker_ids;
  std::vector<std::string> missing;
  for (const std::string& w : expected) {
    if (std::find(barrier_.contributors.begin(), barrier_.contributors.end(), w) ==
        barrier_.contributors.end()) {
      missing.push_back(w);
    }
  }
  return missing;
}

void Session::CompleteBarrierLocked(std::vector<Completion>* completions, StepEvent* event,
                                    BarrierReport* report) {
  const int n = static_cast<int>(barrier_.contributors.size());
  report->wait_seconds = absl::ToDoubleSeconds(absl::Now() - barrier_.opened);
  report->missing_workers = consistency_.workers - n;
  const float scale = consistency_.reduce == ConsistencyOptions::Reduce::kMean
                          ? 1.0f / static_cast<float>(n)
                          : 1.0f;
  StepOutput out;
  out.workers = n;
  if (n < consistency_.workers) out.missing_workers = MissingWorkersLocked();
  for (const std::string& w : barrier_.contributors) {
    if (std::find(known_workers_.begin(), known_workers_.end(), w) == known_workers_.end() &&
        known_workers_.size() < static_cast<size_t>(ConsistencyOptions::kMaxSyncWorkers)) {
      known_workers_.push_back(w);
    }
  }
  std::optional<double> loss;
  if (!barrier_.losses.empty()) {
    double total = 0;
    for (double l : barrier_.losses) total += l;
    loss = total / barrier_.losses.size();
  }
  std::vector<Gradient> combined(barrier_.sum.size());
  std::vector<const std::vector<int64_t>*> touched(barrier_.sum.size());
  for (size_t k = 0; k < combined.size(); ++k) {
    touched[k] = barrier_.dense[k] ? nullptr : &barrier_.touched[k];
    if (barrier_.dense[k]) {
      combined[k].Own() = std::move(barrier_.sum[k]);
      continue;
    }
    // Only sparse contributions: the combined gradient is sparse over the rows they touched.
    const int64_t row_size = RowSize(k);
    combined[k].sparse = true;
    combined[k].rows = barrier_.touched[k];
    std::vector<float>& values = combined[k].Own();
    values.resize(combined[k].rows.size() * row_size);
    for (size_t r = 0; r < combined[k].rows.size(); ++r) {
      std::copy_n(barrier_.sum[k].data() + combined[k].rows[r] * row_size, row_size,
                  values.data() + r * row_size);
    }
  }
  const absl::Status applied = ApplyLocked(combined, scale, loss, &out, event);
  // One encoding per requested (mode, dtype), shared by every waiter that asked for it.
  std::vector<std::pair<std::pair<ReturnMode, WireDType>, std::vector<WireTensor>>> encoded;
  for (Waiter& w : barrier_.waiters) {
    Completion c{std::move(w.done),
                 applied.ok() ? absl::StatusOr<StepOutput>(StepOutput{})
                              : absl::StatusOr<StepOutput>(applied),
                 w.bytes_received, 0};
    if (applied.ok()) {
      StepOutput reply = out;
      reply.duplicate = w.duplicate;
      reply.parameters_version = version_;
      if (!w.duplicate) RecordOutcome(w.worker_id, w.sequence, reply);
      if (w.return_mode != ReturnMode::kNone) {
        const auto key = std::make_pair(w.return_mode, w.return_dtype);
        auto it = std::find_if(encoded.begin(), encoded.end(),
                               [&](const auto& e) { return e.first == key; });
        if (it == encoded.end()) {
          StepOutput tmp;
          EncodeParameters(w.return_mode, w.return_dtype, touched, &tmp);
          encoded.emplace_back(key, std::move(tmp.parameters));
          it = encoded.end() - 1;
        }
        reply.parameters = it->second;
      }
      c.result = std::move(reply);
    }
    completions->push_back(std::move(c));
  }
  barrier_ = Barrier{barrier_.id + 1};
}

void Session::FailBarrierLocked(const absl::Status& status, std::vector<Completion>* completions) {
  for (Waiter& w : barrier_.waiters) {
    completions->push_back({std::move(w.done), status, w.bytes_received, 0});
  }
  barrier_ = Barrier{barrier_.id + 1};
}

void Session::Step(const StepInput& input, StepCallback done) {
  int64_t bytes_received = 0;
  for (const WireTensorView& g : input.gradients) bytes_received += g.size();
  auto refuse = [&](absl::Status status, RefusalReason reason) {
    std::vector<Completion> completions;
    completions.push_back({std::move(done), std::move(status), bytes_received, -1});
    Report(std::move(completions), nullptr, nullptr, reason);
  };

  // Checks that need no state.
  const bool sync = consistency_.mode == ConsistencyOptions::Mode::kSync;
  if (!input.worker_id.empty()) {
    if (absl::Status s = ValidateWorkerId("worker_id", input.worker_id); !s.ok()) {
      return refuse(s, RefusalReason::kInvalid);
    }
  } else if (input.sequence != 0 || sync) {
    return refuse(
        absl::InvalidArgumentError(absl::StrCat(
            "worker_id is required ", sync ? "in a SYNC session" : "with a sequence number",
            " (sequence = ", input.sequence, ")")),
        RefusalReason::kInvalid);
  }
  if (input.sequence < 0) {
    return refuse(absl::InvalidArgumentError(absl::StrCat("sequence = ", input.sequence,
                                                          " is out of range: must be >= 0")),
                  RefusalReason::kInvalid);
  }
  if (input.loss.has_value() && !std::isfinite(*input.loss)) {
    return refuse(absl::InvalidArgumentError(
                      absl::StrCat("loss = ", *input.loss, " is out of range: must be finite")),
                  RefusalReason::kNonFinite);
  }
  if (input.version.has_value() && *input.version < 0) {
    return refuse(absl::InvalidArgumentError(
                      absl::StrCat("version = ", *input.version, " is out of range: must be >= 0")),
                  RefusalReason::kInvalid);
  }
  if (!input.version.has_value() && consistency_.mode != ConsistencyOptions::Mode::kAsync) {
    return refuse(absl::InvalidArgumentError(
                      absl::StrCat("version is required in a ", ModeName(consistency_.mode),
                                   " session: send the version the gradient was computed at")),
                  RefusalReason::kInvalid);
  }

  // Decode and validate outside the lock: names and shapes never change after Create.
  std::vector<Gradient> grads;
  RefusalReason reason;
  if (absl::Status s = DecodeGradients(input, &grads, &reason); !s.ok()) {
    return refuse(s, reason);
  }
  // The rows each tensor's gradient touched (null: dense), for ReturnMode::kTouched.
  std::vector<std::vector<int64_t>> touched_rows(grads.size());
  std::vector<const std::vector<int64_t>*> touched(grads.size());
  for (size_t k = 0; k < grads.size(); ++k) {
    if (grads[k].sparse) {
      touched_rows[k] = grads[k].rows;
      touched[k] = &touched_rows[k];
    }
  }

  std::vector<Completion> completions;
  StepEvent event;
  BarrierReport barrier_report;
  bool applied = false, barrier_done = false;
  std::optional<RefusalReason> refusal;
  {
    absl::MutexLock lock(&mu_);
    const Outcome* duplicate_of = nullptr;
    int64_t staleness = 0;
    absl::Status admitted = closed_;
    // A retry of a contribution still waiting at the barrier waits for the same outcome.
    bool attached = false;
    if (admitted.ok() && sync && input.sequence > 0) {
      for (const Waiter& w : barrier_.waiters) {
        if (w.worker_id == input.worker_id && w.sequence == input.sequence && !w.duplicate) {
          barrier_.waiters.push_back({input.worker_id, input.sequence, input.return_mode,
                                      input.return_dtype, true, bytes_received, std::move(done)});
          attached = true;
          break;
        }
      }
    }
    if (!attached && admitted.ok()) admitted = Admit(input, &duplicate_of, &staleness, &reason);
    // For the observer: -1 when the request did not say which version it was computed at.
    const int64_t known_staleness = input.version.has_value() ? staleness : -1;
    if (!attached && admitted.ok() && duplicate_of == nullptr) {
      for (const Gradient& g : grads) {
        if (!g.sparse) continue;
        absl::StatusOr<RowSparseRule> rule = optimizer_->RowSparse();
        if (!rule.ok()) {
          admitted = rule.status();
          reason = RefusalReason::kInvalid;
        }
        break;
      }
    }
    if (attached) {
      // answered when the barrier completes
    } else if (!admitted.ok()) {
      completions.push_back({std::move(done), admitted, bytes_received, -1});
      if (closed_.ok()) refusal = reason;
    } else if (duplicate_of != nullptr) {
      StepOutput out = duplicate_of->output;
      out.duplicate = true;
      EncodeParameters(input.return_mode, input.return_dtype, touched, &out);
      completions.push_back({std::move(done), std::move(out), bytes_received, known_staleness});
    } else if (!sync) {
      StepOutput out;
      out.staleness = staleness;
      absl::Status s = ApplyLocked(grads, 1.0f, input.loss, &out, &event);
      if (s.ok()) {
        applied = true;
        RecordOutcome(input.worker_id, input.sequence, out);
        EncodeParameters(input.return_mode, input.return_dtype, touched, &out);
        completions.push_back({std::move(done), std::move(out), bytes_received, known_staleness});
      } else {
        completions.push_back({std::move(done), s, bytes_received, known_staleness});
      }
    } else if (std::find(barrier_.contributors.begin(), barrier_.contributors.end(),
                         input.worker_id) != barrier_.contributors.end()) {
      completions.push_back(
          {std::move(done),
           absl::InvalidArgumentError(absl::StrCat(
               "worker ", input.worker_id, " already sent a gradient for version ", version_,
               "; one gradient per worker per SYNC step (a retry must reuse its sequence number)")),
           bytes_received, known_staleness});
      refusal = RefusalReason::kInvalid;
    } else {
      // Join the barrier.
      if (barrier_.contributors.empty()) {
        barrier_.opened = absl::Now();
        barrier_.sum.resize(grads.size());
        barrier_.dense.assign(grads.size(), false);
        barrier_.touched.assign(grads.size(), {});
        for (size_t k = 0; k < grads.size(); ++k) {
          barrier_.dense[k] = !grads[k].sparse;
          if (grads[k].sparse) barrier_.touched[k] = grads[k].rows;
          barrier_.sum[k] = Densify(k, std::move(grads[k]));
        }
        scheduler_->Schedule(barrier_.opened + consistency_.barrier_timeout,
                             [weak = weak_from_this(), id = barrier_.id] {
                               if (std::shared_ptr<Session> s = weak.lock()) s->ExpireBarrier(id);
                             });
      } else {
        for (size_t k = 0; k < grads.size(); ++k) {
          float* sum = barrier_.sum[k].data();
          const absl::Span<const float> values = grads[k].values();
          const float* g = values.data();
          if (!grads[k].sparse) {
            barrier_.dense[k] = true;
            for (size_t i = 0; i < values.size(); ++i) sum[i] += g[i];
            continue;
          }
          const int64_t row_size = RowSize(k);
          for (size_t r = 0; r < grads[k].rows.size(); ++r) {
            float* dst = sum + grads[k].rows[r] * row_size;
            for (int64_t j = 0; j < row_size; ++j) dst[j] += g[r * row_size + j];
          }
          std::vector<int64_t> merged;
          std::set_union(barrier_.touched[k].begin(), barrier_.touched[k].end(),
                         grads[k].rows.begin(), grads[k].rows.end(), std::back_inserter(merged));
          barrier_.touched[k] = std::move(merged);
        }
      }
      barrier_.contributors.push_back(input.worker_id);
      if (input.loss.has_value()) barrier_.losses.push_back(*input.loss);
      barrier_.waiters.push_back({input.worker_id, input.sequence, input.return_mode,
                                  input.return_dtype, false, bytes_received, std::move(done)});
      if (static_cast<int>(barrier_.contributors.size()) == consistency_.workers) {
        CompleteBarrierLocked(&completions, &event, &barrier_report);
        applied = barrier_done = true;
      }
    }
  }
  Report(std::move(completions), applied ? &event : nullptr,
         barrier_done ? &barrier_report : nullptr, refusal);
}

void Session::ExpireBarrier(int64_t barrier_id) {
  std::vector<Completion> completions;
  StepEvent event;
  BarrierReport report;
  bool applied = false;
  {
    absl::MutexLock lock(&mu_);
    if (barrier_.id != barrier_id || barrier_.contributors.empty() || !closed_.ok()) return;
    const int n = static_cast<int>(barrier_.contributors.size());
    if (n >= consistency_.effective_quorum()) {
      CompleteBarrierLocked(&completions, &event, &report);
      applied = true;
    } else {
      report.wait_seconds = absl::ToDoubleSeconds(absl::Now() - barrier_.opened);
      report.missing_workers = consistency_.workers - n;
      const std::vector<std::string> missing = MissingWorkersLocked();
      absl::Status status = WithVersion(
          absl::AbortedError(absl::StrCat(
              "SYNC barrier of version ", version_, " expired after ",
              absl::FormatDuration(consistency_.barrier_timeout), " with ", n, " of ",
              consistency_.workers, " gradients (from ", absl::StrJoin(barrier_.contributors, ", "),
              "), below the quorum of ", consistency_.effective_quorum(), "; missing: ",
              missing.empty() ? std::string("workers not yet known by id")
                              : absl::StrJoin(missing, ", "),
              ". Nothing was applied; pull and retry")),
          version_);
      FailBarrierLocked(status, &completions);
    }
  }
  Report(std::move(completions), applied ? &event : nullptr, &report,
         applied ? std::nullopt : std::optional<RefusalReason>(RefusalReason::kBarrierTimeout));
}

absl::Status Session::Update(const SessionUpdate& update) {
  if (update.clipping.has_value()) {
    if (absl::Status s = update.clipping->Validate(); !s.ok()) return s;
  }
  absl::MutexLock lock(&mu_);
  OptimizerOptions options = optimizer_->options();
  if (update.optimizer) {
    if (absl::Status s = update.optimizer(&options); !s.ok()) return s;
    if (options.index() != optimizer_->options().index()) {
      return absl::InvalidArgumentError(
          absl::StrCat("optimizer is ", NameOf(options), " but the session runs ",
                       NameOf(optimizer_->options()), "; the optimizer kind cannot change"));
    }
  }
  const double base_lr = update.optimizer ? BaseLearningRate(options) : schedule_.base_lr();
  // Build the new schedule first: nothing changes unless every part is valid.
  LrSchedule schedule = schedule_;
  if (update.schedule.has_value()) {
    absl::StatusOr<LrSchedule> fresh = LrSchedule::Create(*update.schedule, base_lr);
    if (!fresh.ok()) return fresh.status();
    LrScheduleState state = fresh->state();
    state.step = schedule_.steps();  // the new schedule continues at the current step
    if (absl::Status s = fresh->RestoreState(state); !s.ok()) return s;
    schedule = *std::move(fresh);
  } else if (base_lr != schedule_.base_lr()) {
    if (absl::Status s = schedule.SetBaseLr(base_lr); !s.ok()) return s;
  }
  if (update.optimizer) {
    if (absl::Status s = optimizer_->UpdateOptions(options); !s.ok()) return s;
  }
  schedule_ = std::move(schedule);
  if (update.clipping.has_value()) clipping_ = *update.clipping;
  return absl::OkStatus();
}

void Session::Close(const absl::Status& status) {
  std::vector<Completion> completions;
  {
    absl::MutexLock lock(&mu_);
    closed_ = status;
    FailBarrierLocked(status, &completions);
  }
  Report(std::move(completions), nullptr, nullptr, std::nullopt);
}

void Session::Report(std::vector<Completion> completions, const StepEvent* event,
                     const BarrierReport* barrier, std::optional<RefusalReason> refusal) {
  if (observer_ != nullptr) {
    if (event != nullptr) observer_->OnStep(*event);
    if (barrier != nullptr) {
      observer_->OnBarrier(id_, barrier->wait_seconds, barrier->missing_workers);
    }
    for (const Completion& c : completions) {
      RequestEvent request{id_, c.bytes_received, 0, c.staleness};
      if (c.result.ok()) {
        for (const WireTensor& p : c.result->parameters) request.bytes_sent += p.EncodedSize();
      }
      observer_->OnRequest(request);
      if (!c.result.ok()) {
        if (refusal.has_value()) observer_->OnRefused(id_, *refusal);
      } else if (c.result->duplicate) {
        observer_->OnRefused(id_, RefusalReason::kDuplicate);
      }
    }
  }
  for (Completion& c : completions) c.done(std::move(c.result));
}

absl::StatusOr<StepOutput> Session::StepAndWait(const StepInput& input) {
  absl::Notification finished;
  absl::StatusOr<StepOutput> result;
  Step(input, [&](absl::StatusOr<StepOutput> r) {
    result = std::move(r);
    finished.Notify();
  });
  finished.WaitForNotification();
  return result;
}

WireTensor Session::EncodeTensor(int index, WireDType dtype) const {
  WireTensor t{specs_[index].name, specs_[index].shape, dtype, {}};
  t.shared = values_[index];  // encoded when the reply is written, outside the lock
  return t;
}

std::vector<float>& Session::WritableValues(int index, int64_t* copied_bytes) {
  std::shared_ptr<std::vector<float>>& values = values_[index];
  if (values.use_count() > 1) {
    values = std::make_shared<std::vector<float>>(*values);
    *copied_bytes += static_cast<int64_t>(values->size() * sizeof(float));
  } else {
    // The last reply that shared the buffer has let go of it; its reads (on gRPC's threads)
    // happen before the writes that follow.
    std::atomic_thread_fence(std::memory_order_acquire);
  }
  return *values;
}

absl::StatusOr<PullOutput> Session::Pull(absl::Span<const absl::string_view> names, WireDType dtype,
                                         absl::Span<const RowSelection> rows) const {
  std::vector<int> indices;
  if (names.empty()) {
    for (size_t k = 0; k < specs_.size(); ++k) indices.push_back(k);
  } else {
    std::vector<bool> seen(specs_.size(), false);
    for (size_t i = 0; i < names.size(); ++i) {
      const int k = FindTensor(names[i]);
      if (k < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("names[", i, "] \"", names[i], "\" is not a tensor of session ", id_));
      }
      if (seen[k]) {
        return absl::InvalidArgumentError(
            absl::StrCat("names[", i, "] \"", names[i], "\" is repeated"));
      }
      seen[k] = true;
      indices.push_back(k);
    }
  }
  // For each tensor, the rows to return (null: all of it).
  std::vector<const RowSelection*> selection(specs_.size(), nullptr);
  for (size_t i = 0; i < rows.size(); ++i) {
    const int k = FindTensor(rows[i].name);
    if (k < 0 || std::find(indices.begin(), indices.end(), k) == indices.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "rows[", i, "].name \"", rows[i].name, "\" is not ",
          k < 0 ? absl::StrCat("a tensor of session ", id_) : std::string("among names")));
    }
    if (selection[k] != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("rows[", i, "].name \"", rows[i].name, "\" is repeated"));
    }
    if (specs_[k].shape.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("rows[", i, "].name \"", rows[i].name,
                                                     "\" is a scalar; rows need rank >= 1"));
    }
    for (size_t r = 0; r < rows[i].rows.size(); ++r) {
      if (rows[i].rows[r] < 0 || rows[i].rows[r] >= specs_[k].shape[0]) {
        return absl::InvalidArgumentError(
            absl::StrCat("rows[", i, "].indices[", r, "] = ", rows[i].rows[r],
                         " is out of range: must be in [0, ", specs_[k].shape[0], ")"));
      }
    }
    selection[k] = &rows[i];
  }
  PullOutput out;
  absl::ReaderMutexLock lock(&mu_);
  out.version = version_;
  out.tensors.reserve(indices.size());
  for (int k : indices) {
    out.tensors.push_back(selection[k] != nullptr ? EncodeRows(k, selection[k]->rows, dtype)
                                                  : EncodeTensor(k, dtype));
  }
  return out;
}

SessionInfo Session::Info() const {
  SessionInfo info;
  info.id = id_;
  info.tensors = specs_;
  info.create_time = create_time_;
  for (const TensorSpec& s : specs_) info.num_parameters += s.num_elements;
  info.parameter_bytes = info.num_parameters * static_cast<int64_t>(sizeof(float));
  info.config.consistency = consistency_;
  absl::ReaderMutexLock lock(&mu_);
  info.config.optimizer = optimizer_->options();
  info.config.schedule = schedule_.options();
  info.config.clipping = clipping_;
  info.learning_rate = schedule_.Current();
  info.version = version_;
  info.optimizer_state_bytes = optimizer_->StateBytes();
  info.state_bytes_per_parameter = optimizer_->StateBytesPerElement();
  return info;
}

}  // namespace optd
