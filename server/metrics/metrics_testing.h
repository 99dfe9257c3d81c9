// File: metrics_testing.h
//
// Test helpers for server/metrics: read samples back from the Prometheus text format (what
// Metrics::Scrape and GET /metrics return). Header-only; tests only.

#ifndef OPTD_SERVER_METRICS_METRICS_TESTING_H_
#define OPTD_SERVER_METRICS_METRICS_TESTING_H_

#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace optd {
namespace testing_internal {

using LabelMap = std::map<std::string, std::string>;

struct Sample {
  std::string name;
  LabelMap labels;
  double value = 0;
};

// Every sample line of `text` (comments skipped). Label values must not contain '"' or ','.
inline std::vector<Sample> ParseSamples(absl::string_view text) {
  std::vector<Sample> out;
  std::istringstream in{std::string(text)};
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    Sample s;
    absl::string_view rest = line;
    const size_t brace = rest.find('{');
    const size_t space = rest.find(' ');
    if (brace != absl::string_view::npos && brace < space) {
      s.name = std::string(rest.substr(0, brace));
      const size_t close = rest.find('}', brace);
      absl::string_view labels = rest.substr(brace + 1, close - brace - 1);
      while (!labels.empty()) {
        const size_t eq = labels.find('=');
        const size_t end_quote = labels.find('"', eq + 2);
        s.labels[std::string(labels.substr(0, eq))] =
            std::string(labels.substr(eq + 2, end_quote - eq - 2));
        labels.remove_prefix(std::min(labels.size(), end_quote + 2));  // past '",'
      }
      rest.remove_prefix(close + 2);
    } else {
      s.name = std::string(rest.substr(0, space));
      rest.remove_prefix(space + 1);
    }
    if (!absl::SimpleAtod(rest, &s.value)) continue;
    out.push_back(std::move(s));
  }
  return out;
}

// The value of the sample `name` with exactly `labels`, or nullopt if there is none.
inline std::optional<double> SampleValue(absl::string_view text, absl::string_view name,
                                         const LabelMap& labels = {}) {
  for (const Sample& s : ParseSamples(text)) {
    if (s.name == name && s.labels == labels) return s.value;
  }
  return std::nullopt;
}

// How many samples named `name` have all of `subset` among their labels.
inline int CountSamples(absl::string_view text, absl::string_view name,
                        const LabelMap& subset = {}) {
  int n = 0;
  for (const Sample& s : ParseSamples(text)) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : subset) {
      auto it = s.labels.find(k);
      match &= it != s.labels.end() && it->second == v;
    }
    n += match;
  }
  return n;
}

// The registry's families in the text format.
inline std::string Serialize(prometheus::Registry& registry) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, registry.Collect());
  return out.str();
}

}  // namespace testing_internal
}  // namespace optd

#endif  // OPTD_SERVER_METRICS_METRICS_TESTING_H_
