#include "wire/wire_dtype.h"

#include <cmath>
#include <cstring>

#include "absl/base/config.h"
#include "absl/strings/str_cat.h"

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

template <uint16_t (*kTo)(float)>
void Encode16(absl::Span<const float> values, std::string* out) {
  out->resize(values.size() * 2);
  char* dst = out->data();
  for (size_t i = 0; i < values.size(); ++i) {
    const uint16_t h = kTo(values[i]);
    std::memcpy(dst + 2 * i, &h, 2);
  }
}

template <float (*kFrom)(uint16_t)>
void Decode16(absl::string_view data, absl::Span<float> out) {
  for (size_t i = 0; i < out.size(); ++i) {
    uint16_t h;
    std::memcpy(&h, data.data() + 2 * i, 2);
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
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);  // NaN
  const uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);  // ties to even; overflow carries to Inf
  return static_cast<uint16_t>((x + rounding) >> 16);
}

float Bf16ToFloat(uint16_t bits) { return FloatOf(static_cast<uint32_t>(bits) << 16); }

uint16_t FloatToF16(float value) {
  const uint32_t x = BitsOf(value);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // Inf or NaN (NaN kept quiet, with its top payload bits)
    return sign | 0x7c00u | (abs > 0x7f800000u ? 0x0200u | ((abs >> 13) & 0x3ffu) : 0u);
  }
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to Inf
  if (abs < 0x38800000u) {  // below 2^-14: an F16 subnormal (or zero), a multiple of 2^-24
    // Scaling by 2^24 is exact; nearbyint rounds ties to even in the default rounding mode.
    const float scaled = FloatOf(abs) * 16777216.0f;
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to even.
  abs += 0xc8000fffu + ((abs >> 13) & 1u);
  return sign | static_cast<uint16_t>(abs >> 13);
}

float F16ToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = static_cast<float>(mantissa) * (1.0f / 16777216.0f);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return FloatOf(sign | 0x7f800000u | (mantissa << 13));
  return FloatOf(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

std::optional<absl::Span<const float>> F32View(WireDType dtype, absl::string_view data,
                                               int64_t count) {
  if (dtype != WireDType::kF32 || count < 0 ||
      static_cast<int64_t>(data.size()) != count * static_cast<int64_t>(sizeof(float)) ||
      reinterpret_cast<uintptr_t>(data.data()) % alignof(float) != 0) {
    return std::nullopt;
  }
  // Little-endian host (checked above): the bytes are the floats.
  return absl::MakeConstSpan(reinterpret_cast<const float*>(data.data()),
                             static_cast<size_t>(count));
}

absl::Status DecodeFloats(absl::string_view what, WireDType dtype, absl::string_view data,
                          int64_t count, std::vector<float>* out) {
  const int64_t want = count * BytesPerElement(dtype);
  if (count < 0 || static_cast<int64_t>(data.size()) != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ".data has ", data.size(), " bytes; must be ", want, " (", count,
        " elements of ", WireDTypeName(dtype), " at ", BytesPerElement(dtype), " bytes each)"));
  }
  switch (dtype) {
    case WireDType::kF32:
      // assign() copies once; resize() would first zero-fill, a second pass over a tensor that
      // may be 64 MiB.
      if (const std::optional<absl::Span<const float>> view = F32View(dtype, data, count)) {
        out->assign(view->begin(), view->end());
      } else {
        out->resize(static_cast<size_t>(count));
        if (count > 0) std::memcpy(out->data(), data.data(), data.size());
      }
      break;
    case WireDType::kBf16:
      out->resize(static_cast<size_t>(count));
      Decode16<Bf16ToFloat>(data, absl::MakeSpan(*out));
      break;
    case WireDType::kF16:
      out->resize(static_cast<size_t>(count));
      Decode16<F16ToFloat>(data, absl::MakeSpan(*out));
      break;
  }
  return absl::OkStatus();
}

void EncodeFloats(WireDType dtype, absl::Span<const float> values, std::string* out) {
  switch (dtype) {
    case WireDType::kF32:
      out->assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
      break;
    case WireDType::kBf16:
      Encode16<FloatToBf16>(values, out);
      break;
    case WireDType::kF16:
      Encode16<FloatToF16>(values, out);
      break;
  }
}

}  // namespace optd
