// File: process_metrics.h
//
// ProcessCollector: the standard process metrics (the names the Go and Python clients export),
// read from /proc/self when Prometheus scrapes:
//
//   process_cpu_seconds_total        counter  user + system CPU time
//   process_resident_memory_bytes    gauge    resident set size
//   process_virtual_memory_bytes     gauge    virtual memory size
//   process_start_time_seconds       gauge    start time, seconds since the Unix epoch
//   process_open_fds                 gauge    open file descriptors
//   process_max_fds                  gauge    the soft limit on file descriptors
//
// Who calls it: prometheus-cpp's Exposer (it is registered as a Collectable) and Metrics::Scrape.
// A value that cannot be read (no /proc) is left out rather than reported as 0.
//
// Thread safety: the class is thread-safe; it holds no mutable state.

#ifndef OPTD_SERVER_METRICS_PROCESS_METRICS_H_
#define OPTD_SERVER_METRICS_PROCESS_METRICS_H_

#include <vector>

#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace optd {

class ProcessCollector final : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;
};

}  // namespace optd

#endif  // OPTD_SERVER_METRICS_PROCESS_METRICS_H_
