#include "server/session/gradient.h"

#include <cmath>
#include <deque>
#include <string>
#include <vector>

#include "base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TensorSpecs Specs() { return TensorSpecs({{"w", {2, 3}, 6}, {"b", {3}, 3}}); }

std::string F32(std::vector<float> values) {
  std::string bytes;
  EncodeFloats(WireDType::kF32, values, &bytes);
  return bytes;
}

class GradientTest : public ::testing::Test {
 protected:
  WireTensorView Dense(const char* name, const std::vector<int64_t>& shape, std::string bytes,
                       WireDType dtype = WireDType::kF32) {
    keep_.push_back(std::move(bytes));
    shapes_.push_back(shape);
    return {name, shapes_.back(), dtype, TensorBytes::Borrowed(keep_.back())};
  }
  WireTensorView Rows(const char* name, const std::vector<int64_t>& shape,
                      const std::vector<int64_t>& rows, std::vector<float> values) {
    WireTensorView v = Dense(name, shape, F32(std::move(values)));
    rows_.push_back(rows);
    v.has_rows = true;
    v.rows = rows_.back();
    return v;
  }

  std::deque<std::string> keep_;
  std::deque<std::vector<int64_t>> shapes_, rows_;
  RefusalReason reason_ = RefusalReason::kStale;
};

TEST_F(GradientTest, DecodesOneGradientPerTensorInCreationOrderAndMeasuresThem) {
  const std::vector<WireTensorView> in = {Dense("b", {3}, F32({1, 2, 2})),
                                          Dense("w", {2, 3}, F32({0, 0, 0, 0, 0, 3}))};
  auto grads = DecodeGradients(Specs(), "s", in, &reason_);
  ASSERT_OK(grads);
  ASSERT_EQ(grads->size(), 2u);
  EXPECT_THAT((*grads)[0].values(), ElementsAre(0, 0, 0, 0, 0, 3));
  EXPECT_EQ((*grads)[0].squares(), 9.0);
  EXPECT_THAT((*grads)[1].values(), ElementsAre(1, 2, 2));
  EXPECT_EQ((*grads)[1].squares(), 9.0);
}

TEST_F(GradientTest, TensorsWithoutAnEntryAreAbsent) {
  const std::vector<WireTensorView> in = {Dense("b", {3}, F32({1, 2, 2}))};
  auto grads = DecodeGradients(Specs(), "s", in, &reason_);
  ASSERT_OK(grads);
  ASSERT_EQ(grads->size(), 2u);
  EXPECT_TRUE((*grads)[0].absent());
  EXPECT_TRUE((*grads)[0].values().empty());
  EXPECT_FALSE((*grads)[1].absent());
}

TEST_F(GradientTest, AContiguousF32GradientIsReadInPlace) {
  const std::vector<WireTensorView> in = {Dense("w", {2, 3}, F32({1, 2, 3, 4, 5, 6})),
                                          Dense("b", {3}, F32({1, 2, 3}))};
  auto grads = DecodeGradients(Specs(), "s", in, &reason_);
  ASSERT_OK(grads);
  EXPECT_EQ(reinterpret_cast<const char*>((*grads)[0].values().data()), keep_[0].data());
  // Own() copies before anyone may write.
  std::vector<float>& owned = (*grads)[0].Own();
  EXPECT_NE(reinterpret_cast<const char*>(owned.data()), keep_[0].data());
  EXPECT_THAT(owned, ElementsAre(1, 2, 3, 4, 5, 6));
  EXPECT_FALSE((*grads)[0].squares().has_value());
}

TEST_F(GradientTest, PiecesAndHalfPrecisionDecodeToTheSameValues) {
  const std::string w = F32({1, 2, 3, 4, 5, 6});
  keep_.push_back(w);
  const absl::string_view all = keep_.back();
  shapes_.push_back({2, 3});
  // The bytes cut mid-float, as a transport may deliver them.
  WireTensorView pieces{
      "w", shapes_.back(), WireDType::kF32,
      TensorBytes::Borrowed({all.substr(0, 5), all.substr(5, 9), all.substr(14)})};
  std::string bf16;
  EncodeFloats(WireDType::kBf16, std::vector<float>{1, 2, 3}, &bf16);
  const std::vector<WireTensorView> in = {pieces, Dense("b", {3}, bf16, WireDType::kBf16)};
  auto grads = DecodeGradients(Specs(), "s", in, &reason_);
  ASSERT_OK(grads);
  EXPECT_THAT((*grads)[0].values(), ElementsAre(1, 2, 3, 4, 5, 6));
  EXPECT_EQ((*grads)[0].squares(), 91.0);
  EXPECT_THAT((*grads)[1].values(), ElementsAre(1, 2, 3));
}

TEST_F(GradientTest, RowSparseRowsAreSortedAndRepeatsSummed) {
  const std::vector<WireTensorView> in = {Rows("w", {2, 3}, {1, 0, 1}, {1, 1, 1, 2, 2, 2, 3, 3, 3}),
                                          Dense("b", {3}, F32({0, 0, 0}))};
  auto grads = DecodeGradients(Specs(), "s", in, &reason_);
  ASSERT_OK(grads);
  EXPECT_TRUE((*grads)[0].sparse());
  EXPECT_THAT((*grads)[0].rows(), ElementsAre(0, 1));
  EXPECT_THAT((*grads)[0].values(), ElementsAre(2, 2, 2, 4, 4, 4));
  EXPECT_THAT(std::move((*grads)[0]).Densify(Specs()[0]), ElementsAre(2, 2, 2, 4, 4, 4));
}

TEST_F(GradientTest, RefusesWhatDoesNotFitNamingTheField) {
  struct Case {
    std::vector<WireTensorView> in;
    std::string message;
    RefusalReason reason;
  };
  const std::vector<Case> cases = {
      {{Dense("x", {3}, F32({0, 0, 0}))},
       "gradients[0].name \"x\" is not a tensor of session s",
       RefusalReason::kInvalid},
      {{Dense("b", {3}, F32({0, 0, 0})), Dense("b", {3}, F32({0, 0, 0}))},
       "gradients[1].name \"b\" is repeated",
       RefusalReason::kInvalid},
      {{Dense("b", {1, 3}, F32({0, 0, 0}))},
       "gradients[0].shape [1, 3] of \"b\" must be [3]",
       RefusalReason::kInvalid},
      {{Dense("b", {3}, F32({0, 0}))},
       "gradients[0].data has 8 bytes; must be 12",
       RefusalReason::kInvalid},
      {{Dense("b", {3}, F32({0, NAN, 0}))},
       "gradients[0] \"b\" element 1 is nan",
       RefusalReason::kNonFinite},
      {{Rows("w", {2, 3}, {2}, {1, 1, 1})},
       "gradients[0].rows.indices[0] = 2 is out of range",
       RefusalReason::kInvalid},
      {{Rows("w", {2, 3}, {0}, {1, INFINITY, 1})}, "element 1 is inf", RefusalReason::kNonFinite},
      {{}, "gradients is empty", RefusalReason::kInvalid},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    EXPECT_THAT(DecodeGradients(Specs(), "s", c.in, &reason_),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)));
    EXPECT_EQ(reason_, c.reason);
  }
}

TEST_F(GradientTest, AHugeNameIsQuotedShort) {
  const std::string name(100000, 'n');
  keep_.push_back(F32({0, 0, 0}));
  shapes_.push_back({3});
  const std::vector<WireTensorView> in = {
      {name, shapes_.back(), WireDType::kF32, TensorBytes::Borrowed(keep_.back())}};
  absl::StatusOr<std::vector<Gradient>> grads = DecodeGradients(Specs(), "s", in, &reason_);
  ASSERT_FALSE(grads.ok());
  EXPECT_LT(grads.status().message().size(), 200u);
  EXPECT_THAT(grads.status().message(), HasSubstr("(100000 bytes)"));
}

}  // namespace
}  // namespace optd
