#include "server/metrics/metrics.h"

#include <exception>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "prometheus/gauge.h"
#include "prometheus/text_serializer.h"

#ifndef OPTD_VERSION
#define OPTD_VERSION "unknown"
#endif

namespace optd {

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Create(const MetricsOptions& options) {
  if (options.max_sessions < 0) {
    return absl::InvalidArgumentError(absl::StrCat("metrics max_sessions = ", options.max_sessions,
                                                   " is out of range: must be >= 0"));
  }
  std::unique_ptr<Metrics> metrics(new Metrics());
  metrics->registry_ = std::make_shared<prometheus::Registry>();
  prometheus::Registry& registry = *metrics->registry_;
  metrics->process_ = std::make_shared<ProcessCollector>();
  metrics->grpc_ = std::make_unique<GrpcServerMetrics>(registry);
  metrics->sessions_ = std::make_unique<PrometheusSessionObserver>(registry, options.max_sessions);
  prometheus::BuildGauge()
      .Name("optd_build_info")
      .Help("Always 1; the labels name the optd and gRPC versions of this binary.")
      .Register(registry)
      .Add({{"version", OPTD_VERSION}, {"grpc_version", grpc::Version()}})
      .Set(1);

  if (!options.listen.empty()) {
    try {
      metrics->exposer_ = std::make_unique<prometheus::Exposer>(options.listen);
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("cannot serve metrics on ", options.listen,
                       " (is the port taken? port 0 picks a free one): ", e.what()));
    }
    if (options.users.has_value()) {
      metrics->exposer_->RegisterAuth(
          [users = *options.users](const std::string& user, const std::string& password) {
            return users.Check(user, password);
          },
          "optd metrics");
    }
    metrics->exposer_->RegisterCollectable(metrics->registry_);
    metrics->exposer_->RegisterCollectable(metrics->process_);
    const std::vector<int> ports = metrics->exposer_->GetListeningPorts();
    if (ports.empty() || ports[0] == 0) {
      return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", options.listen));
    }
    metrics->port_ = ports[0];
  }
  return metrics;
}

Metrics::~Metrics() = default;

std::string Metrics::Scrape() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  for (prometheus::MetricFamily& f : process_->Collect()) families.push_back(std::move(f));
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

}  // namespace optd
