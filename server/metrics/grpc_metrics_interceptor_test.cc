// GrpcServerMetrics and GrpcCallRecorder on their own: the Go spellings of the codes, and what a
// recorder writes. The same series end to end, through a real server, are in
// server/service/grpc_metrics_test.cc.

#include "server/metrics/grpc_metrics_interceptor.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "grpcpp/support/status.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "server/metrics/metrics_testing.h"

namespace optd {
namespace {

using ::testing::Optional;
using testing_internal::LabelMap;
using testing_internal::SampleValue;

LabelMap Method(const std::string& method, const std::string& type, const std::string& service) {
  return {{"grpc_type", type}, {"grpc_service", service}, {"grpc_method", method}};
}

LabelMap WithCode(LabelMap labels, const std::string& code) {
  labels["grpc_code"] = code;
  return labels;
}

TEST(GrpcCodeNameTest, SpellsCodesAsGo) {
  const std::vector<std::string> go = {
      "OK",       "Canceled",       "Unknown",          "InvalidArgument",   "DeadlineExceeded",
      "NotFound", "AlreadyExists",  "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
      "Aborted",  "OutOfRange",     "Unimplemented",    "Internal",          "Unavailable",
      "DataLoss", "Unauthenticated"};
  ASSERT_EQ(go.size(), kNumGrpcCodes);
  for (int code = 0; code < kNumGrpcCodes; ++code) EXPECT_EQ(GrpcCodeName(code), go[code]);
  EXPECT_EQ(GrpcCodeName(17), "Unknown");
  EXPECT_EQ(GrpcCodeName(static_cast<int>(grpc::StatusCode::CANCELLED)), "Canceled");
}

TEST(GrpcCallRecorderTest, RecordsWhatTheInterceptorWould) {
  prometheus::Registry registry;
  GrpcServerMetrics metrics(registry);
  metrics.InitializeMethod("pkg.Svc", "Chat", GrpcType::kBidiStream,
                           GrpcServerMetrics::Recording::kByService);
  const LabelMap m = Method("Chat", "bidi_stream", "pkg.Svc");
  {
    GrpcCallRecorder call(metrics.Find("/pkg.Svc/Chat"));
    call.Start();
    for (int i = 0; i < 2; ++i) {
      call.Received();
      call.Sent();
    }
    call.Finished(static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
    call.Finished(0);  // only the first counts
  }
  {
    GrpcCallRecorder cancelled(metrics.Find("/pkg.Svc/Chat"));
    cancelled.Start();
  }
  GrpcCallRecorder off(nullptr);  // metrics off: records nothing, never crashes
  off.Start();
  off.Received();
  off.Sent();
  off.Finished(0);

  const std::string text = testing_internal::Serialize(registry);
  EXPECT_THAT(SampleValue(text, "grpc_server_started_total", m), Optional(2.0));
  EXPECT_THAT(SampleValue(text, "grpc_server_msg_received_total", m), Optional(2.0));
  EXPECT_THAT(SampleValue(text, "grpc_server_msg_sent_total", m), Optional(2.0));
  EXPECT_THAT(SampleValue(text, "optd_stream_message_handling_seconds_count", m), Optional(2.0));
  EXPECT_THAT(SampleValue(text, "grpc_server_handled_total", WithCode(m, "InvalidArgument")),
              Optional(1.0));
  EXPECT_THAT(SampleValue(text, "grpc_server_handled_total", WithCode(m, "Canceled")),
              Optional(1.0));
  EXPECT_THAT(SampleValue(text, "grpc_server_handled_total", WithCode(m, "OK")), Optional(0.0));
  EXPECT_THAT(SampleValue(text, "grpc_server_handling_seconds_count", m), Optional(2.0));
  EXPECT_EQ(metrics.Find("/pkg.Svc/Chat")->recording, GrpcServerMetrics::Recording::kByService);
  EXPECT_EQ(metrics.Find("/pkg.Svc/Nope"), nullptr);
}

}  // namespace
}  // namespace optd
