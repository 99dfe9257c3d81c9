#include "server/session/step.h"

#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace optd {
namespace {

constexpr char kVersionPayload[] = "type.optd/current_version";
constexpr char kRejoinPayload[] = "type.optd/rejoin";

}  // namespace

absl::Status WithCurrentVersion(absl::Status status, int64_t version) {
  status.SetPayload(kVersionPayload, absl::Cord(absl::StrCat(version)));
  return status;
}

int64_t CurrentVersionOf(const absl::Status& status) {
  absl::optional<absl::Cord> payload = status.GetPayload(kVersionPayload);
  int64_t version = -1;
  if (!payload.has_value() || !absl::SimpleAtoi(std::string(*payload), &version)) return -1;
  return version;
}

absl::Status WithRejoin(absl::Status status) {
  status.SetPayload(kRejoinPayload, absl::Cord("1"));
  return status;
}

bool NeedsRejoin(const absl::Status& status) {
  return status.GetPayload(kRejoinPayload).has_value();
}

}  // namespace optd
