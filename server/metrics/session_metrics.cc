#include "server/metrics/session_metrics.h"

#include <array>
#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "absl/base/call_once.h"
#include "absl/strings/str_cat.h"
#include "server/optim/optimizer_options.h"
#include "server/session/tensor_spec.h"

namespace optd {
namespace {

// A session's labels: its id and optimizer, and its tenant when it has one (a server without
// --auth_tokens_file has none, and its series keep the labels they always had).
prometheus::Labels LabelsOf(absl::string_view session, absl::string_view optimizer) {
  prometheus::Labels labels{{"session", std::string(LocalSessionId(session))},
                            {"optimizer", std::string(optimizer)}};
  if (absl::string_view tenant = TenantOfSessionId(session); !tenant.empty()) {
    labels.emplace("tenant", std::string(tenant));
  }
  return labels;
}

// The key of a tenant's "_other" series of one optimizer.
std::string OtherKey(absl::string_view session_id, absl::string_view optimizer) {
  return absl::StrCat(TenantOfSessionId(session_id), "\n", optimizer);
}

using prometheus::Counter;
using prometheus::Gauge;
using prometheus::Histogram;

// The refusal reasons with a series of their own, in RefusalReason order.
// The estimates exported (optd_optimizer_estimate's label values): a fixed set, so a session has
// at most this many series.
constexpr std::array<std::string_view, 7> kEstimates = {"d", "effective_lr", "eta", "rbar",
                                                        "G", "scheduled_lr", "c"};

constexpr std::array<RefusalReason, 5> kReasons = {
    RefusalReason::kInvalid, RefusalReason::kNonFinite, RefusalReason::kStale,
    RefusalReason::kDuplicate, RefusalReason::kBarrierTimeout};
static_assert(static_cast<int>(RefusalReason::kInvalid) == 0 &&
                  static_cast<int>(RefusalReason::kBarrierTimeout) == 4,
              "kReasons is indexed by RefusalReason");

// Gradient norms span many orders of magnitude: one bucket per decade, 1e-6 to 1e6.
const Histogram::BucketBoundaries& GradientNormBuckets() {
  static const auto* const kBuckets = new Histogram::BucketBoundaries{
      1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6};
  return *kBuckets;
}

// Versions behind; le="0" counts fresh gradients exactly.
const Histogram::BucketBoundaries& StalenessBuckets() {
  static const auto* const kBuckets =
      new Histogram::BucketBoundaries{0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
  return *kBuckets;
}

// Barrier waits, from a millisecond to past the 30 s default deadline.
const Histogram::BucketBoundaries& BarrierWaitBuckets() {
  static const auto* const kBuckets = new Histogram::BucketBoundaries{
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
  return *kBuckets;
}

template <size_t... I>
std::vector<std::string> OptimizerNames(std::index_sequence<I...>) {
  std::vector<std::string> names;
  for (std::string_view name : {OptimizerName(OptimizerOptions(std::in_place_index<I>))...}) {
    names.emplace_back(name);
  }
  return names;
}

// Every optimizer optd offers ("sgd", "adam", ...), from the OptimizerOptions variant.
std::vector<std::string> KnownOptimizers() {
  return OptimizerNames(std::make_index_sequence<std::variant_size_v<OptimizerOptions>>());
}

}  // namespace

// A gauge child created on its first Set, so that the series exists only once it has a real value.
// Set may run concurrently (under mu_ shared); Remove runs under mu_ exclusive.
class PrometheusSessionObserver::LazyGauge {
 public:
  LazyGauge(prometheus::Family<Gauge>& family, const prometheus::Labels& labels)
      : family_(family), labels_(labels) {}

  void Set(double value) {
    absl::call_once(once_, [this] { gauge_ = &family_.Add(labels_); });
    gauge_->Set(value);
  }

  void Remove() {
    if (gauge_ != nullptr) family_.Remove(gauge_);
    gauge_ = nullptr;
  }

 private:
  prometheus::Family<Gauge>& family_;
  const prometheus::Labels& labels_;
  absl::once_flag once_;
  Gauge* gauge_ = nullptr;
};

struct PrometheusSessionObserver::Series {
  Series(PrometheusSessionObserver& o, absl::string_view session, absl::string_view optimizer_name)
      : optimizer(optimizer_name),
        labels(LabelsOf(session, optimizer)),
        steps(&o.steps_.Add(labels)),
        step_gradient_norm(&o.step_gradient_norm_.Add(labels, GradientNormBuckets())),
        staleness(&o.staleness_.Add(labels, StalenessBuckets())),
        barrier_wait(&o.barrier_wait_.Add(labels, BarrierWaitBuckets())),
        barrier_missing(&o.barrier_missing_.Add(labels)),
        received_bytes(&o.received_bytes_.Add(labels)),
        sent_bytes(&o.sent_bytes_.Add(labels)),
        copy_bytes(&o.copy_bytes_.Add(labels)),
        gradient_norm(o.gradient_norm_, labels),
        update_norm(o.update_norm_, labels),
        parameter_norm(o.parameter_norm_, labels),
        update_ratio(o.update_ratio_, labels),
        learning_rate(o.learning_rate_, labels),
        loss(o.loss_, labels),
        state_bytes(o.state_bytes_, labels),
        memory_bytes(o.memory_bytes_, labels),
        checkpoint_time(o.checkpoint_time_, labels),
        non_finite_steps(&o.non_finite_steps_.Add(labels)),
        non_finite(&o.non_finite_.Add(labels)),
        estimate_labels(EstimateLabels(labels)),
        estimates(MakeEstimates(o.estimates_, estimate_labels)) {
    for (size_t i = 0; i < kReasons.size(); ++i) {
      prometheus::Labels with_reason = labels;
      with_reason.emplace("reason", std::string(RefusalReasonName(kReasons[i])));
      refused[i] = &o.refused_.Add(with_reason);
    }
  }

  const std::string optimizer;
  const prometheus::Labels labels;
  int sessions = 0;  // live sessions recorded here (1, or more for "_other"); guarded by mu_
  std::atomic<int64_t> norms_measured_ns{0};  // when a step last measured its norms (sampling_)

  Counter* const steps;
  Histogram* const step_gradient_norm;
  Histogram* const staleness;
  Histogram* const barrier_wait;
  Gauge* const barrier_missing;
  Counter* const received_bytes;
  Counter* const sent_bytes;
  Counter* const copy_bytes;
  std::array<Counter*, kReasons.size()> refused;
  LazyGauge gradient_norm;
  LazyGauge update_norm;
  LazyGauge parameter_norm;
  LazyGauge update_ratio;
  LazyGauge learning_rate;
  LazyGauge loss;
  LazyGauge state_bytes;
  LazyGauge memory_bytes;
  LazyGauge checkpoint_time;
  Counter* const non_finite_steps;
  Gauge* const non_finite;
  // One label set and lazy gauge per kEstimates entry (the labels outlive the gauges).
  const std::array<prometheus::Labels, kEstimates.size()> estimate_labels;
  std::array<std::unique_ptr<LazyGauge>, kEstimates.size()> estimates;

 private:
  static std::array<prometheus::Labels, kEstimates.size()> EstimateLabels(
      const prometheus::Labels& labels) {
    std::array<prometheus::Labels, kEstimates.size()> out;
    for (size_t i = 0; i < kEstimates.size(); ++i) {
      out[i] = labels;
      out[i].emplace("estimate", std::string(kEstimates[i]));
    }
    return out;
  }
  static std::array<std::unique_ptr<LazyGauge>, kEstimates.size()> MakeEstimates(
      prometheus::Family<Gauge>& family,
      const std::array<prometheus::Labels, kEstimates.size()>& labels) {
    std::array<std::unique_ptr<LazyGauge>, kEstimates.size()> out;
    for (size_t i = 0; i < kEstimates.size(); ++i) {
      out[i] = std::make_unique<LazyGauge>(family, labels[i]);
    }
    return out;
  }
};

PrometheusSessionObserver::PrometheusSessionObserver(prometheus::Registry& registry,
                                                     int max_labelled_sessions,
                                                     NormsSampling sampling)
    : max_labelled_sessions_(max_labelled_sessions),
      sampling_(sampling),
      steps_(prometheus::BuildCounter()
                 .Name("optd_steps_total")
                 .Help("Optimizer steps applied to the session (one per SYNC barrier).")
                 .Register(registry)),
      gradient_norm_(prometheus::BuildGauge()
                         .Name("optd_gradient_norm")
                         .Help("L2 norm of the last applied step's gradient, over all tensors, "
                               "before clipping.")
                         .Register(registry)),
      step_gradient_norm_(prometheus::BuildHistogram()
                              .Name("optd_step_gradient_norm")
                              .Help("L2 norm of each applied step's gradient, over all tensors, "
                                    "before clipping.")
                              .Register(registry)),
      update_norm_(prometheus::BuildGauge()
                       .Name("optd_update_norm")
                       .Help("L2 norm of the parameter change made by the last step.")
                       .Register(registry)),
      parameter_norm_(prometheus::BuildGauge()
                          .Name("optd_parameter_norm")
                          .Help("L2 norm of all parameters after the last step.")
                          .Register(registry)),
      update_ratio_(prometheus::BuildGauge()
                        .Name("optd_update_ratio")
                        .Help("Update norm divided by parameter norm, for the last step.")
                        .Register(registry)),
      learning_rate_(prometheus::BuildGauge()
                         .Name("optd_learning_rate")
                         .Help("Learning rate used by the last step.")
                         .Register(registry)),
      loss_(prometheus::BuildGauge()
                .Name("optd_loss")
                .Help("Last loss reported by a worker with its gradient.")
                .Register(registry)),
      staleness_(prometheus::BuildHistogram()
                     .Name("optd_staleness_versions")
                     .Help("Versions between the session and the gradient's version, per request "
                           "that carried a version.")
                     .Register(registry)),
      refused_(prometheus::BuildCounter()
                   .Name("optd_refused_steps_total")
                   .Help("Step requests not applied, by reason: invalid, non_finite, stale, "
                         "duplicate (a retry answered from its first outcome), barrier_timeout.")
                   .Register(registry)),
      barrier_wait_(prometheus::BuildHistogram()
                        .Name("optd_barrier_wait_seconds")
                        .Help("SYNC barriers: seconds from the first gradient to the step (or the "
                              "deadline).")
                        .Register(registry)),
      barrier_missing_(prometheus::BuildGauge()
                           .Name("optd_barrier_missing_workers")
                           .Help("SYNC barriers: expected workers missing when the last barrier "
                                 "completed or expired.")
                           .Register(registry)),
      received_bytes_(prometheus::BuildCounter()
                          .Name("optd_received_bytes_total")
                          .Help("Tensor payload bytes received in step requests.")
                          .Register(registry)),
      sent_bytes_(prometheus::BuildCounter()
                      .Name("optd_sent_bytes_total")
                      .Help("Tensor payload bytes sent in step replies.")
                      .Register(registry)),
      copy_bytes_(prometheus::BuildCounter()
                      .Name("optd_parameter_copy_bytes_total")
                      .Help("Parameter bytes copied before a step because a reply still held "
                            "them (copy on write); near 0 while workers step one at a time.")
                      .Register(registry)),
      state_bytes_(prometheus::BuildGauge()
                       .Name("optd_optimizer_state_bytes")
                       .Help("Bytes of optimizer state (moments, accumulators) held by the "
                             "session, as of its last step.")
                       .Register(registry)),
      memory_bytes_(prometheus::BuildGauge()
                        .Name("optd_session_memory_bytes")
                        .Help("Bytes the session holds (parameters, optimizer state allocated and "
                              "reserved, parameter copies replies still hold, barrier sums, the "
                              "exactly-once table), as of its last step.")
                        .Register(registry)),
      unloaded_(prometheus::BuildCounter()
                    .Name("optd_sessions_unloaded_total")
                    .Help("Sessions unloaded because nothing used them for "
                          "--session_idle_timeout.")
                    .Register(registry)
                    .Add({{"reason", "idle"}})),
      non_finite_steps_(prometheus::BuildCounter()
                            .Name("optd_non_finite_parameter_steps_total")
                            .Help("Steps that left parameters NaN or infinite (from finite "
                                  "gradients: an lr too large, an overflow).")
                            .Register(registry)),
      non_finite_(prometheus::BuildGauge()
                      .Name("optd_non_finite_parameters")
                      .Help("Parameters the session's last step left NaN or infinite.")
                      .Register(registry)),
      checkpoint_time_(prometheus::BuildGauge()
                           .Name("optd_checkpoint_last_success_timestamp_seconds")
                           .Help("Unix time at which the session's newest checkpoint became "
                                 "durable.")
                           .Register(registry)),
      estimates_(prometheus::BuildGauge()
                     .Name("optd_optimizer_estimate")
                     .Help("A learning-rate-free optimizer's estimate after the last step, by "
                           "name: d and effective_lr (Prodigy, D-Adaptation), eta, rbar and G "
                           "(DoG), scheduled_lr and c (Schedule-Free).")
                     .Register(registry)),
      checkpoint_seconds_(
          prometheus::BuildHistogram()
              .Name("optd_checkpoint_duration_seconds")
              .Help("Time to snapshot a session and write its checkpoint durably.")
              .Register(registry)
              .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10,
                                                               30, 60, 300})),
      checkpoint_bytes_(prometheus::BuildCounter()
                            .Name("optd_checkpoint_written_bytes_total")
                            .Help("Bytes of checkpoint files written.")
                            .Register(registry)
                            .Add({})),
      checkpoint_failures_(prometheus::BuildCounter()
                               .Name("optd_checkpoint_failures_total")
                               .Help("Checkpoints that failed, by status code (older ones stay "
                                     "intact).")
                               .Register(registry)),
      checkpoint_skipped_(prometheus::BuildCounter()
                              .Name("optd_checkpoint_skipped_total")
                              .Help("Checkpoints that could not be read back at start-up; an "
                                    "older one was restored.")
                              .Register(registry)
                              .Add({})),
      sessions_(prometheus::BuildGauge()
                    .Name("optd_sessions")
                    .Help("Live sessions, by optimizer.")
                    .Register(registry)),
      other_sessions_(prometheus::BuildGauge()
                          .Name("optd_metrics_other_sessions")
                          .Help("Live sessions beyond --metrics_max_sessions, whose metrics are "
                                "aggregated under the session label _other.")
                          .Register(registry)
                          .Add({})) {
  absl::MutexLock lock(&mu_);
  for (const std::string& name : KnownOptimizers()) SessionsGauge(name);
  // Zero from the start for the reasons a checkpoint usually fails, so alerts have a series.
  for (const char* reason : {"resource_exhausted", "permission_denied", "not_found", "internal"}) {
    checkpoint_failures_.Add({{"reason", reason}});
  }
}

PrometheusSessionObserver::~PrometheusSessionObserver() = default;

prometheus::Gauge& PrometheusSessionObserver::SessionsGauge(absl::string_view optimizer) {
  auto it = sessions_by_optimizer_.find(optimizer);
  if (it == sessions_by_optimizer_.end()) {
    Gauge* gauge = &sessions_.Add({{"optimizer", std::string(optimizer)}});
    it = sessions_by_optimizer_.emplace(std::string(optimizer), gauge).first;
  }
  return *it->second;
}

PrometheusSessionObserver::Series* PrometheusSessionObserver::Find(
    absl::string_view session_id) const {
  auto it = by_session_.find(session_id);
  return it == by_session_.end() ? nullptr : it->second;
}

std::unique_ptr<PrometheusSessionObserver::Series> PrometheusSessionObserver::NewSeries(
    absl::string_view session, absl::string_view optimizer) {
  return std::make_unique<Series>(*this, session, optimizer);
}

void PrometheusSessionObserver::RemoveSeries(Series& s) {
  steps_.Remove(s.steps);
  step_gradient_norm_.Remove(s.step_gradient_norm);
  staleness_.Remove(s.staleness);
  barrier_wait_.Remove(s.barrier_wait);
  barrier_missing_.Remove(s.barrier_missing);
  received_bytes_.Remove(s.received_bytes);
  sent_bytes_.Remove(s.sent_bytes);
  copy_bytes_.Remove(s.copy_bytes);
  non_finite_steps_.Remove(s.non_finite_steps);
  non_finite_.Remove(s.non_finite);
  for (Counter* c : s.refused) refused_.Remove(c);
  for (LazyGauge* g :
       {&s.gradient_norm, &s.update_norm, &s.parameter_norm, &s.update_ratio, &s.learning_rate,
        &s.loss, &s.state_bytes, &s.memory_bytes, &s.checkpoint_time}) {
    g->Remove();
  }
  for (const std::unique_ptr<LazyGauge>& g : s.estimates) g->Remove();
}

void PrometheusSessionObserver::OnSessionCreated(absl::string_view session_id,
                                                 absl::string_view optimizer) {
  absl::MutexLock lock(&mu_);
  std::string id(session_id);
  if (by_session_.contains(id)) return;  // told twice: keep the first
  SessionsGauge(optimizer).Increment();
  Series* series = nullptr;
  if (static_cast<int>(labelled_.size()) < max_labelled_sessions_) {
    std::unique_ptr<Series>& own = labelled_[id];
    own = NewSeries(id, optimizer);
    series = own.get();
  } else {
    // One "_other" series per tenant and optimizer: a tenant's totals stay its own.
    std::unique_ptr<Series>& other = other_[OtherKey(id, optimizer)];
    if (other == nullptr) {
      other = NewSeries(QualifiedSessionId(TenantOfSessionId(id), kOtherSession), optimizer);
    }
    series = other.get();
    other_sessions_.Increment();
  }
  ++series->sessions;
  by_session_.emplace(std::move(id), series);
}

void PrometheusSessionObserver::OnSessionDeleted(absl::string_view session_id) {
  absl::MutexLock lock(&mu_);
  auto it = by_session_.find(session_id);
  if (it == by_session_.end()) return;
  Series* series = it->second;
  const std::string id = it->first;
  by_session_.erase(it);
  SessionsGauge(series->optimizer).Decrement();
  const bool other = series->labels.at("session") == kOtherSession;
  const std::string other_key = OtherKey(id, series->optimizer);
  if (other) other_sessions_.Decrement();
  if (--series->sessions > 0) return;
  RemoveSeries(*series);
  if (other) {
    other_.erase(other_key);
  } else {
    labelled_.erase(id);
  }
}

bool PrometheusSessionObserver::WantsStepNorms(absl::string_view session_id,
                                               int64_t num_parameters) {
  absl::ReaderMutexLock lock(&mu_);
  Series* s = Find(session_id);
  return s != nullptr && sampling_.Take(&s->norms_measured_ns, num_parameters);
}

void PrometheusSessionObserver::OnCheckpointWritten(absl::string_view session_id, int64_t bytes,
                                                    absl::Duration took, absl::Time when) {
  checkpoint_seconds_.Observe(absl::ToDoubleSeconds(took));
  checkpoint_bytes_.Increment(static_cast<double>(bytes));
  absl::ReaderMutexLock lock(&mu_);
  if (Series* s = Find(session_id); s != nullptr) {
    s->checkpoint_time.Set(absl::ToDoubleSeconds(when - absl::UnixEpoch()));
  }
}

void PrometheusSessionObserver::OnCheckpointFailed(absl::string_view session_id,
                                                   absl::string_view error) {
  checkpoint_failures_.Add({{"reason", std::string(error)}}).Increment();
}

void PrometheusSessionObserver::OnCheckpointSkipped(absl::string_view session_id) {
  checkpoint_skipped_.Increment();
}

void PrometheusSessionObserver::OnSessionUnloaded(absl::string_view session_id) {
  unloaded_.Increment();
}

void PrometheusSessionObserver::OnStep(const StepEvent& event) {
  absl::ReaderMutexLock lock(&mu_);
  Series* s = Find(event.session_id);
  if (s == nullptr) return;
  s->steps->Increment();
  s->gradient_norm.Set(event.gradient_norm);
  s->step_gradient_norm->Observe(event.gradient_norm);
  s->learning_rate.Set(event.learning_rate);
  s->state_bytes.Set(static_cast<double>(event.optimizer_state_bytes));
  s->memory_bytes.Set(static_cast<double>(event.memory_bytes));
  s->non_finite->Set(static_cast<double>(event.non_finite_parameters));
  if (event.non_finite_parameters > 0) s->non_finite_steps->Increment();
  if (event.parameter_bytes_copied > 0) {
    s->copy_bytes->Increment(static_cast<double>(event.parameter_bytes_copied));
  }
  if (event.update_norm >= 0) s->update_norm.Set(event.update_norm);
  if (event.parameter_norm >= 0) s->parameter_norm.Set(event.parameter_norm);
  if (event.update_norm >= 0 && event.parameter_norm > 0) {
    s->update_ratio.Set(event.update_norm / event.parameter_norm);
  }
  if (event.loss.has_value()) s->loss.Set(*event.loss);
  for (const auto& [name, value] : event.estimates) {
    for (size_t i = 0; i < kEstimates.size(); ++i) {
      if (name == kEstimates[i]) s->estimates[i]->Set(value);
    }
  }
}

void PrometheusSessionObserver::OnRequest(const RequestEvent& event) {
  absl::ReaderMutexLock lock(&mu_);
  Series* s = Find(event.session_id);
  if (s == nullptr) return;
  s->received_bytes->Increment(static_cast<double>(event.bytes_received));
  s->sent_bytes->Increment(static_cast<double>(event.bytes_sent));
  if (event.staleness >= 0) s->staleness->Observe(static_cast<double>(event.staleness));
}

void PrometheusSessionObserver::OnRefused(absl::string_view session_id, RefusalReason reason) {
  const size_t index = static_cast<size_t>(reason);
  if (index >= kReasons.size()) return;  // a reason newer than this file: no series for it
  absl::ReaderMutexLock lock(&mu_);
  Series* s = Find(session_id);
  if (s == nullptr) return;
  s->refused[index]->Increment();
}

void PrometheusSessionObserver::OnBarrier(absl::string_view session_id, double wait_seconds,
                                          int missing_workers) {
  absl::ReaderMutexLock lock(&mu_);
  Series* s = Find(session_id);
  if (s == nullptr) return;
  s->barrier_wait->Observe(wait_seconds);
  s->barrier_missing->Set(missing_workers);
}

int PrometheusSessionObserver::labelled_sessions() const {
  absl::ReaderMutexLock lock(&mu_);
  return static_cast<int>(labelled_.size());
}

}  // namespace optd
