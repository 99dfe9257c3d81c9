// ProcessCollector: the standard process_* families, with plausible values for this process.

#include "server/metrics/process_metrics.h"

#include <ctime>
#include <map>
#include <string>

#include "gtest/gtest.h"

namespace optd {
namespace {

std::map<std::string, prometheus::MetricFamily> CollectByName() {
  std::map<std::string, prometheus::MetricFamily> out;
  for (prometheus::MetricFamily& f : ProcessCollector().Collect()) out[f.name] = f;
  return out;
}

TEST(ProcessCollectorTest, ExportsTheStandardFamilies) {
  std::map<std::string, prometheus::MetricFamily> f = CollectByName();
  for (const char* name : {"process_cpu_seconds_total", "process_resident_memory_bytes",
                           "process_virtual_memory_bytes", "process_start_time_seconds",
                           "process_open_fds", "process_max_fds"}) {
    ASSERT_EQ(f.count(name), 1u) << name;
    ASSERT_EQ(f[name].metric.size(), 1u) << name;
    EXPECT_TRUE(f[name].metric[0].label.empty()) << name;
  }
  EXPECT_EQ(f["process_cpu_seconds_total"].type, prometheus::MetricType::Counter);
  EXPECT_EQ(f["process_resident_memory_bytes"].type, prometheus::MetricType::Gauge);
}

TEST(ProcessCollectorTest, ValuesArePlausible) {
  std::map<std::string, prometheus::MetricFamily> f = CollectByName();
  const double rss = f["process_resident_memory_bytes"].metric[0].gauge.value;
  EXPECT_GT(rss, 1 << 20);  // a gtest binary holds more than 1 MiB
  EXPECT_LT(rss, 64.0 * (1 << 30));
  EXPECT_GE(f["process_virtual_memory_bytes"].metric[0].gauge.value, rss);
  EXPECT_GE(f["process_cpu_seconds_total"].metric[0].counter.value, 0);
  const double start = f["process_start_time_seconds"].metric[0].gauge.value;
  const double now = static_cast<double>(std::time(nullptr));
  EXPECT_LE(start, now + 1);
  EXPECT_GT(start, now - 3600);  // this test process started within the hour
  EXPECT_GE(f["process_open_fds"].metric[0].gauge.value, 3);  // stdin, stdout, stderr
  EXPECT_GE(f["process_max_fds"].metric[0].gauge.value,
            f["process_open_fds"].metric[0].gauge.value);
}

TEST(ProcessCollectorTest, OpenFdsFollowsOpenFiles) {
  const double before = CollectByName()["process_open_fds"].metric[0].gauge.value;
  FILE* file = std::fopen("/proc/self/stat", "r");
  ASSERT_NE(file, nullptr);
  const double during = CollectByName()["process_open_fds"].metric[0].gauge.value;
  std::fclose(file);
  EXPECT_EQ(during, before + 1);
}

}  // namespace
}  // namespace optd
