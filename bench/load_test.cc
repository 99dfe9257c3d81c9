// Tests of optd-bench's arithmetic: the echo messages it sizes, and its latency percentiles.

#include "bench/load.h"

#include <algorithm>
#include <string>

#include "gtest/gtest.h"

namespace optd {
namespace bench {
namespace {

// Serialized sizes of the EchoRequest and EchoReply that FitEcho's shape produces.
void EchoSizes(const EchoShape& shape, int64_t* request, int64_t* reply) {
  bench::v1::EchoRequest q;
  q.set_payload(std::string(shape.payload, 'x'));
  q.set_reply_bytes(shape.reply_bytes);
  *request = static_cast<int64_t>(q.ByteSizeLong());
  bench::v1::EchoReply r;  // what optd-echo sends back
  const int64_t same = std::min(shape.payload, shape.reply_bytes);
  r.set_payload(std::string(same, 'x'));
  r.set_padding(std::string(shape.reply_bytes - same, '\0'));
  *reply = static_cast<int64_t>(r.ByteSizeLong());
}

TEST(FitEchoTest, MatchesStepSizesWithinTwoBytes) {
  const int64_t sizes[] = {20,    25,     60,      130,     4100,    4180,   16390,
                           16500, 100070, 2000090, 4000093, 4000150, 2097230};
  for (int64_t request : sizes) {
    for (int64_t reply : sizes) {
      int64_t got_request = 0, got_reply = 0;
      EchoSizes(FitEcho(request, reply), &got_request, &got_reply);
      EXPECT_LE(got_request, request) << request << " " << reply;
      EXPECT_GE(got_request, request - 2) << request << " " << reply;
      EXPECT_LE(got_reply, reply) << request << " " << reply;
      EXPECT_GE(got_reply, reply - 2) << request << " " << reply;
    }
  }
}

TEST(FitEchoTest, ExactForTypicalStepSizes) {
  int64_t got_request = 0, got_reply = 0;
  EchoSizes(FitEcho(4000093, 4000071), &got_request, &got_reply);
  EXPECT_EQ(got_request, 4000093);
  EXPECT_EQ(got_reply, 4000071);
  EchoSizes(FitEcho(4100, 4180), &got_request, &got_reply);  // a reply larger than the request
  EXPECT_EQ(got_request, 4100);
  EXPECT_EQ(got_reply, 4180);
}

TEST(PhaseStatsTest, NearestRankPercentiles) {
  PhaseStats s;
  for (int i = 1; i <= 100; ++i) s.latency_us.push_back(i);
  EXPECT_EQ(s.LatencyPercentileUs(0.50), 50);
  EXPECT_EQ(s.LatencyPercentileUs(0.99), 99);
  EXPECT_EQ(s.LatencyPercentileUs(1.0), 100);
  s.latency_us = {7};
  EXPECT_EQ(s.LatencyPercentileUs(0.5), 7);
  EXPECT_EQ(s.LatencyPercentileUs(0.99), 7);
  s.latency_us.clear();
  EXPECT_EQ(s.LatencyPercentileUs(0.5), 0);
}

TEST(PhaseStatsTest, RatesOverMeasuredTime) {
  PhaseStats s;
  s.steps = 50;
  s.bytes = 10'000'000;
  s.seconds = 2;
  s.server_cpu_seconds = 0.5;
  EXPECT_DOUBLE_EQ(s.StepsPerSecond(), 25);
  EXPECT_DOUBLE_EQ(s.MegabytesPerSecond(), 5);
  EXPECT_DOUBLE_EQ(s.ServerCpuUsPerStep(), 10000);
  s.server_cpu_seconds = -1;
  EXPECT_LT(s.ServerCpuUsPerStep(), 0);
}

TEST(ParseTest, ModesAndDTypes) {
  EXPECT_EQ(*ParseMode("sync"), optd::v1::Consistency::MODE_SYNC);
  EXPECT_EQ(*ParseMode("BOUNDED"), optd::v1::Consistency::MODE_BOUNDED);
  EXPECT_EQ(ParseMode("eventual").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseDType("bf16"), optd::v1::DTYPE_BF16);
  EXPECT_EQ(ParseDType("f64").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace bench
}  // namespace optd
