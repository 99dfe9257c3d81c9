#include "server/metrics/norms_sampling.h"

#include <atomic>

#include "base/fake_clock.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

TEST(NormsSamplingTest, SmallSessionsMeasureEveryStep) {
  FakeClock clock;
  NormsSampling sampling(NormsSamplingOptions(), &clock);
  std::atomic<int64_t> last{0};
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(sampling.Take(&last, 256 * 1024));
}

TEST(NormsSamplingTest, LargeSessionsMeasureAtMostOncePerInterval) {
  FakeClock clock;
  NormsSamplingOptions options;
  options.interval = absl::Milliseconds(250);
  NormsSampling sampling(options, &clock);
  std::atomic<int64_t> last{0};
  const int64_t large = 256 * 1024 + 1;
  EXPECT_TRUE(sampling.Take(&last, large));   // the first step
  EXPECT_FALSE(sampling.Take(&last, large));  // within the interval
  clock.Advance(absl::Milliseconds(249));
  EXPECT_FALSE(sampling.Take(&last, large));
  clock.Advance(absl::Milliseconds(1));
  EXPECT_TRUE(sampling.Take(&last, large));
  EXPECT_FALSE(sampling.Take(&last, large));
}

}  // namespace
}  // namespace optd
