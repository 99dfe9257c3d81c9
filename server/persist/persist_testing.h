// File: persist_testing.h
//
// Test support for server/persist: a ConfigCodec that needs no protobuf (it keeps the configs it
// encoded in memory and writes only their number), and a small session to checkpoint. Included
// only by *_test.cc files in this folder. Thread-safe.

#ifndef OPTD_SERVER_PERSIST_PERSIST_TESTING_H_
#define OPTD_SERVER_PERSIST_PERSIST_TESTING_H_

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "server/persist/checkpoint_file.h"
#include "server/session/session.h"

namespace optd {

class TableCodec final : public ConfigCodec {
 public:
  std::string Encode(const SessionConfig& config) const override {
    absl::MutexLock lock(&mu_);
    configs_.push_back(config);
    return absl::StrCat("{\"config\": ", configs_.size() - 1, "}");
  }
  absl::StatusOr<SessionConfig> Decode(absl::string_view json) const override {
    absl::string_view rest = json;
    absl::ConsumePrefix(&rest, "{\"config\":");
    absl::ConsumeSuffix(&rest, "}");
    size_t index = 0;
    absl::MutexLock lock(&mu_);
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(rest), &index) || index >= configs_.size()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown config ", json));
    }
    return configs_[index];
  }

 private:
  mutable absl::Mutex mu_;
  mutable std::deque<SessionConfig> configs_ ABSL_GUARDED_BY(mu_);
};

// Tensors w [4, 3] and b [3] with a gradient for each; the bytes live as long as this object.
struct TestTensors {
  std::deque<std::string> bytes;
  std::deque<std::vector<int64_t>> shapes;

  WireTensorView View(const char* name, std::vector<int64_t> shape, float fill) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> values(n);
    for (int64_t i = 0; i < n; ++i) values[i] = fill + 0.01f * static_cast<float>(i);
    bytes.emplace_back();
    EncodeFloats(WireDType::kF32, values, &bytes.back());
    shapes.push_back(std::move(shape));
    return {name, shapes.back(), WireDType::kF32, TensorBytes::Borrowed(bytes.back())};
  }
  std::vector<WireTensorView> Model(float fill) {
    return {View("w", {4, 3}, fill), View("b", {3}, fill)};
  }
};

// Adam with amsgrad and a plateau schedule: every kind of state a checkpoint keeps.
inline SessionConfig RichConfig() {
  SessionConfig config;
  AdamOptions adam;
  adam.lr = 0.01;
  adam.amsgrad = true;
  config.optimizer = adam;
  ReduceOnPlateauScheduleOptions plateau;
  plateau.patience = 1;
  config.schedule = plateau;
  return config;
}

}  // namespace optd

#endif  // OPTD_SERVER_PERSIST_PERSIST_TESTING_H_
