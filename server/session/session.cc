#include "server/session/session.h"

#include <cmath>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

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
                                                   " has rank ", shape.size(),
                                                   "; must be at most ", kMaxTensorRank));
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

// Returns the index of the first non-finite value, or -1. Also accumulates the sum of squares.
int64_t FirstNonFinite(absl::Span<const float> values, double* sum_squares) {
  double ss = 0;
  bool all_finite = true;
  for (float v : values) {
    ss += static_cast<double>(v) * v;
    all_finite &= std::isfinite(v);
  }
  *sum_squares += ss;
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

}  // namespace

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
    return absl::InvalidArgumentError(absl::StrCat("session_id \"", id, "\" has length ",
                                                   id.size(), "; must be 1 to ",
                                                   kMaxSessionIdLength, " characters"));
  }
  for (char c : id) {
    if (!IsIdChar(c, "._-")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "session_id \"", id, "\" has an invalid character; allowed: [A-Za-z0-9._-]"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Session>> Session::Create(std::string id, SessionConfig config,
                                                         absl::Span<const WireTensorView> tensors,
                                                         absl::Time now,
                                                         SessionObserver* observer) {
  if (absl::Status s = ValidateSessionId(id); !s.ok()) return s;
  if (tensors.empty() || tensors.size() > kMaxTensorsPerSession) {
    return absl::InvalidArgumentError(absl::StrCat("tensors has ", tensors.size(),
                                                   " entries; must be 1 to ",
                                                   kMaxTensorsPerSession));
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
    std::vector<float> v(*n);
    if (absl::Status s = DecodeFloats(field, t.dtype, t.data, absl::MakeSpan(v)); !s.ok()) {
      return s;
    }
    double unused = 0;
    if (int64_t bad = FirstNonFinite(v, &unused); bad >= 0) {
      return NonFiniteError(field, t.name, bad, v[bad]);
    }
    specs.push_back({std::string(t.name), std::vector<int64_t>(t.shape.begin(), t.shape.end()),
                     *n});
    sizes.push_back(*n);
    values.push_back(std::move(v));
  }
  absl::StatusOr<std::unique_ptr<Optimizer>> optimizer =
      CreateOptimizer(config.optimizer, std::move(sizes));
  if (!optimizer.ok()) return optimizer.status();
  return std::unique_ptr<Session>(new Session(std::move(id), std::move(specs), std::move(values),
                                              *std::move(optimizer), now, observer));
}

Session::Session(std::string id, std::vector<TensorSpec> specs,
                 std::vector<std::vector<float>> values, std::unique_ptr<Optimizer> optimizer,
                 absl::Time create_time, SessionObserver* observer)
    : id_(std::move(id)),
      specs_(std::move(specs)),
      create_time_(create_time),
      observer_(observer),
      values_(std::move(values)),
      optimizer_(std::move(optimizer)) {}

int Session::FindTensor(absl::string_view name) const {
  for (size_t i = 0; i < specs_.size(); ++i) {
    if (specs_[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

absl::Status Session::DecodeGradients(const StepInput& input,
                                      std::vector<std::vector<float>>* grads,
                                      double* sum_squares, RefusalReason* reason) const {
  const size_t n = specs_.size();
  grads->assign(n, {});
  std::vector<bool> seen(n, false);
  *reason = RefusalReason::kInvalid;
  for (size_t i = 0; i < input.gradients.size(); ++i) {
    const WireTensorView& g = input.gradients[i];
    const std::string field = absl::StrCat("gradients[", i, "]");
    const int k = FindTensor(g.name);
    if (k < 0) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".name \"", g.name,
                                                     "\" is not a tensor of session ", id_));
    }
    if (seen[k]) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".name \"", g.name,
                                                     "\" is repeated; one gradient per tensor"));
    }
    seen[k] = true;
    const TensorSpec& spec = specs_[k];
    if (!std::equal(g.shape.begin(), g.shape.end(), spec.shape.begin(), spec.shape.end())) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".shape ", ShapeString(g.shape),
                                                     " of \"", g.name, "\" must be ",
                                                     ShapeString(spec.shape)));
    }
    std::vector<float>& v = (*grads)[k];
    v.resize(spec.num_elements);
    if (absl::Status s = DecodeFloats(field, g.dtype, g.data, absl::MakeSpan(v)); !s.ok()) {
      return s;
    }
    if (int64_t bad = FirstNonFinite(v, sum_squares); bad >= 0) {
      *reason = RefusalReason::kNonFinite;
      return NonFiniteError(field, g.name, bad, v[bad]);
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

absl::StatusOr<StepOutput> Session::Step(const StepInput& input) {
  // Decode and validate outside the lock: names and shapes never change after Create.
  std::vector<std::vector<float>> grads;
  double sum_squares = 0;
  RefusalReason reason;
  if (absl::Status s = DecodeGradients(input, &grads, &sum_squares, &reason); !s.ok()) {
    if (observer_ != nullptr) observer_->OnRefused(id_, reason);
    return s;
  }

  StepOutput out;
  out.gradient_norm = std::sqrt(sum_squares);
  StepEvent event;
  {
    absl::MutexLock lock(&mu_);
    std::vector<TensorGrad> step(grads.size());
    for (size_t k = 0; k < grads.size(); ++k) step[k] = {absl::MakeSpan(values_[k]), grads[k]};
    out.learning_rate = BaseLearningRate(optimizer_->options());
    // The update norm needs the parameters from before the step: a copy, made only when someone
    // observes. (The kernels could report it as a by-product of their pass instead.)
    std::vector<std::vector<float>> old_values;
    if (observer_ != nullptr) old_values = values_;
    if (absl::Status s = optimizer_->Step(step, out.learning_rate); !s.ok()) return s;
    if (observer_ != nullptr) {
      double update_sq = 0, param_sq = 0;
      for (size_t k = 0; k < values_.size(); ++k) {
        const float* now = values_[k].data();
        const float* before = old_values[k].data();
        for (size_t i = 0; i < values_[k].size(); ++i) {
          const double d = static_cast<double>(now[i]) - before[i];
          update_sq += d * d;
          param_sq += static_cast<double>(now[i]) * now[i];
        }
      }
      event.update_norm = std::sqrt(update_sq);
      event.parameter_norm = std::sqrt(param_sq);
    }
    out.version = ++version_;
    if (input.return_parameters) {
      out.parameters.reserve(grads.size());
      for (size_t k = 0; k < grads.size(); ++k) {
        out.parameters.push_back(EncodeTensor(k, input.return_dtype));
      }
    }
    const std::string_view name = OptimizerName(optimizer_->options());
    event.optimizer = absl::string_view(name.data(), name.size());
    event.optimizer_state_bytes = optimizer_->StateBytes();
  }
  if (observer_ != nullptr) {
    event.session_id = id_;
    event.version = out.version;
    event.gradient_norm = out.gradient_norm;
    event.learning_rate = out.learning_rate;
    event.loss = input.loss;
    observer_->OnStep(event);
    RequestEvent request{id_, 0, 0, -1};
    for (const WireTensorView& g : input.gradients) request.bytes_received += g.data.size();
    for (const WireTensor& p : out.parameters) request.bytes_sent += p.data.size();
    observer_->OnRequest(request);
  }
  return out;
}

WireTensor Session::EncodeTensor(int index, WireDType dtype) const {
  WireTensor t{specs_[index].name, specs_[index].shape, dtype, {}};
  EncodeFloats(dtype, values_[index], &t.data);
  return t;
}

absl::StatusOr<PullOutput> Session::Pull(absl::Span<const absl::string_view> names,
                                         WireDType dtype) const {
  std::vector<int> indices;
  if (names.empty()) {
    for (size_t k = 0; k < specs_.size(); ++k) indices.push_back(k);
  } else {
    std::vector<bool> seen(specs_.size(), false);
    for (size_t i = 0; i < names.size(); ++i) {
      const int k = FindTensor(names[i]);
      if (k < 0) {
        return absl::InvalidArgumentError(absl::StrCat("names[", i, "] \"", names[i],
                                                       "\" is not a tensor of session ", id_));
      }
      if (seen[k]) {
        return absl::InvalidArgumentError(
            absl::StrCat("names[", i, "] \"", names[i], "\" is repeated"));
      }
      seen[k] = true;
      indices.push_back(k);
    }
  }
  PullOutput out;
  absl::ReaderMutexLock lock(&mu_);
  out.version = version_;
  out.tensors.reserve(indices.size());
  for (int k : indices) out.tensors.push_back(EncodeTensor(k, dtype));
  return out;
}

SessionInfo Session::Info() const {
  SessionInfo info;
  info.id = id_;
  info.tensors = specs_;
  info.create_time = create_time_;
  for (const TensorSpec& s : specs_) info.num_parameters += s.num_elements;
  info.parameter_bytes = info.num_parameters * static_cast<int64_t>(sizeof(float));
  absl::ReaderMutexLock lock(&mu_);
  info.config.optimizer = optimizer_->options();
  info.version = version_;
  info.optimizer_state_bytes = optimizer_->StateBytes();
  info.state_bytes_per_parameter = optimizer_->StateBytesPerElement();
  return info;
}

}  // namespace optd
