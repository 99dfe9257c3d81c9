#include "wire/wire_dtype.h"

#include <cstdint>
#include <cstring>
#include <limits>

#include "absl/base/config.h"
#include "absl/strings/str_cat.h"
#include "base/simd.h"

namespace optd {
namespace {

static_assert(sizeof(float) == 4, "float must be IEEE binary32");
#ifdef ABSL_IS_BIG_ENDIAN
#error "optd's wire format is little-endian; big-endian hosts need byte swaps here"
#endif

uint32_t BitsOf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

float FloatOf(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// All-ones if `condition`, else zero; and a branch-free select built on it. The conversions below
// are written with these, without branches, so that the array loops over them vectorise.
uint32_t MaskIf(bool condition) { return 0u - static_cast<uint32_t>(condition); }
uint32_t Select(bool condition, uint32_t if_true, uint32_t if_false) {
  const uint32_t mask = MaskIf(condition);
  return (if_true & mask) | (if_false & ~mask);
}

// The element loops, compiled for AVX2 and the baseline (base/simd.h).
template <uint16_t (*kTo)(float)>
OPTD_SIMD_CLONES void Encode16(const float* __restrict values, size_t n, char* __restrict out) {
  for (size_t i = 0; i < n; ++i) {
    const uint16_t h = kTo(values[i]);
    std::memcpy(out + 2 * i, &h, 2);
  }
}

template <float (*kFrom)(uint16_t)>
OPTD_SIMD_CLONES void Decode16(const char* __restrict data, size_t n, float* __restrict out) {
  for (size_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, data + 2 * i, 2);
    out[i] = kFrom(h);
  }
}

}  // namespace

int64_t BytesPerElement(WireDType dtype) { return dtype == WireDType::kF32 ? 4 : 2; }

absl::string_view WireDTypeName(WireDType dtype) {
  switch (dtype) {
    case WireDType::kF32:
      return "F32";
    case WireDType::kBf16:
      return "BF16";
    case WireDType::kF16:
      return "F16";
  }
  return "?";
}

uint16_t FloatToBf16(float value) {
  const uint32_t x = BitsOf(value);
  const uint32_t rounded =
      (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;  // ties to even; may carry to Inf
  const uint32_t quiet_nan = (x >> 16) | 0x0040u;
  return static_cast<uint16_t>(Select((x & 0x7fffffffu) > 0x7f800000u, quiet_nan, rounded));
}

float Bf16ToFloat(uint16_t bits) { return FloatOf(static_cast<uint32_t>(bits) << 16); }

uint16_t FloatToF16(float value) {
  const uint32_t x = BitsOf(value);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to even.
  const uint32_t normal = (abs + 0xc8000fffu + ((abs >> 13) & 1u)) >> 13;
  // Below 2^-14, an F16 subnormal (or zero), a multiple of 2^-24: adding 0.5f, whose ulp is 2^-24,
  // rounds |value| to one (to nearest even, the default rounding mode); the count of 2^-24 steps
  // is then the low bits of the sum. 2^-14 itself comes out as 0x400, the smallest normal.
  const uint32_t subnormal = BitsOf(FloatOf(abs) + 0.5f) - BitsOf(0.5f);
  // >= 65520 rounds to Inf; NaN stays a quiet NaN with its top payload bits.
  const uint32_t nan_bits = (0x0200u | ((abs >> 13) & 0x3ffu)) & MaskIf(abs > 0x7f800000u);
  uint32_t h = Select(abs < 0x38800000u, subnormal, normal);
  h = Select(abs >= 0x477ff000u, 0x7c00u | nan_bits, h);
  return static_cast<uint16_t>(sign | h);
}

float F16ToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  const uint32_t normal = ((exponent + 112) << 23) | (mantissa << 13);
  const uint32_t inf_or_nan = 0x7f800000u | (mantissa << 13);
  // Zero or subnormal: mantissa * 2^-24, exact in float.
  const uint32_t subnormal =
      BitsOf(static_cast<float>(static_cast<int32_t>(mantissa)) * (1.0f / 16777216.0f));
  return FloatOf(sign |
                 Select(exponent == 0, subnormal, Select(exponent == 31, inf_or_nan, normal)));
}

std::optional<absl::Span<const float>> F32View(WireDType dtype, absl::string_view data,
                                               int64_t count) {
  if (dtype != WireDType::kF32 || count < 0 || data.size() % sizeof(float) != 0 ||
      static_cast<int64_t>(data.size() / sizeof(float)) != count ||
      reinterpret_cast<uintptr_t>(data.data()) % alignof(float) != 0) {
    return std::nullopt;
  }
  // Little-endian host (checked above): the bytes are the floats.
  return absl::MakeConstSpan(reinterpret_cast<const float*>(data.data()),
                             static_cast<size_t>(count));
}

absl::Status CheckEncodedSize(absl::string_view what, WireDType dtype, int64_t size,
                              int64_t count) {
  const int64_t width = BytesPerElement(dtype);
  // count * width only where it is an int64: a count may be any value a caller computed.
  const bool representable = count >= std::numeric_limits<int64_t>::min() / width &&
                             count <= std::numeric_limits<int64_t>::max() / width;
  if (count >= 0 && representable && size == count * width) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      what, ".data has ", size, " bytes; must be ",
      representable ? absl::StrCat(count * width) : absl::StrCat(count, " * ", width), " (", count,
      " elements of ", WireDTypeName(dtype), " at ", width, " bytes each)"));
}

absl::Status DecodeFloats(absl::string_view what, WireDType dtype, absl::string_view data,
                          int64_t count, std::vector<float>* out) {
  if (absl::Status s = CheckEncodedSize(what, dtype, static_cast<int64_t>(data.size()), count);
      !s.ok())
    return s;
  if (dtype == WireDType::kF32) {
    // assign() copies once; resize() would first zero-fill, a second pass over a tensor that may
    // be 64 MiB.
    if (const std::optional<absl::Span<const float>> view = F32View(dtype, data, count)) {
      out->assign(view->begin(), view->end());
      return absl::OkStatus();
    }
  }
  out->resize(static_cast<size_t>(count));
  return DecodeFloats(what, dtype, data, absl::MakeSpan(*out));
}

absl::Status DecodeFloats(absl::string_view what, WireDType dtype, absl::string_view data,
                          absl::Span<float> out) {
  if (absl::Status s = CheckEncodedSize(what, dtype, static_cast<int64_t>(data.size()),
                                        static_cast<int64_t>(out.size()));
      !s.ok()) {
    return s;
  }
  switch (dtype) {
    case WireDType::kF32:
      if (!out.empty()) std::memcpy(out.data(), data.data(), data.size());
      break;
    case WireDType::kBf16:
      Decode16<Bf16ToFloat>(data.data(), out.size(), out.data());
      break;
    case WireDType::kF16:
      Decode16<F16ToFloat>(data.data(), out.size(), out.data());
      break;
  }
  return absl::OkStatus();
}

void EncodeFloats(WireDType dtype, absl::Span<const float> values, std::string* out) {
  if (dtype == WireDType::kF32) {  // assign() copies once, without a zero-fill first
    out->assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
    return;
  }
  out->resize(values.size() * BytesPerElement(dtype));
  EncodeFloats(dtype, values, out->data());
}

void EncodeFloats(WireDType dtype, absl::Span<const float> values, char* out) {
  switch (dtype) {
    case WireDType::kF32:
      if (!values.empty()) std::memcpy(out, values.data(), values.size() * sizeof(float));
      break;
    case WireDType::kBf16:
      Encode16<FloatToBf16>(values.data(), values.size(), out);
      break;
    case WireDType::kF16:
      Encode16<FloatToF16>(values.data(), values.size(), out);
      break;
  }
}

void EncodeFloats(WireDType dtype, absl::Span<const float> values, char* out, ThreadPool* pool) {
  const int64_t n = static_cast<int64_t>(values.size());
  if (pool == nullptr || n < kParallelEncodeElements) return EncodeFloats(dtype, values, out);
  const int64_t width = BytesPerElement(dtype);
  pool->ParallelFor(n, kEncodeBlockElements, [&](int64_t begin, int64_t end) {
    EncodeFloats(dtype, values.subspan(begin, end - begin), out + begin * width);
  });
}

}  // namespace optd
