// File: tensor_spec.h
//
// TensorSpec: a session tensor's name, shape and element count, fixed when the session is
// created, and the checks every name, shape and id a client sends goes through, with the limits
// they enforce. Errors are InvalidArgument naming the field, quoting at most a short prefix of the
// value (base/quote.h) and giving the valid range.
//
// Pure functions and plain data: thread-safe.

#ifndef OPTD_SERVER_SESSION_TENSOR_SPEC_H_
#define OPTD_SERVER_SESSION_TENSOR_SPEC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace optd {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  int64_t num_elements = 0;

  // Elements per row (the size over the first dimension; 1 for a scalar).
  int64_t row_size() const { return shape.empty() ? 1 : num_elements / shape[0]; }
};

// Limits on what a session may hold.
inline constexpr int kMaxSessionIdLength = 128;
inline constexpr int kMaxTensorNameLength = 256;
inline constexpr int kMaxTensorRank = 8;
inline constexpr int kMaxTensorsPerSession = 4096;
// Largest tensor, in elements: 2^31 - 1 floats (8 GiB).
inline constexpr int64_t kMaxTensorElements = (int64_t{1} << 31) - 1;

inline constexpr int kMaxTenantLength = 64;
// Between a tenant's name and a session id: "acme:run-1" is tenant acme's session run-1.
inline constexpr char kTenantSeparator = ':';

// OK if `id` is a session id as the server keys its sessions: 1 to kMaxSessionIdLength characters
// of [A-Za-z0-9._-], optionally after a tenant name and kTenantSeparator ("acme:run-1"). Sessions
// without a tenant (a server without --auth_tokens_file) have no prefix. The service decides who
// may name a prefix (server/security: only admins and servers without authentication).
absl::Status ValidateSessionId(absl::string_view id);

// OK if `tenant` is 1 to kMaxTenantLength characters of [A-Za-z0-9._-]. `field` names it.
absl::Status ValidateTenant(absl::string_view field, absl::string_view tenant);

// The session id of `tenant`'s session `id` ("acme:run-1"; `id` alone when `tenant` is empty).
std::string QualifiedSessionId(absl::string_view tenant, absl::string_view id);

// The tenant part of a session id ("" when it has none), and the rest.
absl::string_view TenantOfSessionId(absl::string_view id);
absl::string_view LocalSessionId(absl::string_view id);

// `id` as error messages show it: without its tenant (LocalSessionId) when it is a valid session
// id (a caller sees only its own tenant's sessions), else quoted (a short prefix, escaped:
// base/quote.h).
std::string ShownSessionId(absl::string_view id);

// OK if `name` is 1 to kMaxTensorNameLength characters of [A-Za-z0-9._/:-]; `field` is where it
// is in the request ("tensors[2]").
absl::Status ValidateTensorName(absl::string_view field, absl::string_view name);

// Checks the rank (at most kMaxTensorRank) and every dimension (>= 1, product at most
// kMaxTensorElements); returns the element count.
absl::StatusOr<int64_t> ValidateShape(absl::string_view field, absl::Span<const int64_t> shape);

// "[2, 3]".
std::string ShapeString(absl::Span<const int64_t> shape);

// The index of the first non-finite value, or -1.
int64_t FirstNonFinite(absl::Span<const float> values);

// "<field> "<name>" element <index> is <value>; every value must be finite".
absl::Status NonFiniteError(absl::string_view field, absl::string_view name, int64_t index,
                            float value);

// A session's tensors in creation order, found by index or by name (in constant time).
class TensorSpecs {
 public:
  TensorSpecs() = default;
  // REQUIRES: names are unique.
  explicit TensorSpecs(std::vector<TensorSpec> specs);

  int size() const { return static_cast<int>(specs_.size()); }
  const TensorSpec& operator[](int index) const { return specs_[index]; }
  const std::vector<TensorSpec>& all() const { return specs_; }
  std::vector<TensorSpec>::const_iterator begin() const { return specs_.begin(); }
  std::vector<TensorSpec>::const_iterator end() const { return specs_.end(); }

  // The index of the tensor named `name`, or -1.
  int Find(absl::string_view name) const;

  // The elements of all tensors.
  int64_t num_elements() const { return num_elements_; }

 private:
  std::vector<TensorSpec> specs_;
  absl::flat_hash_map<std::string, int> index_;
  int64_t num_elements_ = 0;
};

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_TENSOR_SPEC_H_
