// File: round_summary.h
//
// What optd-bench prints: the medians over rounds of a contestant's phases (Summary), the median of
// per-round ratios of two contestants run back to back (RoundRatios), and the table rows. Who uses
// it: optd_bench.cc. Pure functions over PhaseStats (load.h); printing goes to stdout.

#ifndef OPTD_BENCH_ROUND_SUMMARY_H_
#define OPTD_BENCH_ROUND_SUMMARY_H_

#include <cstdint>
#include <vector>

#include "absl/strings/string_view.h"
#include "bench/load.h"

namespace optd {
namespace bench {

// Medians over rounds, column by column.
struct Summary {
  double steps_per_s = 0;
  double params_per_s = 0;
  double mb_per_s = 0;
  double p50_us = 0;
  double p99_us = 0;
  double cpu_us_per_step = -1;
  int64_t refused = 0;  // summed over rounds
};

Summary Summarize(const std::vector<PhaseStats>& rounds, int64_t params);

// Round r of `a` over round r of `b`, column by column, median over rounds: each ratio compares
// two phases run back to back, so load from other processes that drifts during the run cancels
// out (the medians of each row, divided, would not).
Summary RoundRatios(const std::vector<PhaseStats>& a, const std::vector<PhaseStats>& b);

void PrintColumns();
void PrintRow(absl::string_view name, const Summary& s);
void PrintRatio(absl::string_view name, const Summary& ratios);
void PrintRound(absl::string_view name, int round, const PhaseStats& s, int64_t params);

}  // namespace bench
}  // namespace optd

#endif  // OPTD_BENCH_ROUND_SUMMARY_H_
