#include "client/cpp/host_tensor.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace client {
namespace {

using ::testing::HasSubstr;

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// `value` encoded as a scalar of `dtype` through HostTensorToProto: its 16 wire bits.
uint16_t Encode16(float value, v1::DType dtype) {
  absl::StatusOr<v1::Tensor> t = HostTensorToProto(HostTensor{"x", {}, {value}}, dtype);
  EXPECT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->data().size(), 2u);
  return static_cast<uint16_t>(static_cast<uint8_t>(t->data()[0]) |
                               (static_cast<uint8_t>(t->data()[1]) << 8));
}

// 16 wire bits of `dtype` decoded through HostTensorFromProto.
float Decode16(uint16_t bits, v1::DType dtype) {
  v1::Tensor t;
  t.set_name("x");
  t.set_dtype(dtype);
  const char bytes[2] = {static_cast<char>(bits & 0xff), static_cast<char>(bits >> 8)};
  t.set_data(std::string(bytes, 2));
  absl::StatusOr<HostTensor> h = HostTensorFromProto(t);
  EXPECT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->values.size(), 1u);
  return h->values[0];
}

TEST(HostTensorTest, F32RoundTripIsBitExact) {
  const HostTensor in{"layer1/w",
                      {2, 3},
                      {0.0f, -0.0f, 1.5f, std::numeric_limits<float>::denorm_min(),
                       -std::numeric_limits<float>::infinity(), FromBits(0x7fc12345u)}};
  absl::StatusOr<v1::Tensor> wire = HostTensorToProto(in);
  ASSERT_TRUE(wire.ok()) << wire.status();
  EXPECT_EQ(wire->name(), "layer1/w");
  EXPECT_THAT(wire->shape(), ::testing::ElementsAre(2, 3));
  EXPECT_EQ(wire->dtype(), v1::DTYPE_F32);
  EXPECT_EQ(wire->data().size(), 24u);

  absl::StatusOr<HostTensor> out = HostTensorFromProto(*wire);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->name, in.name);
  EXPECT_EQ(out->shape, in.shape);
  ASSERT_EQ(out->values.size(), in.values.size());
  for (size_t i = 0; i < in.values.size(); ++i) EXPECT_EQ(Bits(out->values[i]), Bits(in.values[i]));
}

TEST(HostTensorTest, F32IsLittleEndian) {
  absl::StatusOr<v1::Tensor> wire = HostTensorToProto(HostTensor{"x", {1}, {1.0f}});
  ASSERT_TRUE(wire.ok()) << wire.status();
  EXPECT_EQ(wire->data(), std::string("\x00\x00\x80\x3f", 4));
}

TEST(HostTensorTest, ScalarHasEmptyShapeAndOneValue) {
  const HostTensor scalar{"s", {}, {2.5f}};
  EXPECT_EQ(scalar.num_elements(), 1);
  absl::StatusOr<v1::Tensor> wire = HostTensorToProto(scalar);
  ASSERT_TRUE(wire.ok()) << wire.status();
  EXPECT_EQ(wire->shape_size(), 0);
  absl::StatusOr<HostTensor> out = HostTensorFromProto(*wire);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->values, std::vector<float>{2.5f});
}

TEST(HostTensorTest, ToProtoRejectsValuesThatDoNotMatchTheShape) {
  absl::StatusOr<v1::Tensor> wire = HostTensorToProto(HostTensor{"w", {2, 2}, {1, 2, 3}});
  EXPECT_EQ(wire.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wire.status().message(), HasSubstr("'w' has 3 values"));
}

TEST(HostTensorTest, ToProtoRejectsANegativeDimension) {
  absl::StatusOr<v1::Tensor> wire = HostTensorToProto(HostTensor{"w", {-1}, {}});
  EXPECT_EQ(wire.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(HostTensorTest, ToProtoRejectsAnUnknownDType) {
  absl::StatusOr<v1::Tensor> wire =
      HostTensorToProto(HostTensor{"w", {1}, {1}}, static_cast<v1::DType>(7));
  EXPECT_EQ(wire.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(HostTensorTest, FromProtoRejectsDataOfTheWrongLength) {
  v1::Tensor t;
  t.set_name("w");
  t.add_shape(2);
  t.set_data(std::string(7, '\0'));  // F32 needs 8
  EXPECT_EQ(HostTensorFromProto(t).status().code(), absl::StatusCode::kInvalidArgument);
  t.set_dtype(v1::DTYPE_BF16);
  t.set_data(std::string(3, '\0'));  // BF16 needs 4
  EXPECT_EQ(HostTensorFromProto(t).status().code(), absl::StatusCode::kInvalidArgument);
  t.set_data(std::string(4, '\0'));
  EXPECT_TRUE(HostTensorFromProto(t).ok());
}

TEST(HostTensorTest, FromProtoRejectsAShapeTooLargeToHold) {
  v1::Tensor t;
  t.set_name("w");
  t.add_shape(int64_t{1} << 40);
  t.add_shape(int64_t{1} << 40);
  EXPECT_EQ(HostTensorFromProto(t).status().code(), absl::StatusCode::kInvalidArgument);
}

// --- BF16 -------------------------------------------------------------------------------------

TEST(HostTensorTest, RowSparseRoundTripKeepsTheRowsAndTheFullShape) {
  const HostTensor in = RowSparse("emb", {5, 2}, {4, 0, 4}, {1, 2, 3, 4, 5, 6});
  EXPECT_TRUE(in.row_sparse());
  EXPECT_EQ(in.row_size(), 2);
  absl::StatusOr<v1::Tensor> wire = HostTensorToProto(in, v1::DTYPE_BF16);
  ASSERT_TRUE(wire.ok()) << wire.status();
  EXPECT_THAT(wire->shape(), ::testing::ElementsAre(5, 2));
  ASSERT_TRUE(wire->has_rows());
  EXPECT_THAT(wire->rows().indices(), ::testing::ElementsAre(4, 0, 4));
  EXPECT_EQ(wire->data().size(), 12u);  // 3 rows of 2 BF16 elements
  absl::StatusOr<HostTensor> out = HostTensorFromProto(*wire);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_TRUE(out->rows.has_value());
  EXPECT_EQ(*out->rows, *in.rows);
  EXPECT_EQ(out->shape, in.shape);
  EXPECT_EQ(out->values, in.values);  // small integers are exact in BF16

  // No rows at all is a valid row-sparse tensor, distinct from a dense one.
  absl::StatusOr<v1::Tensor> empty = HostTensorToProto(RowSparse("emb", {5, 2}, {}, {}));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->has_rows());
  EXPECT_TRUE(empty->data().empty());
}

TEST(HostTensorTest, RowSparseChecksRowsValuesAndRank) {
  EXPECT_THAT(HostTensorToProto(RowSparse("e", {3, 2}, {3}, {1, 2})).status().message(),
              HasSubstr("rows[0] = 3 is out of range: must be in [0, 3)"));
  EXPECT_THAT(HostTensorToProto(RowSparse("e", {3, 2}, {-1}, {1, 2})).status().message(),
              HasSubstr("rows[0] = -1"));
  EXPECT_THAT(HostTensorToProto(RowSparse("e", {3, 2}, {0, 1}, {1, 2})).status().message(),
              HasSubstr("has 2 values; its shape [3, 2] with 2 rows needs 4"));
  EXPECT_THAT(HostTensorToProto(RowSparse("s", {}, {0}, {1})).status().message(),
              HasSubstr("a scalar has no rows"));
  v1::Tensor bad;
  bad.set_name("e");
  bad.add_shape(2);
  bad.mutable_rows()->add_indices(7);
  bad.set_data(std::string(4, '\0'));
  EXPECT_EQ(HostTensorFromProto(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Bf16Test, ExactValuesRoundTrip) {
  for (const float v : {0.0f, 1.0f, -2.0f, 0.5f, 3.25f, -1024.0f, 1.0f / 128}) {
    EXPECT_EQ(Decode16(Encode16(v, v1::DTYPE_BF16), v1::DTYPE_BF16), v) << v;
  }
  EXPECT_EQ(Encode16(1.0f, v1::DTYPE_BF16), 0x3f80);
  EXPECT_EQ(Encode16(-0.0f, v1::DTYPE_BF16), 0x8000);
}

TEST(Bf16Test, RoundsToNearestTiesToEven) {
  // 0x3f808000 is halfway between bf16 0x3f80 (even) and 0x3f81: down to even.
  EXPECT_EQ(Encode16(FromBits(0x3f808000u), v1::DTYPE_BF16), 0x3f80);
  // 0x3f818000 is halfway between 0x3f81 and 0x3f82 (even): up to even.
  EXPECT_EQ(Encode16(FromBits(0x3f818000u), v1::DTYPE_BF16), 0x3f82);
  // Just above and below halfway round to the nearer one.
  EXPECT_EQ(Encode16(FromBits(0x3f808001u), v1::DTYPE_BF16), 0x3f81);
  EXPECT_EQ(Encode16(FromBits(0x3f807fffu), v1::DTYPE_BF16), 0x3f80);
}

TEST(Bf16Test, InfinityNanAndOverflow) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(Encode16(inf, v1::DTYPE_BF16), 0x7f80);
  EXPECT_EQ(Encode16(-inf, v1::DTYPE_BF16), 0xff80);
  EXPECT_EQ(Decode16(0x7f80, v1::DTYPE_BF16), inf);
  // The largest float rounds up past bf16's largest finite value: Inf.
  EXPECT_EQ(Encode16(std::numeric_limits<float>::max(), v1::DTYPE_BF16), 0x7f80);
  // A NaN whose payload lives only in the low 16 bits must not become Inf.
  const uint16_t nan = Encode16(FromBits(0x7f800001u), v1::DTYPE_BF16);
  EXPECT_TRUE(std::isnan(Decode16(nan, v1::DTYPE_BF16))) << std::hex << nan;
  EXPECT_TRUE(std::isnan(Decode16(Encode16(std::nanf(""), v1::DTYPE_BF16), v1::DTYPE_BF16)));
}

TEST(Bf16Test, SubnormalsKeepTheirTopBits) {
  // bf16 has float32's exponent range: float subnormals with zero low bits survive exactly.
  const float tiny = FromBits(0x00010000u);
  EXPECT_EQ(Encode16(tiny, v1::DTYPE_BF16), 0x0001);
  EXPECT_EQ(Decode16(0x0001, v1::DTYPE_BF16), tiny);
}

// --- F16 --------------------------------------------------------------------------------------

TEST(F16Test, ExactValuesRoundTrip) {
  for (const float v : {0.0f, 1.0f, -2.0f, 0.5f, 3.25f, 65504.0f, -1024.0f, 0.000061035156f}) {
    EXPECT_EQ(Decode16(Encode16(v, v1::DTYPE_F16), v1::DTYPE_F16), v) << v;
  }
  EXPECT_EQ(Encode16(1.0f, v1::DTYPE_F16), 0x3c00);
  EXPECT_EQ(Encode16(-0.0f, v1::DTYPE_F16), 0x8000);
  EXPECT_EQ(Encode16(65504.0f, v1::DTYPE_F16), 0x7bff);
}

TEST(F16Test, RoundsToNearestTiesToEven) {
  const float ulp = std::ldexp(1.0f, -10);                         // F16 spacing at 1.0
  EXPECT_EQ(Encode16(1.0f + ulp / 2, v1::DTYPE_F16), 0x3c00);      // tie: down to even
  EXPECT_EQ(Encode16(1.0f + 3 * ulp / 2, v1::DTYPE_F16), 0x3c02);  // tie: up to even
  EXPECT_EQ(Encode16(std::nextafter(1.0f + ulp / 2, 2.0f), v1::DTYPE_F16), 0x3c01);
}

TEST(F16Test, OverflowInfinityAndNan) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(Encode16(65519.0f, v1::DTYPE_F16), 0x7bff);  // below the halfway point to 2^16
  EXPECT_EQ(Encode16(65520.0f, v1::DTYPE_F16), 0x7c00);  // halfway: ties to even, which is Inf
  EXPECT_EQ(Encode16(1e10f, v1::DTYPE_F16), 0x7c00);
  EXPECT_EQ(Encode16(-inf, v1::DTYPE_F16), 0xfc00);
  EXPECT_EQ(Decode16(0x7c00, v1::DTYPE_F16), inf);
  EXPECT_EQ(Decode16(0xfc00, v1::DTYPE_F16), -inf);
  EXPECT_TRUE(std::isnan(Decode16(Encode16(std::nanf(""), v1::DTYPE_F16), v1::DTYPE_F16)));
  // A NaN with only low payload bits stays NaN.
  EXPECT_TRUE(std::isnan(Decode16(Encode16(FromBits(0x7f800001u), v1::DTYPE_F16), v1::DTYPE_F16)));
  EXPECT_TRUE(std::isnan(Decode16(0x7e00, v1::DTYPE_F16)));
}

TEST(F16Test, Subnormals) {
  const float unit = std::ldexp(1.0f, -24);  // the smallest F16 subnormal
  EXPECT_EQ(Encode16(unit, v1::DTYPE_F16), 0x0001);
  EXPECT_EQ(Decode16(0x0001, v1::DTYPE_F16), unit);
  EXPECT_EQ(Decode16(0x03ff, v1::DTYPE_F16), 1023 * unit);  // the largest subnormal
  EXPECT_EQ(Encode16(1023 * unit, v1::DTYPE_F16), 0x03ff);
  EXPECT_EQ(Encode16(std::ldexp(1.0f, -14), v1::DTYPE_F16), 0x0400);  // the smallest normal
  EXPECT_EQ(Encode16(unit / 2, v1::DTYPE_F16), 0x0000);               // tie between 0 and 1: even
  EXPECT_EQ(Encode16(3 * unit / 2, v1::DTYPE_F16), 0x0002);           // tie between 1 and 2: even
  EXPECT_EQ(Encode16(-3 * unit / 2, v1::DTYPE_F16), 0x8002);
  EXPECT_EQ(Encode16(unit / 4, v1::DTYPE_F16), 0x0000);                  // underflow to zero
  EXPECT_EQ(Encode16(-unit / 4, v1::DTYPE_F16), 0x8000);                 // keeps the sign
  EXPECT_EQ(Encode16(std::ldexp(1023.5f, -24), v1::DTYPE_F16), 0x0400);  // rounds up to normal
}

TEST(F16Test, EveryFiniteF16DecodesAndReEncodesToItself) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    if ((bits & 0x7c00u) == 0x7c00u) continue;  // Inf and NaN are tested above
    const float f = Decode16(static_cast<uint16_t>(bits), v1::DTYPE_F16);
    ASSERT_EQ(Encode16(f, v1::DTYPE_F16), bits) << std::hex << bits;
  }
}

}  // namespace
}  // namespace client
}  // namespace optd
