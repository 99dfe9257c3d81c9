#include "server/session/tensor_spec.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/quote.h"

namespace optd {
namespace {

bool IsIdChar(char c, absl::string_view extra) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         extra.find(c) != absl::string_view::npos;
}

// OK if `part` is 1 to `max` characters of [A-Za-z0-9._-]; `what` names it in the message.
absl::Status ValidateIdPart(absl::string_view what, absl::string_view shown, absl::string_view part,
                            size_t max) {
  if (part.empty() || part.size() > max) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", Quote(shown), " has length ",
                                                   part.size(), "; must be 1 to ", max,
                                                   " characters"));
  }
  for (char c : part) {
    if (!IsIdChar(c, "._-")) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " ", Quote(shown), " has an invalid character; allowed: [A-Za-z0-9._-]"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateSessionId(absl::string_view id) {
  const size_t colon = id.find(kTenantSeparator);
  if (colon == absl::string_view::npos || id.size() > kMaxTenantLength + 1 + kMaxSessionIdLength) {
    return ValidateIdPart("session_id", id, id, kMaxSessionIdLength);
  }
  if (absl::Status s = ValidateIdPart("session_id", id, id.substr(0, colon), kMaxTenantLength);
      !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(s.message(), " (before ':', a tenant's name)"));
  }
  return ValidateIdPart("session_id", id, id.substr(colon + 1), kMaxSessionIdLength);
}

absl::Status ValidateTenant(absl::string_view field, absl::string_view tenant) {
  return ValidateIdPart(field, tenant, tenant, kMaxTenantLength);
}

std::string QualifiedSessionId(absl::string_view tenant, absl::string_view id) {
  return tenant.empty() ? std::string(id) : absl::StrCat(tenant, ":", id);
}

absl::string_view TenantOfSessionId(absl::string_view id) {
  const size_t colon = id.find(kTenantSeparator);
  return colon == absl::string_view::npos ? absl::string_view() : id.substr(0, colon);
}

absl::string_view LocalSessionId(absl::string_view id) {
  const size_t colon = id.find(kTenantSeparator);
  return colon == absl::string_view::npos ? id : id.substr(colon + 1);
}

std::string ShownSessionId(absl::string_view id) {
  return ValidateSessionId(id).ok() ? std::string(LocalSessionId(id)) : Quote(id);
}

absl::Status ValidateTensorName(absl::string_view field, absl::string_view name) {
  if (name.empty() || name.size() > kMaxTensorNameLength) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".name ", Quote(name), " has length ",
                                                   name.size(), "; must be 1 to ",
                                                   kMaxTensorNameLength, " characters"));
  }
  for (char c : name) {
    if (!IsIdChar(c, "._/:-")) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".name ", Quote(name), " has an invalid character; allowed: [A-Za-z0-9._/:-]"));
    }
  }
  return absl::OkStatus();
}

std::string ShapeString(absl::Span<const int64_t> shape) {
  if (shape.size() > kMaxTensorRank) {
    return absl::StrCat("[", absl::StrJoin(shape.subspan(0, kMaxTensorRank), ", "), ", ... (",
                        shape.size(), " dimensions)]");
  }
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<int64_t> ValidateShape(absl::string_view field, absl::Span<const int64_t> shape) {
  if (shape.size() > kMaxTensorRank) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".shape ", ShapeString(shape),
                                                   " has rank ", shape.size(), "; must be at most ",
                                                   kMaxTensorRank));
  }
  int64_t n = 1;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] < 1 || shape[d] > kMaxTensorElements || n * shape[d] > kMaxTensorElements) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".shape ", ShapeString(shape), ": dimension ", d, " is ", shape[d],
          "; every dimension must be >= 1 and the product at most ", kMaxTensorElements));
    }
    n *= shape[d];
  }
  return n;
}

int64_t FirstNonFinite(absl::Span<const float> values) {
  // One branch-free pass (it vectorises) in the common case that every value is finite.
  bool all_finite = true;
  for (float v : values) all_finite &= std::isfinite(v);
  if (all_finite) return -1;
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) return static_cast<int64_t>(i);
  }
  return -1;
}

absl::Status NonFiniteError(absl::string_view field, absl::string_view name, int64_t index,
                            float value) {
  return absl::InvalidArgumentError(absl::StrCat(field, " ", Quote(name), " element ", index,
                                                 " is ", value, "; every value must be finite"));
}

TensorSpecs::TensorSpecs(std::vector<TensorSpec> specs) : specs_(std::move(specs)) {
  index_.reserve(specs_.size());
  for (size_t i = 0; i < specs_.size(); ++i) {
    index_.emplace(specs_[i].name, static_cast<int>(i));
    num_elements_ += specs_[i].num_elements;
  }
}

int TensorSpecs::Find(absl::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? -1 : it->second;
}

}  // namespace optd
