// File: metrics.h
//
// Metrics: everything optd exports to Prometheus, in one object. It owns the registry and registers
// every metric family once, at construction:
//   * the gRPC server metrics of go-grpc-prometheus (grpc_metrics_interceptor.h), fed by a server
//     interceptor;
//   * the per-session optimization metrics (session_metrics.h), fed through the SessionObserver
//     seam of the session layer;
//   * the standard process_* metrics (process_metrics.h), read from /proc at scrape time;
//   * optd_build_info{version,grpc_version} 1.
// With a listen address it also runs prometheus-cpp's HTTP exporter serving GET /metrics.
//
// Who calls it: OptdServer creates one when ServerOptions::metrics is set, gives
// session_observer() to its SessionStore and grpc().NewInterceptorFactory() to its ServerBuilder,
// and initialises the methods it serves. Tests read Scrape().
//
// Thread safety: the class is thread-safe after Create. It must outlive the store and the server
// that report to it. Destroying an object with an exporter takes about 2 s (civetweb's poll loop).
//
// Errors: Create returns InvalidArgument for max_sessions < 0 and Unavailable when the exporter
// cannot listen on the address.

#ifndef OPTD_SERVER_METRICS_METRICS_H_
#define OPTD_SERVER_METRICS_METRICS_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "server/auth/basic_auth.h"
#include "server/metrics/grpc_metrics_interceptor.h"
#include "server/metrics/process_metrics.h"
#include "server/metrics/session_metrics.h"

namespace optd {

struct MetricsOptions {
  // host:port of the HTTP exporter serving /metrics; port 0 picks a free port (read it back with
  // port()). Empty: no exporter (the metrics are still kept, for Scrape()).
  std::string listen;
  // Sessions labelled with their own id; sessions beyond it are aggregated under session="_other"
  // so that the number of series stays bounded. >= 0.
  int max_sessions = 100;
  // Set (--metrics_auth_file): /metrics answers 401 unless the request carries HTTP basic
  // credentials of one of these users.
  std::optional<BasicAuthUsers> users;
};

class Metrics {
 public:
  static absl::StatusOr<std::unique_ptr<Metrics>> Create(const MetricsOptions& options);

  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;
  ~Metrics();

  // The gRPC server metrics (initialise methods, get the interceptor factory).
  GrpcServerMetrics& grpc() { return *grpc_; }

  // The observer to give to the SessionStore.
  PrometheusSessionObserver* session_observer() { return sessions_.get(); }
  CheckpointObserver* checkpoint_observer() { return sessions_.get(); }

  // The exporter's port, 0 without an exporter.
  int port() const { return port_; }

  // Everything in the Prometheus text format, as GET /metrics serves it.
  std::string Scrape() const;

 private:
  Metrics() = default;

  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<ProcessCollector> process_;
  std::unique_ptr<GrpcServerMetrics> grpc_;
  std::unique_ptr<PrometheusSessionObserver> sessions_;
  int port_ = 0;
  // Last, so that it is destroyed first: no scrape runs while the rest goes away.
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace optd

#endif  // OPTD_SERVER_METRICS_METRICS_H_
