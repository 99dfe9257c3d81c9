// File: optctl_values.h
//
// optctl's values from the command line: tensor specs (--tensor=NAME:DIMS[:INIT]), DIMS
// ("784x10", "scalar"), INIT (zeros | ones | const=V | uniform=A | normal=S, seeded), wire dtypes
// (f32 | bf16 | f16) and CreateSessionRequest files (JSON or textproto, for create --config).
//
// Who may call it: optctl (optctl.cc) and its tests.
//
// Thread safety: pure functions, but for the generator the caller passes (and ReadCreateRequest,
// which reads a file).
//
// Errors: usage errors (optctl_flags.h's UsageError, exit status 2) naming the flag and the value,
// e.g. "--tensor=w:3xq: dimensions '3xq' must be D1xD2x... of integers >= 0, or 'scalar'";
// NotFound / DataLoss for a file that cannot be read.

#ifndef OPTD_CLIENT_CPP_OPTCTL_VALUES_H_
#define OPTD_CLIENT_CPP_OPTCTL_VALUES_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/cpp/host_tensor.h"
#include "optd/v1/optd.pb.h"

namespace optd {
namespace client {
namespace optctl {

// Tensors larger than this are refused before anything is allocated: the server's default
// message limit (256 MiB) could not carry them anyway.
inline constexpr int64_t kMaxElements = (int64_t{256} << 20) / 4;

// "784x10" -> {784, 10}; "scalar" -> {}. `what` names the flag in errors.
absl::StatusOr<std::vector<int64_t>> ParseDims(absl::string_view text, absl::string_view what);

// How a tensor is filled.
struct Init {
  enum Kind { kConst, kUniform, kNormal } kind = kConst;
  double value = 0;  // the constant, A of U(-A, A) or S of N(0, S^2)
};

absl::StatusOr<Init> ParseInit(absl::string_view text, absl::string_view what);

// product(shape) values drawn as `init` says (from `rng`); a usage error above kMaxElements.
absl::StatusOr<std::vector<float>> MakeValues(const Init& init, const std::vector<int64_t>& shape,
                                              absl::string_view what, std::mt19937_64* rng);

// NAME:DIMS[:INIT] (NAME may itself contain ':'; INIT defaults to zeros).
absl::StatusOr<HostTensor> ParseTensorSpec(absl::string_view spec, std::mt19937_64* rng);

// f32 | bf16 | f16 (any case) for the flag `flag` ("--dtype").
absl::StatusOr<v1::DType> ParseDType(absl::string_view text, absl::string_view flag = "--dtype");

// A CreateSessionRequest from `path`: JSON if it ends in .json, text format otherwise.
absl::StatusOr<v1::CreateSessionRequest> ReadCreateRequest(const std::string& path);

}  // namespace optctl
}  // namespace client
}  // namespace optd

#endif  // OPTD_CLIENT_CPP_OPTCTL_VALUES_H_
