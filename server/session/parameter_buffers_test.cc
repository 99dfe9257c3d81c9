#include "server/session/parameter_buffers.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

using ::testing::ElementsAre;

TEST(ParameterBuffersTest, WritingAnUnsharedBufferCopiesNothing) {
  ParameterBuffers p({{1, 2, 3}});
  int64_t copied = 0;
  absl::Span<float> w = p.Writable(0, &copied);
  w[0] = 9;
  EXPECT_EQ(copied, 0);
  EXPECT_THAT(p.values(0), ElementsAre(9, 2, 3));
}

TEST(ParameterBuffersTest, ASharedBufferIsCopiedBeforeItIsWrittenAndKeepsItsValues) {
  ParameterBuffers p({{1, 2, 3}});
  SharedFloats reply = p.Share(0);
  int64_t copied = 0;
  p.Writable(0, &copied)[1] = -1;
  EXPECT_EQ(copied, 12);
  EXPECT_THAT(*reply, ElementsAre(1, 2, 3));  // as it was shared
  EXPECT_THAT(p.values(0), ElementsAre(1, -1, 3));
  reply.reset();  // the reply is sent: the next write copies nothing
  copied = 0;
  p.Writable(0, &copied)[2] = 0;
  EXPECT_EQ(copied, 0);
}

TEST(ParameterBuffersTest, AdoptedBuffersAreCopiedWhileTheirGiverHoldsThem) {
  auto given = std::make_shared<std::vector<float>>(std::vector<float>{5, 6});
  SharedFloats held = given;
  ParameterBuffers p(std::vector<SharedFloats>{std::move(given)});
  int64_t copied = 0;
  p.Writable(0, &copied)[0] = 0;
  EXPECT_EQ(copied, 8);
  EXPECT_THAT(*held, ElementsAre(5, 6));
}

TEST(ParameterBuffersTest, EncodesChosenRows) {
  ParameterBuffers p({{0, 1, 2, 3, 4, 5}});
  const std::string bytes = p.EncodeRows(0, {2, 0}, 2, WireDType::kF32);
  std::vector<float> rows;
  ASSERT_TRUE(DecodeFloats("rows", WireDType::kF32, bytes, 4, &rows).ok());
  EXPECT_THAT(rows, ElementsAre(4, 5, 0, 1));
}

}  // namespace
}  // namespace optd
