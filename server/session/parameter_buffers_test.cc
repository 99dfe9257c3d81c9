#include "server/session/parameter_buffers.h"

#include <vector>

#include "base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

using ::testing::ElementsAre;

// Buffers holding `values`, paid for by `budget`.
ParameterBuffers Make(std::vector<std::vector<float>> values, MemoryBudget* budget) {
  int64_t bytes = 0;
  for (const auto& v : values) bytes += static_cast<int64_t>(v.size() * sizeof(float));
  absl::StatusOr<MemoryReservation> r = budget->Reserve(bytes, "parameters");
  EXPECT_OK(r);
  return ParameterBuffers(std::move(values), *std::move(r), budget);
}

TEST(ParameterBuffersTest, WritingAnUnsharedBufferCopiesNothing) {
  MemoryBudget budget(1000);
  ParameterBuffers p = Make({{1, 2, 3}}, &budget);
  int64_t copied = 0;
  absl::StatusOr<absl::Span<float>> w = p.Writable(0, &copied);
  ASSERT_OK(w);
  (*w)[0] = 9;
  EXPECT_EQ(copied, 0);
  EXPECT_THAT(p.values(0), ElementsAre(9, 2, 3));
  EXPECT_EQ(budget.in_use(), 12);
  EXPECT_EQ(p.live_bytes(), 12);
}

TEST(ParameterBuffersTest, ASharedBufferIsCopiedBeforeItIsWrittenAndKeepsItsValues) {
  MemoryBudget budget(1000);
  ParameterBuffers p = Make({{1, 2, 3}}, &budget);
  SharedFloats reply = p.Share(0);
  int64_t copied = 0;
  absl::StatusOr<absl::Span<float>> w = p.Writable(0, &copied);
  ASSERT_OK(w);
  (*w)[1] = -1;
  EXPECT_EQ(copied, 12);
  EXPECT_THAT(*reply, ElementsAre(1, 2, 3));  // as it was shared
  EXPECT_THAT(p.values(0), ElementsAre(1, -1, 3));
  // The copy and the buffer the reply holds are both paid for, until the reply lets go.
  EXPECT_EQ(budget.in_use(), 24);
  EXPECT_EQ(p.live_bytes(), 24);
  reply.reset();
  EXPECT_EQ(budget.in_use(), 12);
  EXPECT_EQ(p.live_bytes(), 12);
  copied = 0;
  ASSERT_OK(p.Writable(0, &copied));
  EXPECT_EQ(copied, 0);
}

TEST(ParameterBuffersTest, ACopyThatDoesNotFitTheBudgetIsRefusedAndChangesNothing) {
  MemoryBudget budget(16);
  ParameterBuffers p = Make({{1, 2, 3}}, &budget);
  SharedFloats reply = p.Share(0);
  int64_t copied = 0;
  EXPECT_THAT(p.Writable(0, &copied), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(copied, 0);
  EXPECT_EQ(p.Share(0), reply);  // still the same buffer
}

TEST(ParameterBuffersTest, EncodesChosenRows) {
  MemoryBudget budget(1000);
  ParameterBuffers p = Make({{0, 1, 2, 3, 4, 5}}, &budget);
  const std::string bytes = p.EncodeRows(0, {2, 0}, 2, WireDType::kF32);
  std::vector<float> rows;
  ASSERT_TRUE(DecodeFloats("rows", WireDType::kF32, bytes, 4, &rows).ok());
  EXPECT_THAT(rows, ElementsAre(4, 5, 0, 1));
}

}  // namespace
}  // namespace optd
