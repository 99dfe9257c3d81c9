#include "bench/round_summary.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"

namespace optd {
namespace bench {
namespace {

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

Summary Summarize(const std::vector<PhaseStats>& rounds, int64_t params) {
  std::vector<double> steps, mb, p50, p99, cpu;
  Summary s;
  for (const PhaseStats& r : rounds) {
    steps.push_back(r.StepsPerSecond());
    mb.push_back(r.MegabytesPerSecond());
    p50.push_back(r.LatencyPercentileUs(0.50));
    p99.push_back(r.LatencyPercentileUs(0.99));
    if (r.ServerCpuUsPerStep() >= 0) cpu.push_back(r.ServerCpuUsPerStep());
    s.refused += r.refused;
  }
  s.steps_per_s = Median(steps);
  s.params_per_s = s.steps_per_s * static_cast<double>(params);
  s.mb_per_s = Median(mb);
  s.p50_us = Median(p50);
  s.p99_us = Median(p99);
  if (cpu.size() == rounds.size() && !cpu.empty()) s.cpu_us_per_step = Median(cpu);
  return s;
}

double Ratio(double a, double b) { return b > 0 ? a / b : 0; }

void PrintColumns() {
  std::printf("%-10s %10s %12s %10s %10s %10s %14s\n", "", "steps/s", "params/s", "MB/s", "p50_us",
              "p99_us", "srv_cpu_us/st");
}

void PrintRow(absl::string_view name, const Summary& s) {
  const std::string cpu =
      s.cpu_us_per_step < 0 ? std::string("-") : absl::StrFormat("%.0f", s.cpu_us_per_step);
  std::printf("%-10s %10.1f %12.4g %10.1f %10.0f %10.0f %14s\n", std::string(name).c_str(),
              s.steps_per_s, s.params_per_s, s.mb_per_s, s.p50_us, s.p99_us, cpu.c_str());
}

Summary RoundRatios(const std::vector<PhaseStats>& a, const std::vector<PhaseStats>& b) {
  std::vector<double> steps, mb, p50, p99, cpu;
  for (size_t r = 0; r < a.size() && r < b.size(); ++r) {
    steps.push_back(Ratio(a[r].StepsPerSecond(), b[r].StepsPerSecond()));
    mb.push_back(Ratio(a[r].MegabytesPerSecond(), b[r].MegabytesPerSecond()));
    p50.push_back(Ratio(a[r].LatencyPercentileUs(0.5), b[r].LatencyPercentileUs(0.5)));
    p99.push_back(Ratio(a[r].LatencyPercentileUs(0.99), b[r].LatencyPercentileUs(0.99)));
    if (a[r].ServerCpuUsPerStep() >= 0 && b[r].ServerCpuUsPerStep() > 0) {
      cpu.push_back(a[r].ServerCpuUsPerStep() / b[r].ServerCpuUsPerStep());
    }
  }
  Summary s;
  s.steps_per_s = Median(steps);
  s.params_per_s = s.steps_per_s;  // both sides step the same number of parameters
  s.mb_per_s = Median(mb);
  s.p50_us = Median(p50);
  s.p99_us = Median(p99);
  if (!cpu.empty() && cpu.size() == steps.size()) s.cpu_us_per_step = Median(cpu);
  return s;
}

void PrintRatio(absl::string_view name, const Summary& ratios) {
  const std::string cpu = ratios.cpu_us_per_step < 0
                              ? std::string("-")
                              : absl::StrFormat("%.3f", ratios.cpu_us_per_step);
  std::printf("%-10s %10.3f %12.3f %10.3f %10.3f %10.3f %14s\n", std::string(name).c_str(),
              ratios.steps_per_s, ratios.params_per_s, ratios.mb_per_s, ratios.p50_us,
              ratios.p99_us, cpu.c_str());
}

void PrintRound(absl::string_view name, int round, const PhaseStats& s, int64_t params) {
  std::printf(
      "  round %d %-5s %8lld steps in %6.3f s: %9.1f steps/s %11.4g params/s %8.1f MB/s "
      "p50 %7.0f us p99 %7.0f us\n",
      round + 1, std::string(name).c_str(), static_cast<long long>(s.steps), s.seconds,
      s.StepsPerSecond(), s.StepsPerSecond() * static_cast<double>(params), s.MegabytesPerSecond(),
      s.LatencyPercentileUs(0.5), s.LatencyPercentileUs(0.99));
}

}  // namespace bench
}  // namespace optd
