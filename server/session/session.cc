#include "server/session/session.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "base/quote.h"
#include "server/optim/update_norm_meter.h"
#include "server/session/admission.h"

namespace optd {
namespace {

// OptimizerName as an absl::string_view (Debian's abseil does not take std::string_view).
absl::string_view NameOf(const OptimizerOptions& options) {
  const std::string_view name = OptimizerName(options);
  return absl::string_view(name.data(), name.size());
}

// Per tensor, the rows a row-sparse gradient touched (nullopt for a dense one), for kTouched.
std::vector<std::optional<std::vector<int64_t>>> TouchedRows(const std::vector<Gradient>& grads) {
  std::vector<std::optional<std::vector<int64_t>>> touched(grads.size());
  for (size_t k = 0; k < grads.size(); ++k) {
    if (grads[k].sparse()) touched[k] = grads[k].rows();
  }
  return touched;
}

SyncBarrier::Waiter WaiterFor(const StepInput& input, StepCallback done) {
  SyncBarrier::Waiter waiter{input.worker_id,   input.worker_incarnation, input.sequence,
                             input.return_mode, input.return_dtype,       false,
                             input.bytes(),     std::move(done)};
  waiter.return_point = input.return_point;
  return waiter;
}

// Bytes of a missing SYNC worker's name in a reply, with its key and length.
constexpr int64_t kWorkerIdBound = 128 + 16;

}  // namespace

struct Session::Reports {
  struct Answer {
    StepCallback done;
    absl::StatusOr<StepOutput> result;
    int64_t bytes_received = 0;
    int64_t staleness = -1;
    std::optional<RefusalReason> refusal;  // why a refused step was refused, for the metrics
  };
  void Add(StepCallback done, absl::StatusOr<StepOutput> result, int64_t bytes_received,
           int64_t staleness, std::optional<RefusalReason> refusal = std::nullopt) {
    answers.push_back({std::move(done), std::move(result), bytes_received, staleness, refusal});
  }

  std::vector<Answer> answers;
  std::optional<StepEvent> step;
  // The session as the step left it, when it reached a version its placement checkpoints.
  std::optional<SessionState> aligned;
  // A SYNC barrier completed or expired: how long its first gradient waited, workers missing.
  std::optional<std::pair<double, int>> barrier;
};

Session::Session(std::string id, TensorSpecs specs, ParameterBuffers parameters,
                 MemoryReservation state_reservation, std::unique_ptr<Optimizer> optimizer,
                 LrSchedule schedule, SessionConfig config, absl::Time create_time,
                 const SessionEnv& env)
    : id_(std::move(id)),
      specs_(std::move(specs)),
      consistency_(std::move(config.consistency)),
      placement_(std::move(config.placement)),
      create_time_(create_time),
      clock_(env.clock),
      observer_(env.observer),
      on_aligned_(env.on_aligned_snapshot),
      scheduler_(env.scheduler),
      budget_(env.budget),
      max_reply_bytes_(env.max_reply_bytes),
      last_used_ns_(absl::ToUnixNanos(env.clock->Now())),
      state_reservation_(std::move(state_reservation)),
      parameters_(std::move(parameters)),
      optimizer_(std::move(optimizer)),
      schedule_(std::move(schedule)),
      clipping_(config.clipping),
      exactly_once_(env.exactly_once),
      barrier_(consistency_, &specs_) {}

void Session::Step(const StepInput& input, StepCallback done) {
  Touch();
  Reports reports;
  RefusalReason reason;
  absl::Status checked = CheckStepRequest(consistency_, input, &reason);
  if (checked.ok()) {
    checked = CheckStepFingerprint(placement_, id_, input.placement_fingerprint);
    if (!checked.ok()) reason = RefusalReason::kInvalid;
  }
  // What decoding allocates is paid for first, and held until the step is answered.
  absl::StatusOr<MemoryReservation> decoding =
      checked.ok() ? budget_->Reserve(DecodeBytes(specs_, input.gradients),
                                      absl::StrCat("decoding a gradient for session ", id_))
                   : absl::StatusOr<MemoryReservation>(checked);
  // Decoded and validated outside the lock: names and shapes never change after creation.
  absl::StatusOr<std::vector<Gradient>> gradients =
      decoding.ok() ? absl::StatusOr<std::vector<Gradient>>(std::vector<Gradient>())
                    : absl::StatusOr<std::vector<Gradient>>(decoding.status());
  if (decoding.ok()) {
    try {
      gradients = DecodeGradients(specs_, id_, input.gradients, &reason);
    } catch (const std::bad_alloc&) {
      gradients = absl::ResourceExhaustedError(
          absl::StrCat("no memory to decode the gradient for session ", id_));
      reason = RefusalReason::kInvalid;
    }
  }
  if (!gradients.ok()) {
    reports.Add(std::move(done), gradients.status(), input.bytes(), -1, reason);
  } else {
    const bool measure = WantsNorms();
    absl::MutexLock lock(&mu_);
    StepLocked(input, *std::move(gradients), measure, std::move(done), &reports);
  }
  Report(std::move(reports));
}

void Session::StepLocked(const StepInput& input, std::vector<Gradient> gradients, bool measure,
                         StepCallback done, Reports* reports) {
  const int64_t bytes = input.bytes();
  if (!closed_.ok()) return reports->Add(std::move(done), closed_, bytes, -1);
  const bool sync = consistency_.mode == ConsistencyOptions::Mode::kSync;
  // A retry of a contribution still waiting at the barrier waits for the same outcome.
  if (sync && barrier_.IsPending(input.worker_id, input.worker_incarnation, input.sequence)) {
    return barrier_.AttachRetry(WaiterFor(input, std::move(done)));
  }
  const std::vector<std::optional<std::vector<int64_t>>> touched =
      input.return_mode == ReturnMode::kTouched && !sync
          ? TouchedRows(gradients)
          : std::vector<std::optional<std::vector<int64_t>>>();
  // The reply must fit before anything is done.
  if (absl::Status s = CheckReplySize(input.return_mode, input.return_dtype, touched); !s.ok()) {
    return reports->Add(std::move(done), s, bytes, -1, RefusalReason::kInvalid);
  }
  if (absl::Status s = CheckPoint(input.return_mode, input.return_point); !s.ok()) {
    return reports->Add(std::move(done), s, bytes, -1, RefusalReason::kInvalid);
  }
  absl::StatusOr<std::shared_ptr<MemoryReservation>> encoding =
      ReserveEncoding(input.return_mode, input.return_dtype, touched, input.return_point);
  if (!encoding.ok()) {
    return reports->Add(std::move(done), encoding.status(), bytes, -1, RefusalReason::kInvalid);
  }
  // A retry of an applied step is answered with its first outcome.
  if (input.sequence > 0) {
    absl::StatusOr<const ExactlyOnceTable::Outcome*> seen =
        exactly_once_.Find(input.worker_id, input.worker_incarnation, input.sequence);
    if (!seen.ok()) {
      return reports->Add(std::move(done), seen.status(), bytes, -1, RefusalReason::kDuplicate);
    }
    if (*seen != nullptr) {
      StepOutput out = (*seen)->output;
      out.duplicate = true;
      out.encoding = *encoding;
      ShareParameters(input.return_mode, input.return_dtype, TouchedRows(gradients), &out,
                      input.return_point);
      return reports->Add(std::move(done), std::move(out), bytes, input.version ? 0 : -1);
    }
  }
  RefusalReason reason;
  absl::StatusOr<int64_t> staleness =
      AdmitVersion(consistency_, input.version, version_, &reason, restored_);
  if (!staleness.ok()) return reports->Add(std::move(done), staleness.status(), bytes, -1, reason);
  for (const Gradient& g : gradients) {
    if (!g.sparse()) continue;
    if (absl::StatusOr<RowSparseRule> rule = optimizer_->RowSparse(); !rule.ok()) {
      return reports->Add(std::move(done), rule.status(), bytes, -1, RefusalReason::kInvalid);
    }
    break;
  }
  if (!sync) {
    for (const Gradient& g : gradients) {
      if (!g.absent()) continue;
      // Prodigy, D-Adaptation, DoG and L-DoG sum over every tensor's state: no partial steps.
      if (absl::Status partial = optimizer_->PartialSteps(); !partial.ok()) {
        return reports->Add(std::move(done), partial, bytes, input.version ? *staleness : -1,
                            RefusalReason::kInvalid);
      }
      break;
    }
    return ApplyNowLocked(input, std::move(gradients), *staleness, measure, *std::move(encoding),
                          std::move(done), reports);
  }
  for (int k = 0; k < specs_.size(); ++k) {
    if (!gradients[k].absent()) continue;
    return reports->Add(
        std::move(done),
        absl::InvalidArgumentError(absl::StrCat(
            "gradients has no entry for tensor ", Quote(specs_[k].name),
            "; a SYNC step combines every worker's gradient of every tensor, so partial steps "
            "(some tensors only) are ASYNC and BOUNDED only")),
        bytes, input.version ? *staleness : -1, RefusalReason::kInvalid);
  }
  if (barrier_.HasContributed(input.worker_id)) {
    return reports->Add(
        std::move(done),
        absl::InvalidArgumentError(absl::StrCat(
            "worker ", input.worker_id, " already sent a gradient for version ", version_,
            "; one gradient per worker per SYNC step (a retry must reuse its sequence number)")),
        bytes, input.version ? *staleness : -1, RefusalReason::kInvalid);
  }
  JoinBarrierLocked(input, std::move(gradients), measure, *std::move(encoding), std::move(done),
                    reports);
}

void Session::ApplyNowLocked(const StepInput& input, std::vector<Gradient> gradients,
                             int64_t staleness, bool measure,
                             std::shared_ptr<MemoryReservation> encoding, StepCallback done,
                             Reports* reports) {
  const int64_t known_staleness = input.version ? staleness : -1;
  std::vector<std::optional<std::vector<int64_t>>> touched;
  if (input.return_mode == ReturnMode::kTouched) touched = TouchedRows(gradients);
  StepOutput out;
  out.staleness = staleness;
  StepEvent event;
  if (absl::Status s = ApplyLocked(gradients, input.loss, measure, &out, &event); !s.ok()) {
    return reports->Add(std::move(done), s, input.bytes(), known_staleness);
  }
  reports->step = event;
  exactly_once_.Record(input.worker_id, input.worker_incarnation, input.sequence, out);
  SnapshotIfAlignedLocked(reports);
  ShareParameters(input.return_mode, input.return_dtype, touched, &out, input.return_point);
  out.encoding = std::move(encoding);
  reports->Add(std::move(done), std::move(out), input.bytes(), known_staleness);
}

void Session::JoinBarrierLocked(const StepInput& input, std::vector<Gradient> gradients,
                                bool measure, std::shared_ptr<MemoryReservation> encoding,
                                StepCallback done, Reports* reports) {
  // The barrier keeps the gradients until it completes (values read in place from the request
  // are copied): their bytes come from the memory budget first.
  absl::StatusOr<MemoryReservation> kept = budget_->Reserve(
      SyncBarrier::ContributionBytes(gradients), absl::StrCat("the SYNC barrier of session ", id_));
  if (!kept.ok()) {
    return reports->Add(std::move(done), kept.status(), input.bytes(), -1, RefusalReason::kInvalid);
  }
  SyncBarrier::Waiter waiter = WaiterFor(input, std::move(done));
  waiter.encoding = std::move(encoding);
  if (barrier_.Add(std::move(gradients), input.loss, std::move(waiter), clock_->Now(),
                   *std::move(kept))) {
    scheduler_->Schedule(barrier_.opened() + consistency_.barrier_timeout,
                         [weak = weak_from_this(), id = barrier_.id()] {
                           if (std::shared_ptr<Session> s = weak.lock()) s->ExpireBarrier(id);
                         });
  }
  if (barrier_.full()) CompleteBarrierLocked(measure, reports);
}

absl::Status Session::ApplyLocked(std::vector<Gradient>& gradients, std::optional<double> loss,
                                  bool measure, StepOutput* out, StepEvent* event) {
  // The parameter buffers to write, first: a copy a reply forces may not fit the memory budget,
  // and then nothing has changed yet.
  std::vector<absl::Span<float>> params(specs_.size());
  int64_t copied_bytes = 0;
  for (int k = 0; k < specs_.size(); ++k) {
    absl::StatusOr<absl::Span<float>> writable = parameters_.Writable(k, &copied_bytes);
    if (!writable.ok()) return writable.status();
    params[k] = *writable;
  }
  // Row-sparse gradients stay sparse for optimizers with a lazy rule (Adam: torch SparseAdam);
  // the others get the dense equivalent, where rows not sent have a zero gradient.
  bool lazy = false;
  for (const Gradient& g : gradients) {
    if (!g.sparse()) continue;
    absl::StatusOr<RowSparseRule> rule = optimizer_->RowSparse();
    if (!rule.ok()) return rule.status();
    lazy = *rule == RowSparseRule::kLazy;
    break;
  }
  for (int k = 0; k < specs_.size(); ++k) {
    if (gradients[k].sparse() && !lazy) {
      gradients[k] = Gradient::Dense(std::move(gradients[k]).Densify(specs_[k]));
    }
  }
  // The norm of the gradient the optimizer uses (SYNC: the combined one), before clipping, from
  // the sums measured while decoding where they still hold: the same bits as GlobalNorm, since
  // both cut and reduce as ModelSegments does. Only clipping writes the gradients; without it they
  // stay where they are (borrowed ones too).
  double squares = 0;
  for (const Gradient& g : gradients) {
    squares += g.squares().has_value() ? *g.squares() : SquaredNorm(g.values());
  }
  out->gradient_norm = std::sqrt(squares);
  if (clipping_.enabled()) {
    std::vector<absl::Span<float>> grad_spans;
    std::vector<int64_t> sizes;
    for (Gradient& g : gradients) {
      grad_spans.push_back(absl::MakeSpan(g.Own()));
      sizes.push_back(static_cast<int64_t>(grad_spans.back().size()));
    }
    // One pass over the optimizer's own segments, on its pool (lazy row-sparse gradients, which
    // hold only the rows sent, have a layout of their own).
    std::optional<ModelSegments> own;
    if (sizes != optimizer_->tensor_sizes()) own.emplace(std::move(sizes));
    ClipToNorm(clipping_, out->gradient_norm, own ? *own : optimizer_->layout(), grad_spans,
               optimizer_->pool());
  }
  std::vector<TensorGrad> step(gradients.size());
  for (int k = 0; k < specs_.size(); ++k) {
    step[k] = {params[k], gradients[k].values(), gradients[k].rows(),
               gradients[k].sparse() ? specs_[k].row_size() : 0, gradients[k].absent()};
  }
  const double lr = schedule_.Current();
  UpdateNormMeter norms;
  StepResult result;
  absl::Status stepped;
  try {
    stepped = optimizer_->Step(step, lr, measure ? &norms : nullptr, &result);
  } catch (const std::bad_alloc&) {
    stepped = absl::ResourceExhaustedError(
        absl::StrCat("no memory for the step of session ", id_, "; nothing was applied"));
  }
  if (!stepped.ok()) return stepped;
  out->non_finite_parameters = result.non_finite_parameters;
  for (int t : result.non_finite_tensors) out->non_finite_tensors.push_back(specs_[t].name);
  event->non_finite_parameters = result.non_finite_parameters;
  schedule_.Advance(loss);
  event->loss = loss;
  if (measure) {
    event->update_norm = norms.update_norm();
    event->parameter_norm = norms.parameter_norm();
  }
  out->version = ++version_;
  ++revision_;
  out->parameters_version = version_;
  out->learning_rate = lr;
  out->estimates = optimizer_->Estimates();
  event->session_id = id_;
  event->optimizer = NameOf(optimizer_->options());
  event->version = version_;
  event->workers = out->workers;
  event->gradient_norm = out->gradient_norm;
  event->learning_rate = lr;
  event->optimizer_state_bytes = optimizer_->StateBytes();
  event->memory_bytes = MemoryLocked().total();
  event->parameter_bytes_copied = copied_bytes;
  event->estimates = out->estimates;
  return absl::OkStatus();
}

void Session::CompleteBarrierLocked(bool measure, Reports* reports) {
  SyncBarrier::Reduced reduced = barrier_.Take(clock_->Now(), optimizer_->pool());
  reports->barrier = {absl::ToDoubleSeconds(reduced.waited),
                      consistency_.workers - reduced.workers};
  StepOutput out;
  out.workers = reduced.workers;
  out.missing_workers = reduced.missing_workers;
  StepEvent event;
  const absl::Status applied =
      reduced.overflow_tensor >= 0
          ? absl::InvalidArgumentError(
                absl::StrCat("the ", reduced.workers, " workers' gradients of ",
                             Quote(specs_[reduced.overflow_tensor].name),
                             " add up to values beyond float32 (REDUCE_SUM); nothing was applied"))
          : ApplyLocked(reduced.gradients, reduced.loss, measure, &out, &event);
  if (applied.ok()) reports->step = event;
  // One encoding per requested (mode, dtype, point), shared by every waiter that asked for it.
  std::vector<std::pair<std::tuple<ReturnMode, WireDType, ParameterPoint>, std::vector<WireTensor>>>
      encoded;
  for (SyncBarrier::Waiter& w : reduced.waiters) {
    if (!applied.ok()) {
      reports->Add(std::move(w.done), applied, w.bytes_received, 0,
                   reduced.overflow_tensor >= 0
                       ? std::optional<RefusalReason>(RefusalReason::kNonFinite)
                       : std::nullopt);
      continue;
    }
    StepOutput reply = out;
    reply.duplicate = w.duplicate;
    if (!w.duplicate) exactly_once_.Record(w.worker_id, w.incarnation, w.sequence, reply);
    if (w.return_mode != ReturnMode::kNone) {
      const auto key = std::make_tuple(w.return_mode, w.return_dtype, w.return_point);
      auto it = std::find_if(encoded.begin(), encoded.end(),
                             [&](const auto& e) { return e.first == key; });
      if (it == encoded.end()) {
        StepOutput shared;
        ShareParameters(w.return_mode, w.return_dtype, reduced.touched, &shared, w.return_point);
        encoded.emplace_back(key, std::move(shared.parameters));
        it = encoded.end() - 1;
      }
      reply.parameters = it->second;
      reply.point = w.return_point;
    }
    reply.parameters_version = version_;
    reply.encoding = std::move(w.encoding);
    reports->Add(std::move(w.done), std::move(reply), w.bytes_received, 0);
  }
  if (applied.ok()) SnapshotIfAlignedLocked(reports);
}

void Session::SnapshotIfAlignedLocked(Reports* reports) const {
  if (!on_aligned_ || !placement_.has_value()) return;
  const int64_t every = placement_->checkpoint_every_versions;
  if (every > 0 && version_ % every == 0) reports->aligned = SnapshotLocked();
}

void Session::ExpireBarrier(int64_t barrier_id) {
  const bool measure = WantsNorms();
  Reports reports;
  {
    absl::MutexLock lock(&mu_);
    if (barrier_.id() != barrier_id || barrier_.contributions() == 0 || !closed_.ok()) return;
    if (barrier_.quorate()) {
      CompleteBarrierLocked(measure, &reports);
    } else {
      const int n = barrier_.contributions();
      reports.barrier = {absl::ToDoubleSeconds(clock_->Now() - barrier_.opened()),
                         consistency_.workers - n};
      const std::vector<std::string> missing = barrier_.MissingWorkers();
      const absl::Status status = WithCurrentVersion(
          absl::AbortedError(
              absl::StrCat("SYNC barrier of version ", version_, " expired after ",
                           absl::FormatDuration(consistency_.barrier_timeout), " with ", n, " of ",
                           consistency_.workers, " gradients (from ",
                           absl::StrJoin(barrier_.contributors(), ", "), "), below the quorum of ",
                           consistency_.effective_quorum(), "; missing: ",
                           missing.empty() ? std::string("workers not yet known by id")
                                           : absl::StrJoin(missing, ", "),
                           ". Nothing was applied; pull and retry")),
          version_);
      for (SyncBarrier::Waiter& w : barrier_.Fail()) {
        reports.Add(std::move(w.done), status, w.bytes_received, 0, RefusalReason::kBarrierTimeout);
      }
    }
  }
  Report(std::move(reports));
}

absl::StatusOr<JoinOutput> Session::Join(absl::string_view worker_id) {
  Touch();
  if (absl::Status s = ValidateWorkerId("worker_id", std::string(worker_id)); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  if (!closed_.ok()) return closed_;
  ++revision_;
  return JoinOutput{exactly_once_.Join(worker_id), version_};
}

absl::StatusOr<std::shared_ptr<MemoryReservation>> Session::ReserveEncoding(
    ReturnMode mode, WireDType dtype, absl::Span<const std::optional<std::vector<int64_t>>> touched,
    ParameterPoint point) const {
  if (mode == ReturnMode::kNone) return nullptr;
  const int64_t width = BytesPerElement(dtype);
  int64_t bytes = 0;
  for (int k = 0; k < specs_.size(); ++k) {
    const bool rows = mode == ReturnMode::kTouched && k < static_cast<int>(touched.size()) &&
                      touched[k].has_value();
    if (rows) {
      bytes += static_cast<int64_t>(touched[k]->size()) * specs_[k].row_size() * width;
    } else if (dtype != WireDType::kF32) {
      bytes += specs_[k].num_elements * width;
    }
    // The evaluation point is a float32 copy, computed when the reply is built.
    if (point == ParameterPoint::kEvaluation) {
      bytes += specs_[k].num_elements * static_cast<int64_t>(sizeof(float));
    }
  }
  if (bytes == 0) return nullptr;
  absl::StatusOr<MemoryReservation> reserved =
      budget_->Reserve(bytes, absl::StrCat("the encoded reply of session ", id_));
  if (!reserved.ok()) return reserved.status();
  return std::make_shared<MemoryReservation>(*std::move(reserved));
}

absl::Status Session::CheckReplySize(
    ReturnMode mode, WireDType dtype,
    absl::Span<const std::optional<std::vector<int64_t>>> touched) const {
  if (max_reply_bytes_ <= 0) return absl::OkStatus();
  int64_t bytes = kReplyFieldsBound;
  if (consistency_.mode == ConsistencyOptions::Mode::kSync) {
    bytes += consistency_.workers * kWorkerIdBound;  // missing_workers
  }
  for (const TensorSpec& spec : specs_) bytes += spec.name.size() + 16;  // non_finite_tensors
  int64_t elements = 0;
  if (mode != ReturnMode::kNone) {
    const int64_t width = BytesPerElement(dtype);
    for (int k = 0; k < specs_.size(); ++k) {
      const TensorSpec& spec = specs_[k];
      const bool rows = mode == ReturnMode::kTouched && k < static_cast<int>(touched.size()) &&
                        touched[k].has_value();
      const int64_t num_rows = rows ? static_cast<int64_t>(touched[k]->size()) : 0;
      const int64_t n = rows ? num_rows * spec.row_size() : spec.num_elements;
      elements += n;
      bytes += TensorMessageBound(static_cast<int64_t>(spec.name.size()),
                                  static_cast<int64_t>(spec.shape.size()), num_rows, n * width);
    }
  }
  if (bytes <= max_reply_bytes_) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "the reply would take up to ", bytes, " bytes (", elements, " parameters as ",
      WireDTypeName(dtype), "), over the server's limit of ", max_reply_bytes_,
      " bytes (--max_message_bytes); nothing was done. Ask for return_parameters NONE or "
      "TOUCHED, a 2-byte return_dtype, or Pull the tensors in parts"));
}

SessionMemory Session::MemoryLocked() const {
  SessionMemory m;
  m.parameter_bytes = specs_.num_elements() * static_cast<int64_t>(sizeof(float));
  m.optimizer_state_bytes = optimizer_->StateBytes();
  m.reserved_state_bytes =
      std::max<int64_t>(0, state_reservation_.bytes() - m.optimizer_state_bytes);
  m.reply_bytes = std::max<int64_t>(0, parameters_.live_bytes() - m.parameter_bytes);
  m.barrier_bytes = barrier_.bytes();
  m.exactly_once_bytes = exactly_once_.MemoryBytes();
  return m;
}

bool Session::busy() const {
  absl::ReaderMutexLock lock(&mu_);
  return barrier_.contributions() > 0;
}

void Session::Close(const absl::Status& status) {
  Reports reports;
  {
    absl::MutexLock lock(&mu_);
    closed_ = status;
    for (SyncBarrier::Waiter& w : barrier_.Fail()) {
      reports.Add(std::move(w.done), status, w.bytes_received, 0);
    }
  }
  Report(std::move(reports));
}

bool Session::WantsNorms() const {
  return observer_ != nullptr && observer_->WantsStepNorms(id_, specs_.num_elements());
}

void Session::Report(Reports reports) {
  // Written before the step is answered: a reply at that version means its checkpoint exists.
  if (reports.aligned.has_value()) on_aligned_(*this, *std::move(reports.aligned));
  if (observer_ != nullptr) {
    if (reports.step.has_value()) observer_->OnStep(*reports.step);
    if (reports.barrier.has_value()) {
      observer_->OnBarrier(id_, reports.barrier->first, reports.barrier->second);
    }
    for (const Reports::Answer& a : reports.answers) {
      RequestEvent request{id_, a.bytes_received, 0, a.staleness};
      if (a.result.ok()) {
        for (const WireTensor& p : a.result->parameters) request.bytes_sent += p.data.size(p.dtype);
      }
      observer_->OnRequest(request);
      if (!a.result.ok()) {
        if (a.refusal.has_value()) observer_->OnRefused(id_, *a.refusal);
      } else if (a.result->duplicate) {
        observer_->OnRefused(id_, RefusalReason::kDuplicate);
      }
    }
  }
  for (Reports::Answer& a : reports.answers) a.done(std::move(a.result));
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

absl::Status Session::CheckPoint(ReturnMode mode, ParameterPoint point) const {
  if (point == ParameterPoint::kTraining) return absl::OkStatus();
  if (!optimizer_->HasEvaluationPoint()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "return_point = EVALUATION: ", NameOf(optimizer_->options()),
        " keeps no evaluation point apart from its parameters (Schedule-Free and DoG with "
        "averaging do); nothing was applied"));
  }
  if (mode == ReturnMode::kTouched) {
    return absl::InvalidArgumentError(
        "return_point = EVALUATION returns whole tensors: use RETURN_PARAMETERS_ALL (or NONE)");
  }
  return absl::OkStatus();
}

WireTensor Session::EvaluationTensorOf(int index, WireDType dtype) const {
  const SharedFloats params = parameters_.Share(index);
  auto x = std::make_shared<std::vector<float>>(params->size());
  // Sizes match by construction: the optimizer was made for these tensors.
  (void)optimizer_->EvaluationPoint(static_cast<size_t>(index), *params, absl::MakeSpan(*x));
  return {specs_[index].name,
          specs_[index].shape,
          dtype,
          TensorBytes::Shared(SharedFloats(std::move(x))),
          false,
          {}};
}

void Session::ShareParameters(ReturnMode mode, WireDType dtype,
                              absl::Span<const std::optional<std::vector<int64_t>>> touched,
                              StepOutput* out, ParameterPoint point) const {
  out->parameters.clear();
  out->parameters_version = version_;
  out->point = point;
  if (mode == ReturnMode::kNone) return;
  out->parameters.reserve(specs_.size());
  for (int k = 0; k < specs_.size(); ++k) {
    if (point == ParameterPoint::kEvaluation) {
      out->parameters.push_back(EvaluationTensorOf(k, dtype));
      continue;
    }
    const bool rows_only = mode == ReturnMode::kTouched && k < static_cast<int>(touched.size()) &&
                           touched[k].has_value();
    out->parameters.push_back(rows_only ? RowsOf(k, *touched[k], dtype) : TensorOf(k, dtype));
  }
}

}  // namespace optd
