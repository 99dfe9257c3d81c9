#include "wire/wire_dtype.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

using ::testing::HasSubstr;

constexpr float kInf = std::numeric_limits<float>::infinity();

float FloatFromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(WireDTypeTest, BytesPerElement) {
  EXPECT_EQ(BytesPerElement(WireDType::kF32), 4);
  EXPECT_EQ(BytesPerElement(WireDType::kBf16), 2);
  EXPECT_EQ(BytesPerElement(WireDType::kF16), 2);
}

TEST(Bf16Test, ExactValuesRoundTrip) {
  for (float v :
       {0.0f, -0.0f, 1.0f, -2.5f, std::ldexp(1.5f, 127), std::ldexp(1.0f, -126), kInf, -kInf}) {
    EXPECT_EQ(Bf16ToFloat(FloatToBf16(v)), v) << v;
  }
  EXPECT_TRUE(std::signbit(Bf16ToFloat(FloatToBf16(-0.0f))));
}

TEST(Bf16Test, RoundsToNearestEven) {
  // 1 + 2^-8 lies halfway between bf16 1 and 1 + 2^-7: ties go to the even mantissa (1).
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3*2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): goes up.
  EXPECT_EQ(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  // Just above the tie rounds up.
  EXPECT_EQ(FloatToBf16(FloatFromBits(0x3f808001)), 0x3f81);
}

TEST(Bf16Test, NanStaysNanAndOverflowBecomesInf) {
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::nanf("")))));
  // A NaN whose payload sits only in the low 16 bits must not become Inf.
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(FloatFromBits(0x7f800001)))));
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(std::numeric_limits<float>::max())), kInf);
}

TEST(Bf16Test, SubnormalsKeepTheirTopBits) {
  const float tiny = FloatFromBits(0x00010000);  // a float subnormal exactly representable in bf16
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(tiny)), tiny);
}

TEST(F16Test, ExactValuesRoundTrip) {
  for (float v : {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f /* 2^-14 */,
                  5.9604644775390625e-08f /* 2^-24, smallest subnormal */, kInf, -kInf}) {
    EXPECT_EQ(F16ToFloat(FloatToF16(v)), v) << v;
  }
}

TEST(F16Test, KnownEncodings) {
  EXPECT_EQ(FloatToF16(1.0f), 0x3c00);
  EXPECT_EQ(FloatToF16(-2.0f), 0xc000);
  EXPECT_EQ(FloatToF16(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -14)), 0x0400);
}

TEST(F16Test, RoundsToNearestEven) {
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: to even (1).
  EXPECT_EQ(FloatToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  // 1 + 3*2^-11 is halfway between 1 + 2^-10 (odd) and 1 + 2^-9: up.
  EXPECT_EQ(FloatToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  // Subnormal ties: 1.5 * 2^-24 -> 2 * 2^-24 (even); 2.5 * 2^-24 -> 2 * 2^-24.
  EXPECT_EQ(FloatToF16(1.5f * std::ldexp(1.0f, -24)), 0x0002);
  EXPECT_EQ(FloatToF16(2.5f * std::ldexp(1.0f, -24)), 0x0002);
  // Half the smallest subnormal is a tie with zero: to even (zero).
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -25)), 0x0000);
  // The largest subnormal rounds up into the smallest normal.
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -26)), 0x0400);
}

TEST(F16Test, OverflowBecomesInfAndNanStaysNan) {
  EXPECT_EQ(FloatToF16(65519.0f), 0x7bff);  // below the midpoint to 2^16
  EXPECT_EQ(FloatToF16(65520.0f), 0x7c00);  // the midpoint rounds to even: Inf
  EXPECT_EQ(FloatToF16(1e10f), 0x7c00);
  EXPECT_EQ(FloatToF16(-1e10f), 0xfc00);
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(std::nanf("")))));
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(FloatFromBits(0x7f800001)))));
}

TEST(F16Test, EveryHalfRoundTripsThroughFloat) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = F16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToF16(f), h) << std::hex << h;
  }
}

// The code of the 16-bit format nearest to `value` (not NaN), by the definition of rounding to
// nearest even: `magnitude(h)` is the value of code h for h < inf_code, and inf_code stands for the
// next power of two (IEEE rounds as if the exponent went on). Of the two codes around |value| the
// closer wins; on a tie, the even one.
template <typename Magnitude>
uint16_t Nearest(float value, uint16_t inf_code, Magnitude magnitude) {
  const double a = std::fabs(static_cast<double>(value));
  const uint16_t sign = std::signbit(value) ? 0x8000 : 0;
  uint32_t lo = 0, hi = inf_code;  // find the largest code whose magnitude is <= a
  if (a >= magnitude(inf_code)) return sign | inf_code;
  while (hi - lo > 1) {
    const uint32_t mid = (lo + hi) / 2;
    (magnitude(mid) <= a ? lo : hi) = mid;
  }
  const double below = a - magnitude(lo), above = magnitude(lo + 1) - a;
  if (below == 0) return sign | lo;
  const uint32_t code = below < above ? lo : (above < below ? lo + 1 : (lo % 2 == 0 ? lo : lo + 1));
  return static_cast<uint16_t>(sign | code);
}

uint16_t NearestBf16(float value) {
  return Nearest(value, 0x7f80, [](uint32_t h) {
    return h == 0x7f80 ? std::ldexp(1.0, 128) : static_cast<double>(Bf16ToFloat(h));
  });
}

uint16_t NearestF16(float value) {
  return Nearest(value, 0x7c00, [](uint32_t h) {
    return h == 0x7c00 ? 65536.0 : static_cast<double>(F16ToFloat(h));
  });
}

// Floats around every rounding edge: each combination of the bits a 16-bit format keeps (all
// signs, exponents and kept mantissa bits), with the dropped bits at 0, just above 0, just below
// and at the halfway point, just above it, all ones, and two arbitrary patterns.
std::vector<float> EdgeFloats(int dropped_bits) {
  const uint32_t half = 1u << (dropped_bits - 1), all = (1u << dropped_bits) - 1;
  const uint32_t lows[] = {0, 1, half - 1, half, half + 1, all, 0x2a5au & all, 0x1337u & all};
  std::vector<float> floats;
  for (uint64_t kept = 0; kept < (uint64_t{1} << (32 - dropped_bits)); ++kept) {
    for (uint32_t low : lows) {
      floats.push_back(FloatFromBits(static_cast<uint32_t>(kept << dropped_bits) | low));
    }
  }
  return floats;
}

// Encodes `floats` as `dtype` through EncodeFloats, so the vectorised loops are what is checked,
// and expects each code to be nearest(value) (NaNs aside).
void ExpectNearestEven(WireDType dtype, const std::vector<float>& floats,
                       uint16_t (*nearest)(float)) {
  std::string bytes;
  EncodeFloats(dtype, floats, &bytes);
  for (size_t i = 0; i < floats.size(); ++i) {
    if (std::isnan(floats[i])) continue;
    uint16_t got;
    std::memcpy(&got, bytes.data() + 2 * i, 2);
    ASSERT_EQ(got, nearest(floats[i])) << std::hexfloat << floats[i];
  }
}

TEST(Bf16Test, EncodingIsTheNearestEvenOnEveryRoundingEdge) {
  ExpectNearestEven(WireDType::kBf16, EdgeFloats(16), NearestBf16);
}

TEST(F16Test, EncodingIsTheNearestEvenOnEveryRoundingEdge) {
  std::vector<float> floats = EdgeFloats(13);
  for (int k = 0; k <= 1024; ++k) {  // halfway between subnormals, where 13 dropped bits are not
    floats.push_back(std::ldexp(k + 0.5f, -24));  // the rounding edge
  }
  ExpectNearestEven(WireDType::kF16, floats, NearestF16);
}

TEST(CodecTest, EncodeThenDecodeEachDType) {
  const std::vector<float> values = {1.0f, -0.5f, 0.25f, 1024.0f};
  for (WireDType dtype : {WireDType::kF32, WireDType::kBf16, WireDType::kF16}) {
    std::string bytes;
    EncodeFloats(dtype, values, &bytes);
    EXPECT_EQ(bytes.size(), values.size() * BytesPerElement(dtype));
    std::vector<float> back = {7.0f};  // replaced, not appended to
    ASSERT_TRUE(DecodeFloats("t", dtype, bytes, values.size(), &back).ok());
    EXPECT_EQ(back, values) << WireDTypeName(dtype);
  }
}

TEST(CodecTest, DecodesF32FromUnalignedBytes) {
  const std::vector<float> values = {1.0f, -2.0f, 3.5f};
  std::string bytes;
  EncodeFloats(WireDType::kF32, values, &bytes);
  const std::string shifted = "x" + bytes;  // the floats start at an odd address
  std::vector<float> back;
  ASSERT_TRUE(
      DecodeFloats("t", WireDType::kF32, absl::string_view(shifted).substr(1), values.size(), &back)
          .ok());
  EXPECT_EQ(back, values);
}

TEST(CodecTest, F32ViewReadsAlignedF32BytesInPlaceAndNothingElse) {
  const std::vector<float> values = {1.0f, -2.0f, 3.5f};
  std::string bytes;
  EncodeFloats(WireDType::kF32, values, &bytes);
  const std::optional<absl::Span<const float>> view = F32View(WireDType::kF32, bytes, 3);
  ASSERT_TRUE(view.has_value());
  EXPECT_EQ(static_cast<const void*>(view->data()), static_cast<const void*>(bytes.data()));
  EXPECT_EQ(std::vector<float>(view->begin(), view->end()), values);
  EXPECT_FALSE(F32View(WireDType::kF32, bytes, 2).has_value());   // wrong length
  EXPECT_FALSE(F32View(WireDType::kBf16, bytes, 6).has_value());  // not F32
  const std::string shifted = "x" + bytes;
  EXPECT_FALSE(F32View(WireDType::kF32, absl::string_view(shifted).substr(1), 3).has_value());
}

TEST(CodecTest, F32IsLittleEndianBinary32) {
  std::string bytes;
  EncodeFloats(WireDType::kF32, {1.0f}, &bytes);
  EXPECT_EQ(bytes, std::string("\x00\x00\x80\x3f", 4));
}

TEST(CodecTest, WrongByteLengthNamesTheFieldAndTheExpectedLength) {
  std::vector<float> out;
  absl::Status s = DecodeFloats("gradients[1]", WireDType::kF16, std::string(5, '\0'), 3, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("gradients[1].data has 5 bytes; must be 6"));
}

}  // namespace
}  // namespace optd
