// File: wire_dtype.h
//
// The element encodings of tensors on optd's wire (optd.v1.DType) and conversions between them and
// float32: F32 (IEEE binary32), BF16 (bfloat16) and F16 (IEEE binary16), all little-endian.
// Conversions to BF16 and F16 round to nearest, ties to even; NaN stays NaN (quiet), values beyond
// the range become Inf, F16 subnormals are produced and read exactly.
//
// Used by the server (server/session) and by the C++ client. Pure functions: thread-safe.

#ifndef OPTD_WIRE_WIRE_DTYPE_H_
#define OPTD_WIRE_WIRE_DTYPE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "base/thread_pool.h"

namespace optd {

// Values match optd.v1.DType.
enum class WireDType { kF32 = 0, kBf16 = 1, kF16 = 2 };

// Bytes per element: 4 for F32, 2 for BF16 and F16.
int64_t BytesPerElement(WireDType dtype);

// "F32", "BF16", "F16".
absl::string_view WireDTypeName(WireDType dtype);

uint16_t FloatToBf16(float value);
float Bf16ToFloat(uint16_t bits);
uint16_t FloatToF16(float value);
float F16ToFloat(uint16_t bits);

// `data` as `count` floats in place, without a copy: when `dtype` is F32, `data` holds exactly
// `count` elements and starts at a float-aligned address. nullopt otherwise (DecodeFloats then
// copies, or reports the wrong length).
std::optional<absl::Span<const float>> F32View(WireDType dtype, absl::string_view data,
                                               int64_t count);

// OK if `size` bytes hold exactly `count` elements encoded as `dtype`; else InvalidArgument naming
// `what`, e.g. "gradients[0].data has 6 bytes; must be 8 (4 elements of BF16 at 2 bytes each)".
absl::Status CheckEncodedSize(absl::string_view what, WireDType dtype, int64_t size, int64_t count);

// Decodes `data`, `count` elements encoded as `dtype`, into `*out` (its contents replaced, its
// size `count`; F32 in one copy, with no zero-fill first). Returns InvalidArgument naming `what`
// if the byte length is not count * BytesPerElement(dtype); `*out` is then unspecified.
absl::Status DecodeFloats(absl::string_view what, WireDType dtype, absl::string_view data,
                          int64_t count, std::vector<float>* out);

// The same into `out`, whose size is the count: for callers with a buffer of their own.
absl::Status DecodeFloats(absl::string_view what, WireDType dtype, absl::string_view data,
                          absl::Span<float> out);

// Encodes `values` as `dtype`, replacing the contents of `*out` (F32: one copy).
void EncodeFloats(WireDType dtype, absl::Span<const float> values, std::string* out);

// The same into `out`, which must have room for values.size() * BytesPerElement(dtype) bytes.
void EncodeFloats(WireDType dtype, absl::Span<const float> values, char* out);

// The same, split over `pool` in blocks of kEncodeBlockElements when there are at least
// kParallelEncodeElements values (the same bytes as on one thread).
inline constexpr int64_t kParallelEncodeElements = 256 * 1024;
inline constexpr int64_t kEncodeBlockElements = 64 * 1024;
void EncodeFloats(WireDType dtype, absl::Span<const float> values, char* out, ThreadPool* pool);

}  // namespace optd

#endif  // OPTD_WIRE_WIRE_DTYPE_H_
