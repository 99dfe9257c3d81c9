// PrometheusSessionObserver: the series each session event creates, updates and removes, and the
// bound on session labels. The observer is driven directly; the text format is read back.

#include "server/metrics/session_metrics.h"

#include <atomic>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/metrics/metrics_testing.h"

namespace optd {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Optional;
using testing_internal::CountSamples;
using testing_internal::LabelMap;
using testing_internal::SampleValue;

constexpr int kBound = 2;

class SessionMetricsTest : public ::testing::Test {
 protected:
  std::string Scrape() { return testing_internal::Serialize(*registry_); }

  std::optional<double> Value(absl::string_view name, const LabelMap& labels) {
    return SampleValue(Scrape(), name, labels);
  }

  StepEvent Step(absl::string_view session, double gradient_norm) {
    StepEvent e;
    e.session_id = session;
    e.optimizer = "adam";
    e.gradient_norm = gradient_norm;
    e.update_norm = 0.5;
    e.parameter_norm = 4;
    e.learning_rate = 0.01;
    e.optimizer_state_bytes = 64;
    return e;
  }

  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  PrometheusSessionObserver observer_{*registry_, kBound};
};

const LabelMap kA = {{"session", "a"}, {"optimizer", "adam"}};

TEST_F(SessionMetricsTest, SessionsGaugeStartsAtZeroForEveryOptimizer) {
  const std::string text = Scrape();
  for (const char* optimizer : {"sgd", "adam", "adamw", "adagrad", "normalized_gd"}) {
    EXPECT_THAT(SampleValue(text, "optd_sessions", {{"optimizer", optimizer}}), Optional(0.0))
        << optimizer;
  }
  EXPECT_THAT(SampleValue(text, "optd_metrics_other_sessions"), Optional(0.0));
}

TEST_F(SessionMetricsTest, CreateMakesZeroValuedCountersAndHistograms) {
  observer_.OnSessionCreated("a", "adam");
  const std::string text = Scrape();
  EXPECT_THAT(SampleValue(text, "optd_sessions", {{"optimizer", "adam"}}), Optional(1.0));
  EXPECT_THAT(SampleValue(text, "optd_steps_total", kA), Optional(0.0));
  for (const char* reason : {"invalid", "non_finite", "stale", "duplicate", "barrier_timeout"}) {
    LabelMap labels = kA;
    labels["reason"] = reason;
    EXPECT_THAT(SampleValue(text, "optd_refused_steps_total", labels), Optional(0.0)) << reason;
  }
  EXPECT_THAT(SampleValue(text, "optd_staleness_versions_count", kA), Optional(0.0));
  EXPECT_THAT(SampleValue(text, "optd_step_gradient_norm_count", kA), Optional(0.0));
  EXPECT_THAT(SampleValue(text, "optd_barrier_wait_seconds_count", kA), Optional(0.0));
  EXPECT_THAT(SampleValue(text, "optd_barrier_missing_workers", kA), Optional(0.0));
  EXPECT_THAT(SampleValue(text, "optd_received_bytes_total", kA), Optional(0.0));
  EXPECT_THAT(SampleValue(text, "optd_sent_bytes_total", kA), Optional(0.0));
  EXPECT_THAT(SampleValue(text, "optd_parameter_copy_bytes_total", kA), Optional(0.0));
  // No value yet, so no series: a 0 would be a made-up gradient norm or loss.
  for (const char* name :
       {"optd_gradient_norm", "optd_update_norm", "optd_parameter_norm", "optd_update_ratio",
        "optd_learning_rate", "optd_loss", "optd_optimizer_state_bytes"}) {
    EXPECT_EQ(CountSamples(text, name), 0) << name;
  }
}

TEST_F(SessionMetricsTest, StepRecordsItsValues) {
  observer_.OnSessionCreated("a", "adam");
  observer_.OnStep(Step("a", 2.0));
  StepEvent last = Step("a", 3.0);
  last.loss = 0.25;
  observer_.OnStep(last);
  const std::string text = Scrape();
  EXPECT_THAT(SampleValue(text, "optd_steps_total", kA), Optional(2.0));
  EXPECT_THAT(SampleValue(text, "optd_gradient_norm", kA), Optional(3.0));
  EXPECT_THAT(SampleValue(text, "optd_step_gradient_norm_count", kA), Optional(2.0));
  EXPECT_THAT(SampleValue(text, "optd_step_gradient_norm_sum", kA), Optional(5.0));
  LabelMap le10 = kA;
  le10["le"] = "10";
  EXPECT_THAT(SampleValue(text, "optd_step_gradient_norm_bucket", le10), Optional(2.0));
  le10["le"] = "1";
  EXPECT_THAT(SampleValue(text, "optd_step_gradient_norm_bucket", le10), Optional(0.0));
  EXPECT_THAT(SampleValue(text, "optd_update_norm", kA), Optional(0.5));
  EXPECT_THAT(SampleValue(text, "optd_parameter_norm", kA), Optional(4.0));
  EXPECT_THAT(SampleValue(text, "optd_update_ratio", kA), Optional(0.125));
  EXPECT_THAT(SampleValue(text, "optd_learning_rate", kA), Optional(0.01));
  EXPECT_THAT(SampleValue(text, "optd_loss", kA), Optional(0.25));
  EXPECT_THAT(SampleValue(text, "optd_optimizer_state_bytes", kA), Optional(64.0));
}

TEST_F(SessionMetricsTest, EstimatesAreGaugesByNameAndGoWithTheSession) {
  observer_.OnSessionCreated("p", "prodigy");
  StepEvent e = Step("p", 1.0);
  e.optimizer = "prodigy";
  EXPECT_EQ(CountSamples(Scrape(), "optd_optimizer_estimate"), 0);  // none before a step
  e.estimates = {{"d", 2e-5}, {"effective_lr", 4e-5}, {"eta[0]", 1.0}};
  observer_.OnStep(e);
  const LabelMap p = {{"session", "p"}, {"optimizer", "prodigy"}};
  LabelMap d = p;
  d["estimate"] = "d";
  LabelMap lr = p;
  lr["estimate"] = "effective_lr";
  std::string text = Scrape();
  EXPECT_THAT(SampleValue(text, "optd_optimizer_estimate", d), Optional(2e-5));
  EXPECT_THAT(SampleValue(text, "optd_optimizer_estimate", lr), Optional(4e-5));
  // Per-tensor estimates (L-DoG's "eta[i]") are not exported: unbounded series.
  EXPECT_EQ(CountSamples(text, "optd_optimizer_estimate"), 2);
  observer_.OnSessionDeleted("p");
  EXPECT_EQ(CountSamples(Scrape(), "optd_optimizer_estimate"), 0);
}

TEST_F(SessionMetricsTest, LossAppearsOnlyOnceReported) {
  observer_.OnSessionCreated("a", "adam");
  observer_.OnStep(Step("a", 1.0));
  EXPECT_EQ(CountSamples(Scrape(), "optd_loss"), 0);
  StepEvent with_loss = Step("a", 1.0);
  with_loss.loss = 1.5;
  observer_.OnStep(with_loss);
  observer_.OnStep(Step("a", 1.0));  // no loss: the last reported one stays
  EXPECT_THAT(Value("optd_loss", kA), Optional(1.5));
}

TEST_F(SessionMetricsTest, UnmeasuredNormsAreLeftOut) {
  observer_.OnSessionCreated("a", "adam");
  StepEvent e = Step("a", 1.0);
  e.update_norm = -1;
  e.parameter_norm = -1;
  observer_.OnStep(e);
  const std::string text = Scrape();
  EXPECT_EQ(CountSamples(text, "optd_update_norm"), 0);
  EXPECT_EQ(CountSamples(text, "optd_parameter_norm"), 0);
  EXPECT_EQ(CountSamples(text, "optd_update_ratio"), 0);
  EXPECT_THAT(SampleValue(text, "optd_gradient_norm", kA), Optional(1.0));
}

TEST_F(SessionMetricsTest, StepsCountParameterCopies) {
  observer_.OnSessionCreated("a", "adam");
  StepEvent e = Step("a", 1.0);
  observer_.OnStep(e);  // no copy
  e.parameter_bytes_copied = 4096;
  observer_.OnStep(e);
  observer_.OnStep(e);
  EXPECT_THAT(Value("optd_parameter_copy_bytes_total", kA), Optional(8192.0));
}

TEST_F(SessionMetricsTest, RequestCountsBytesAndKnownStaleness) {
  observer_.OnSessionCreated("a", "adam");
  observer_.OnRequest({"a", 100, 40, -1});  // staleness unknown: not observed
  observer_.OnRequest({"a", 100, 0, 3});
  const std::string text = Scrape();
  EXPECT_THAT(SampleValue(text, "optd_received_bytes_total", kA), Optional(200.0));
  EXPECT_THAT(SampleValue(text, "optd_sent_bytes_total", kA), Optional(40.0));
  EXPECT_THAT(SampleValue(text, "optd_staleness_versions_count", kA), Optional(1.0));
  LabelMap le = kA;
  le["le"] = "2";
  EXPECT_THAT(SampleValue(text, "optd_staleness_versions_bucket", le), Optional(0.0));
  le["le"] = "4";
  EXPECT_THAT(SampleValue(text, "optd_staleness_versions_bucket", le), Optional(1.0));
}

TEST_F(SessionMetricsTest, RefusalsAreCountedByReason) {
  observer_.OnSessionCreated("a", "adam");
  observer_.OnRefused("a", RefusalReason::kNonFinite);
  observer_.OnRefused("a", RefusalReason::kNonFinite);
  observer_.OnRefused("a", RefusalReason::kInvalid);
  observer_.OnRefused("a", RefusalReason::kStale);
  observer_.OnRefused("a", RefusalReason::kDuplicate);
  observer_.OnRefused("a", RefusalReason::kBarrierTimeout);
  const std::string text = Scrape();
  auto refused = [&](const char* reason) {
    LabelMap labels = kA;
    labels["reason"] = reason;
    return SampleValue(text, "optd_refused_steps_total", labels);
  };
  EXPECT_THAT(refused("non_finite"), Optional(2.0));
  EXPECT_THAT(refused("invalid"), Optional(1.0));
  EXPECT_THAT(refused("stale"), Optional(1.0));
  EXPECT_THAT(refused("duplicate"), Optional(1.0));
  EXPECT_THAT(refused("barrier_timeout"), Optional(1.0));
}

TEST_F(SessionMetricsTest, BarrierRecordsWaitAndMissingWorkers) {
  observer_.OnSessionCreated("a", "adam");
  observer_.OnBarrier("a", 0.2, 0);
  observer_.OnBarrier("a", 30, 2);
  const std::string text = Scrape();
  EXPECT_THAT(SampleValue(text, "optd_barrier_wait_seconds_count", kA), Optional(2.0));
  EXPECT_THAT(SampleValue(text, "optd_barrier_wait_seconds_sum", kA),
              Optional(::testing::DoubleNear(30.2, 1e-9)));
  EXPECT_THAT(SampleValue(text, "optd_barrier_missing_workers", kA), Optional(2.0));
}

TEST_F(SessionMetricsTest, DeleteRemovesEverySeriesOfTheSession) {
  observer_.OnSessionCreated("a", "adam");
  observer_.OnSessionCreated("b", "adam");
  StepEvent e = Step("a", 1.0);
  e.loss = 2;
  observer_.OnStep(e);
  observer_.OnRequest({"a", 8, 8, 0});
  observer_.OnRefused("a", RefusalReason::kInvalid);
  observer_.OnBarrier("a", 1, 1);
  ASSERT_THAT(Scrape(), HasSubstr("session=\"a\""));

  observer_.OnSessionDeleted("a");
  const std::string text = Scrape();
  EXPECT_THAT(text, Not(HasSubstr("session=\"a\"")));
  EXPECT_THAT(SampleValue(text, "optd_steps_total", {{"session", "b"}, {"optimizer", "adam"}}),
              Optional(0.0));
  EXPECT_THAT(SampleValue(text, "optd_sessions", {{"optimizer", "adam"}}), Optional(1.0));
  EXPECT_EQ(observer_.labelled_sessions(), 1);
}

TEST_F(SessionMetricsTest, SessionsBeyondTheBoundAggregateUnderOther) {
  observer_.OnSessionCreated("a", "adam");
  observer_.OnSessionCreated("b", "adam");
  observer_.OnSessionCreated("c", "adam");  // beyond kBound = 2
  observer_.OnSessionCreated("d", "adam");
  observer_.OnSessionCreated("e", "sgd");
  observer_.OnStep(Step("c", 1.0));
  observer_.OnStep(Step("d", 1.0));
  observer_.OnStep(Step("d", 1.0));
  observer_.OnRefused("e", RefusalReason::kInvalid);

  const std::string text = Scrape();
  EXPECT_EQ(observer_.labelled_sessions(), kBound);
  for (const char* id : {"c", "d", "e"}) {
    EXPECT_THAT(text, Not(HasSubstr(absl::StrCat("session=\"", id, "\"")))) << id;
  }
  const LabelMap other_adam = {{"session", "_other"}, {"optimizer", "adam"}};
  EXPECT_THAT(SampleValue(text, "optd_steps_total", other_adam), Optional(3.0));
  EXPECT_THAT(SampleValue(text, "optd_refused_steps_total",
                          {{"session", "_other"}, {"optimizer", "sgd"}, {"reason", "invalid"}}),
              Optional(1.0));
  EXPECT_THAT(SampleValue(text, "optd_metrics_other_sessions"), Optional(3.0));
  EXPECT_THAT(SampleValue(text, "optd_sessions", {{"optimizer", "adam"}}), Optional(4.0));
  // The number of series of a family is bounded by kBound + one "_other" per optimizer.
  EXPECT_EQ(CountSamples(text, "optd_steps_total"), kBound + 2);
}

TEST_F(SessionMetricsTest, OtherSeriesGoWithTheirLastSession) {
  observer_.OnSessionCreated("a", "adam");
  observer_.OnSessionCreated("b", "adam");
  observer_.OnSessionCreated("c", "adam");
  observer_.OnSessionCreated("d", "adam");
  const LabelMap other_adam = {{"session", "_other"}, {"optimizer", "adam"}};
  observer_.OnSessionDeleted("c");
  EXPECT_THAT(Value("optd_steps_total", other_adam), Optional(0.0));
  EXPECT_THAT(Value("optd_metrics_other_sessions", {}), Optional(1.0));
  observer_.OnSessionDeleted("d");
  EXPECT_THAT(Scrape(), Not(HasSubstr("session=\"_other\"")));
  EXPECT_THAT(Value("optd_metrics_other_sessions", {}), Optional(0.0));
}

TEST_F(SessionMetricsTest, AFreedLabelGoesToTheNextNewSession) {
  observer_.OnSessionCreated("a", "adam");
  observer_.OnSessionCreated("b", "adam");
  observer_.OnSessionCreated("c", "adam");  // _other, for its whole life
  observer_.OnSessionDeleted("a");
  observer_.OnSessionCreated("f", "adam");
  const std::string text = Scrape();
  EXPECT_THAT(SampleValue(text, "optd_steps_total", {{"session", "f"}, {"optimizer", "adam"}}),
              Optional(0.0));
  EXPECT_THAT(text, Not(HasSubstr("session=\"c\"")));
  EXPECT_THAT(SampleValue(text, "optd_metrics_other_sessions"), Optional(1.0));
}

TEST_F(SessionMetricsTest, EventsOfUnknownSessionsAreIgnored) {
  observer_.OnStep(Step("ghost", 1.0));
  observer_.OnRequest({"ghost", 1, 1, 1});
  observer_.OnRefused("ghost", RefusalReason::kStale);
  observer_.OnBarrier("ghost", 1, 1);
  observer_.OnSessionDeleted("ghost");
  EXPECT_THAT(Scrape(), Not(HasSubstr("ghost")));
}

TEST_F(SessionMetricsTest, RecreatedSessionStartsFromZero) {
  observer_.OnSessionCreated("a", "adam");
  observer_.OnStep(Step("a", 1.0));
  observer_.OnSessionDeleted("a");
  observer_.OnSessionCreated("a", "adam");
  EXPECT_THAT(Value("optd_steps_total", kA), Optional(0.0));
}

TEST(SessionMetricsBoundTest, ZeroLabelsEverySessionAsOther) {
  prometheus::Registry registry;
  PrometheusSessionObserver observer(registry, 0);
  observer.OnSessionCreated("a", "sgd");
  const std::string text = testing_internal::Serialize(registry);
  EXPECT_THAT(SampleValue(text, "optd_steps_total", {{"session", "_other"}, {"optimizer", "sgd"}}),
              Optional(0.0));
  EXPECT_THAT(text, Not(HasSubstr("session=\"a\"")));
}

TEST(SessionMetricsConcurrencyTest, EventsRaceWithCreateAndDelete) {
  prometheus::Registry registry;
  PrometheusSessionObserver observer(registry, 4);
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      StepEvent e;
      e.optimizer = "adam";
      e.loss = 1;
      e.update_norm = 1;
      e.parameter_norm = 2;
      while (!stop.load()) {
        for (int s = 0; s < 8; ++s) {
          const std::string id = absl::StrCat("s", s);
          e.session_id = id;
          observer.OnStep(e);
          observer.OnRequest({id, 4, 4, t});
          observer.OnRefused(id, RefusalReason::kStale);
        }
      }
    });
  }
  for (int round = 0; round < 300; ++round) {
    for (int s = 0; s < 8; ++s) observer.OnSessionCreated(absl::StrCat("s", s), "adam");
    (void)testing_internal::Serialize(registry);
    for (int s = 0; s < 8; ++s) observer.OnSessionDeleted(absl::StrCat("s", s));
  }
  stop = true;
  for (std::thread& t : threads) t.join();
  const std::string text = testing_internal::Serialize(registry);
  EXPECT_THAT(text, Not(HasSubstr("session=")));
  EXPECT_THAT(SampleValue(text, "optd_sessions", {{"optimizer", "adam"}}), Optional(0.0));
}

}  // namespace
}  // namespace optd
