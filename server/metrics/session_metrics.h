// File: session_metrics.h
//
// PrometheusSessionObserver: the optimization-health metrics of optd, per session. It implements
// the session layer's SessionObserver seam (server/session/session_observer.h): the session layer
// reports what happened, after the fact and outside its locks; this class only records it.
//
// Per session (labels session, optimizer; refusals add reason):
//   optd_steps_total                 counter    optimizer steps applied
//   optd_gradient_norm               gauge      L2 norm of the last step's gradient (before
//                                               clipping)
//   optd_step_gradient_norm          histogram  L2 norm of each step's gradient (decade buckets)
//   optd_update_norm                 gauge      L2 norm of the last parameter change
//   optd_parameter_norm              gauge      L2 norm of the parameters after the last step
//   optd_update_ratio                gauge      update norm / parameter norm of the last step
//   optd_learning_rate               gauge      learning rate of the last step
//   optd_loss                        gauge      last loss reported by a worker
//   optd_staleness_versions          histogram  session version - gradient's version, per request
//   optd_refused_steps_total         counter    refused requests, by reason (invalid, non_finite,
//                                               stale, duplicate, barrier_timeout)
//   optd_barrier_wait_seconds        histogram  SYNC barrier: wait of its first gradient
//   optd_barrier_missing_workers     gauge      SYNC barrier: expected workers missing at the last
//   optd_received_bytes_total        counter    tensor payload bytes received
//   optd_sent_bytes_total            counter    tensor payload bytes sent
//   optd_parameter_copy_bytes_total  counter    parameter bytes copied because a reply still
//                                               held them when the next step came (copy on write)
//   optd_optimizer_state_bytes       gauge      optimizer state held by the session
//   optd_non_finite_parameters       gauge      parameters the last step left NaN or infinite
//   optd_non_finite_parameter_steps_total  counter  steps that left some
//   optd_session_memory_bytes        gauge      everything the session holds (GetSession's
//                                               MemoryUse.total_bytes), as of its last step
//   optd_optimizer_estimate{estimate}  gauge    a learning-rate-free optimizer's estimate after
//                                               the last step: d, effective_lr (Prodigy,
//                                               D-Adaptation), eta, rbar, G (DoG), scheduled_lr,
//                                               c (Schedule-Free); L-DoG's per-tensor ones are
//                                               not exported (one series per tensor)
// Server-wide:
//   optd_sessions{optimizer}         gauge      live sessions (every known optimizer, from 0)
//   optd_metrics_other_sessions      gauge      live sessions aggregated under session="_other"
//   optd_sessions_unloaded_total{reason="idle"}  counter  sessions unloaded for being idle
//   optd_checkpoint_last_success_timestamp_seconds{session,optimizer}  gauge  Unix time of the
//                                               session's newest durable checkpoint
//   optd_checkpoint_duration_seconds  histogram  time to snapshot and write one checkpoint
//   optd_checkpoint_written_bytes_total  counter  bytes of checkpoint files written
//   optd_checkpoint_failures_total{reason}  counter  failed checkpoints, by status code
//                                               (resource_exhausted: disk full, ...)
//   optd_checkpoint_skipped_total    counter    checkpoints that could not be read back at start-up
//                                               (an older one was used)
//
// Series exist while the session does: counters, histograms and barrier_missing_workers are created
// (at 0) with the session, so queries have data from the start; the "last value" gauges appear with
// the first value they have (the gradient, learning-rate and state gauges at the first step, the
// norms when measured, loss when a worker reports one). OnSessionDeleted removes them all.
//
// Cardinality bound: at most `max_labelled_sessions` sessions are labelled with their own id; a
// session created while that many are labelled is recorded under session="_other" (with its real
// optimizer label) for its whole life, so the number of series stays bounded whatever clients do.
// "_other" counters sum over those sessions and its gauges hold the last value any of them
// reported. Its series are removed when its last session is deleted. A slot freed by a deletion
// goes to the next new session.
//
// Thread safety: the class is thread-safe, as SessionObserver requires. mu_ guards the session map;
// events take it shared (events of different sessions run in parallel; values are atomic in
// prometheus-cpp), creation and deletion take it exclusively, so no event can touch a series being
// removed. Events for an unknown session (one deleted while its last step finished) are ignored.
// Nothing here blocks beyond that lock or does I/O.

#ifndef OPTD_SERVER_METRICS_SESSION_METRICS_H_
#define OPTD_SERVER_METRICS_SESSION_METRICS_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/metrics/norms_sampling.h"
#include "server/persist/checkpointer.h"
#include "server/session/session_observer.h"

namespace optd {

class PrometheusSessionObserver final : public SessionObserver, public CheckpointObserver {
 public:
  // The session label of sessions beyond the bound.
  static constexpr char kOtherSession[] = "_other";

  // Registers the families in `registry` (which must outlive this object) and creates
  // optd_sessions{optimizer} = 0 for every optimizer optd knows. `max_labelled_sessions` >= 0.
  // `sampling` decides which steps measure their norms (norms_sampling.h).
  PrometheusSessionObserver(prometheus::Registry& registry, int max_labelled_sessions,
                            NormsSampling sampling = NormsSampling());
  ~PrometheusSessionObserver() override;

  PrometheusSessionObserver(const PrometheusSessionObserver&) = delete;
  PrometheusSessionObserver& operator=(const PrometheusSessionObserver&) = delete;

  bool WantsStepNorms(absl::string_view session_id, int64_t num_parameters) override;
  void OnSessionCreated(absl::string_view session_id, absl::string_view optimizer) override;
  void OnSessionDeleted(absl::string_view session_id) override;
  void OnSessionUnloaded(absl::string_view session_id) override;
  void OnStep(const StepEvent& event) override;
  void OnRequest(const RequestEvent& event) override;
  void OnRefused(absl::string_view session_id, RefusalReason reason) override;
  void OnBarrier(absl::string_view session_id, double wait_seconds, int missing_workers) override;

  // CheckpointObserver.
  void OnCheckpointWritten(absl::string_view session_id, int64_t bytes, absl::Duration took,
                           absl::Time when) override;
  void OnCheckpointFailed(absl::string_view session_id, absl::string_view error) override;
  void OnCheckpointSkipped(absl::string_view session_id) override;

  // Sessions labelled with their own id right now (for tests).
  int labelled_sessions() const;

 private:
  struct Series;  // the children of one label set (a session, or "_other" for one optimizer)
  class LazyGauge;

  // The series of `session_id`, or null.
  Series* Find(absl::string_view session_id) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  std::unique_ptr<Series> NewSeries(absl::string_view session, absl::string_view optimizer);
  void RemoveSeries(Series& series);
  prometheus::Gauge& SessionsGauge(absl::string_view optimizer) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int max_labelled_sessions_;
  const NormsSampling sampling_;

  // Families, registered once in the constructor.
  prometheus::Family<prometheus::Counter>& steps_;
  prometheus::Family<prometheus::Gauge>& gradient_norm_;
  prometheus::Family<prometheus::Histogram>& step_gradient_norm_;
  prometheus::Family<prometheus::Gauge>& update_norm_;
  prometheus::Family<prometheus::Gauge>& parameter_norm_;
  prometheus::Family<prometheus::Gauge>& update_ratio_;
  prometheus::Family<prometheus::Gauge>& learning_rate_;
  prometheus::Family<prometheus::Gauge>& loss_;
  prometheus::Family<prometheus::Histogram>& staleness_;
  prometheus::Family<prometheus::Counter>& refused_;
  prometheus::Family<prometheus::Histogram>& barrier_wait_;
  prometheus::Family<prometheus::Gauge>& barrier_missing_;
  prometheus::Family<prometheus::Counter>& received_bytes_;
  prometheus::Family<prometheus::Counter>& sent_bytes_;
  prometheus::Family<prometheus::Counter>& copy_bytes_;
  prometheus::Family<prometheus::Gauge>& state_bytes_;
  prometheus::Family<prometheus::Gauge>& memory_bytes_;
  prometheus::Counter& unloaded_;
  prometheus::Family<prometheus::Counter>& non_finite_steps_;
  prometheus::Family<prometheus::Gauge>& non_finite_;
  prometheus::Family<prometheus::Gauge>& checkpoint_time_;
  prometheus::Family<prometheus::Gauge>& estimates_;
  prometheus::Histogram& checkpoint_seconds_;
  prometheus::Counter& checkpoint_bytes_;
  prometheus::Family<prometheus::Counter>& checkpoint_failures_;
  prometheus::Counter& checkpoint_skipped_;
  prometheus::Family<prometheus::Gauge>& sessions_;
  prometheus::Gauge& other_sessions_;

  mutable absl::Mutex mu_;
  // Every live session -> its series (its own, or the "_other" one of its optimizer).
  absl::flat_hash_map<std::string, Series*> by_session_ ABSL_GUARDED_BY(mu_);
  // Owners: labelled sessions by id, "_other" series by optimizer.
  absl::flat_hash_map<std::string, std::unique_ptr<Series>> labelled_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<Series>> other_ ABSL_GUARDED_BY(mu_);
  // optd_sessions children, by optimizer; never removed (one per optimizer kind).
  std::map<std::string, prometheus::Gauge*, std::less<>> sessions_by_optimizer_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace optd

#endif  // OPTD_SERVER_METRICS_SESSION_METRICS_H_
