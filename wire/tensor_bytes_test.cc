#include "wire/tensor_bytes.h"

#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

// The bytes 0, 1, ..., n - 1 (mod 256).
std::string Counting(int n) {
  std::string s(n, '\0');
  for (int i = 0; i < n; ++i) s[i] = static_cast<char>(i);
  return s;
}

TEST(TensorBytesTest, OwnedBytesAreOnePiece) {
  TensorBytes t = TensorBytes::Owned(Counting(10));
  EXPECT_EQ(t.kind(), TensorBytes::Kind::kOwned);
  EXPECT_EQ(t.size(WireDType::kF32), 10);
  EXPECT_EQ(t.size(WireDType::kBf16), 10);  // already encoded: the dtype does not matter
  ASSERT_EQ(t.Pieces().size(), 1u);
  std::string scratch;
  EXPECT_EQ(t.View(3, 4, &scratch), Counting(10).substr(3, 4));
  EXPECT_EQ(*t.mutable_owned(), Counting(10));
}

TEST(TensorBytesTest, EmptyBytesHaveNoPieces) {
  EXPECT_THAT(TensorBytes().Pieces(), IsEmpty());
  EXPECT_THAT(TensorBytes::Borrowed(std::vector<absl::string_view>{"", ""}).Pieces(), IsEmpty());
  EXPECT_EQ(TensorBytes().size(WireDType::kF32), 0);
}

TEST(TensorBytesTest, BorrowedPiecesReadAsOneRangeWhereverTheyAreCut) {
  const std::string whole = Counting(100);
  for (int cut : {1, 7, 16, 99}) {
    std::vector<absl::string_view> pieces;
    for (int at = 0; at < 100; at += cut) {
      pieces.push_back(absl::string_view(whole).substr(at, cut));
    }
    const TensorBytes t = TensorBytes::Borrowed(pieces);
    EXPECT_EQ(t.kind(), TensorBytes::Kind::kBorrowed);
    EXPECT_EQ(t.size(WireDType::kF16), 100);
    EXPECT_EQ(t.Flatten(WireDType::kF32), whole) << "cut " << cut;
    for (int offset : {0, 5, 33, 96}) {
      std::string scratch;
      EXPECT_EQ(t.View(offset, 4, &scratch), whole.substr(offset, 4))
          << "cut " << cut << " offset " << offset;
      std::string copy(4, '\0');
      t.CopyTo(offset, 4, copy.data());
      EXPECT_EQ(copy, whole.substr(offset, 4));
    }
  }
}

TEST(TensorBytesTest, AViewInsideOnePieceIsNotCopied) {
  const std::string whole = Counting(64);
  const TensorBytes t = TensorBytes::Borrowed(
      {absl::string_view(whole).substr(0, 32), absl::string_view(whole).substr(32)});
  std::string scratch;
  const absl::string_view inside = t.View(8, 16, &scratch);
  EXPECT_EQ(inside.data(), whole.data() + 8);
  EXPECT_THAT(scratch, IsEmpty());
  const absl::string_view across = t.View(24, 16, &scratch);
  EXPECT_EQ(across.data(), scratch.data());
  EXPECT_EQ(across, whole.substr(24, 16));
}

TEST(TensorBytesTest, SharedFloatsAreEncodedAsTheDTypeAsked) {
  auto values = std::make_shared<const std::vector<float>>(std::vector<float>{1.0f, -2.5f});
  const TensorBytes t = TensorBytes::Shared(values);
  EXPECT_EQ(t.kind(), TensorBytes::Kind::kShared);
  EXPECT_EQ(t.shared(), values);
  EXPECT_THAT(t.Pieces(), IsEmpty());
  EXPECT_EQ(t.size(WireDType::kF32), 8);
  EXPECT_EQ(t.size(WireDType::kBf16), 4);
  std::string f32, bf16;
  EncodeFloats(WireDType::kF32, *values, &f32);
  EncodeFloats(WireDType::kBf16, *values, &bf16);
  EXPECT_EQ(t.Flatten(WireDType::kF32), f32);
  EXPECT_EQ(t.Flatten(WireDType::kBf16), bf16);
}

TEST(TensorBytesTest, BorrowSeesTheSameBytesWithoutACopy) {
  const TensorBytes owned = TensorBytes::Owned(Counting(40));
  const TensorBytes view = owned.Borrow();
  EXPECT_EQ(view.kind(), TensorBytes::Kind::kBorrowed);
  ASSERT_EQ(view.Pieces().size(), 1u);
  EXPECT_EQ(view.Pieces()[0].data(), owned.Pieces()[0].data());

  auto values = std::make_shared<const std::vector<float>>(3, 1.0f);
  EXPECT_EQ(TensorBytes::Shared(values).Borrow().shared(), values);
}

TEST(TensorBytesTest, CopiesOfOwnedBytesAreIndependent) {
  TensorBytes a = TensorBytes::Owned("abc");
  TensorBytes b = a;
  *b.mutable_owned() = "xyz";
  EXPECT_EQ(a.Flatten(WireDType::kF32), "abc");
  EXPECT_THAT(b.Pieces(), ElementsAre("xyz"));
}

}  // namespace
}  // namespace optd
