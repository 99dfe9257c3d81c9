// The gRPC server metrics end to end: a real OptdServer with metrics (no exporter) on 127.0.0.1:0,
// called over TCP through the generated stubs, its registry read back as text. Checks the
// go-grpc-prometheus names, labels and Go code spellings, that the interceptor's hooks fire for
// callback-API unary calls and bidirectional streams (and for gRPC's own health service), and that
// the session metrics arrive through the store's observer.

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "optd/v1/optd.grpc.pb.h"
#include "server/metrics/grpc_metrics_interceptor.h"
#include "server/metrics/metrics_testing.h"
#include "server/service/server.h"

namespace optd {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Optional;
using testing_internal::CountSamples;
using testing_internal::LabelMap;
using testing_internal::SampleValue;

constexpr char kService[] = "optd.v1.Optimizer";
constexpr int kMaxLabelledSessions = 3;

LabelMap Method(const std::string& method, const std::string& type = "unary",
                const std::string& service = kService) {
  return {{"grpc_type", type}, {"grpc_service", service}, {"grpc_method", method}};
}

LabelMap WithCode(LabelMap labels, const std::string& code) {
  labels["grpc_code"] = code;
  return labels;
}

v1::Tensor F32(const std::string& name, std::vector<float> values) {
  v1::Tensor t;
  t.set_name(name);
  t.add_shape(static_cast<int64_t>(values.size()));
  t.set_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4));
  return t;
}

std::unique_ptr<OptdServer> StartServer() {
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics.emplace();
  options.metrics->max_sessions = kMaxLabelledSessions;
  absl::StatusOr<std::unique_ptr<OptdServer>> server = OptdServer::Start(options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

class GrpcMetricsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server_ = StartServer().release(); }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  GrpcMetricsTest()
      : channel_(grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                                     grpc::InsecureChannelCredentials())),
        stub_(v1::Optimizer::NewStub(channel_)) {}

  void TearDown() override {
    for (const auto& s : server_->store().List("", 1000)) (void)server_->store().Delete(s->id());
  }

  static std::string Scrape() { return server_->metrics()->Scrape(); }

  // The value of a sample that must exist (0 and a test failure if it does not).
  static double Get(const std::string& name, const LabelMap& labels) {
    std::optional<double> v = SampleValue(Scrape(), name, labels);
    EXPECT_TRUE(v.has_value()) << name << " with the given labels is not exported";
    return v.value_or(0);
  }

  grpc::Status CreateAdam(const std::string& id) {
    v1::CreateSessionRequest req;
    req.set_session_id(id);
    req.mutable_config()->mutable_optimizer()->mutable_adam()->set_lr(0.1);
    *req.add_tensors() = F32("w", {1, 2, 3, 4});
    v1::Session out;
    grpc::ClientContext ctx;
    return stub_->CreateSession(&ctx, req, &out);
  }

  v1::StepRequest StepRequest(const std::string& id, float g, double loss) {
    v1::StepRequest req;
    req.set_session_id(id);
    *req.add_gradients() = F32("w", {g, g, g, g});
    req.set_loss(loss);
    return req;
  }

  static OptdServer* server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Optimizer::Stub> stub_;
};

OptdServer* GrpcMetricsTest::server_ = nullptr;

TEST(GrpcMetricsPreinitialisationTest, EveryServedMethodHasZeroSeriesForAll17Codes) {
  std::unique_ptr<OptdServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  const std::string text = server->metrics()->Scrape();
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(kService);
  ASSERT_NE(service, nullptr);
  std::vector<LabelMap> methods;
  for (int i = 0; i < service->method_count(); ++i) {
    methods.push_back(Method(service->method(i)->name(),
                             std::string(GrpcTypeName(GrpcTypeOf(*service->method(i))))));
  }
  methods.push_back(Method("Check", "unary", "grpc.health.v1.Health"));
  methods.push_back(Method("Watch", "server_stream", "grpc.health.v1.Health"));
  methods.push_back(
      Method("ServerReflectionInfo", "bidi_stream", "grpc.reflection.v1alpha.ServerReflection"));
  EXPECT_THAT(SampleValue(text, "grpc_server_started_total", Method("StreamSteps", "bidi_stream")),
              Optional(0.0));
  for (const LabelMap& m : methods) {
    const std::string& name = m.at("grpc_method");
    EXPECT_THAT(SampleValue(text, "grpc_server_started_total", m), Optional(0.0)) << name;
    EXPECT_THAT(SampleValue(text, "grpc_server_msg_received_total", m), Optional(0.0)) << name;
    EXPECT_THAT(SampleValue(text, "grpc_server_msg_sent_total", m), Optional(0.0)) << name;
    EXPECT_THAT(SampleValue(text, "grpc_server_handling_seconds_count", m), Optional(0.0)) << name;
    for (int code = 0; code < kNumGrpcCodes; ++code) {
      const std::string code_name(GrpcCodeName(code));
      EXPECT_THAT(SampleValue(text, "grpc_server_handled_total", WithCode(m, code_name)),
                  Optional(0.0))
          << name << " " << code_name;
    }
  }
  EXPECT_EQ(CountSamples(text, "grpc_server_handled_total"), methods.size() * kNumGrpcCodes);
  // The histogram carries no grpc_code, as in go-grpc-prometheus.
  EXPECT_EQ(CountSamples(text, "grpc_server_handling_seconds_count"), methods.size());
}

TEST_F(GrpcMetricsTest, UnaryOkCountsStartHandledAndBothMessages) {
  const LabelMap m = Method("CreateSession");
  const double started = Get("grpc_server_started_total", m);
  const double ok = Get("grpc_server_handled_total", WithCode(m, "OK"));
  const double received = Get("grpc_server_msg_received_total", m);
  const double sent = Get("grpc_server_msg_sent_total", m);
  const double observed = Get("grpc_server_handling_seconds_count", m);

  ASSERT_TRUE(CreateAdam("unary-ok").ok());

  EXPECT_EQ(Get("grpc_server_started_total", m), started + 1);
  EXPECT_EQ(Get("grpc_server_handled_total", WithCode(m, "OK")), ok + 1);
  EXPECT_EQ(Get("grpc_server_msg_received_total", m), received + 1);
  EXPECT_EQ(Get("grpc_server_msg_sent_total", m), sent + 1);
  EXPECT_EQ(Get("grpc_server_handling_seconds_count", m), observed + 1);
  EXPECT_GT(Get("grpc_server_handling_seconds_sum", m), 0);
}

TEST_F(GrpcMetricsTest, UnaryErrorsAreHandledWithGoCodeAndSendNoMessage) {
  const LabelMap get = Method("GetSession");
  const LabelMap create = Method("CreateSession");
  const double not_found = Get("grpc_server_handled_total", WithCode(get, "NotFound"));
  const double invalid = Get("grpc_server_handled_total", WithCode(create, "InvalidArgument"));
  const double get_sent = Get("grpc_server_msg_sent_total", get);
  const double get_received = Get("grpc_server_msg_received_total", get);

  v1::GetSessionRequest req;
  req.set_session_id("no-such-session");
  v1::Session out;
  grpc::ClientContext ctx;
  ASSERT_EQ(stub_->GetSession(&ctx, req, &out).error_code(), grpc::StatusCode::NOT_FOUND);
  ASSERT_EQ(CreateAdam("bad id!").error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  EXPECT_EQ(Get("grpc_server_handled_total", WithCode(get, "NotFound")), not_found + 1);
  EXPECT_EQ(Get("grpc_server_handled_total", WithCode(create, "InvalidArgument")), invalid + 1);
  EXPECT_EQ(Get("grpc_server_msg_received_total", get), get_received + 1);
  EXPECT_EQ(Get("grpc_server_msg_sent_total", get), get_sent);  // as Go: only when OK
}

TEST_F(GrpcMetricsTest, BidiStreamCountsEveryMessage) {
  ASSERT_TRUE(CreateAdam("bidi").ok());
  const LabelMap m = Method("StreamSteps", "bidi_stream");
  const double started = Get("grpc_server_started_total", m);
  const double ok = Get("grpc_server_handled_total", WithCode(m, "OK"));
  const double received = Get("grpc_server_msg_received_total", m);
  const double sent = Get("grpc_server_msg_sent_total", m);
  const double per_message = Get("optd_stream_message_handling_seconds_count", m);

  grpc::ClientContext ctx;
  auto stream = stub_->StreamSteps(&ctx);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(stream->Write(StepRequest("bidi", 1, 2.0)));
    v1::StreamStepsResponse reply;
    ASSERT_TRUE(stream->Read(&reply));
    EXPECT_TRUE(reply.has_reply());
  }
  ASSERT_TRUE(stream->WritesDone());
  ASSERT_TRUE(stream->Finish().ok());

  EXPECT_EQ(Get("grpc_server_started_total", m), started + 1);
  EXPECT_EQ(Get("grpc_server_msg_received_total", m), received + 3);
  EXPECT_EQ(Get("grpc_server_msg_sent_total", m), sent + 3);
  EXPECT_EQ(Get("optd_stream_message_handling_seconds_count", m), per_message + 3);
  // The status is sent before the client sees it; the interceptor has run by now.
  EXPECT_EQ(Get("grpc_server_handled_total", WithCode(m, "OK")), ok + 1);
  EXPECT_EQ(Get("optd_steps_total", {{"session", "bidi"}, {"optimizer", "adam"}}), 3);
}

TEST_F(GrpcMetricsTest, CancelledStreamIsStillHandledOnce) {
  ASSERT_TRUE(CreateAdam("cancel").ok());
  const LabelMap m = Method("StreamSteps", "bidi_stream");
  auto handled = [&] {
    double sum = 0;
    for (int code = 0; code < kNumGrpcCodes; ++code) {
      sum += Get("grpc_server_handled_total", WithCode(m, std::string(GrpcCodeName(code))));
    }
    return sum;
  };
  const double before = handled();
  const double ok_or_canceled = Get("grpc_server_handled_total", WithCode(m, "OK")) +
                                Get("grpc_server_handled_total", WithCode(m, "Canceled"));
  const double started = Get("grpc_server_started_total", m);
  {
    grpc::ClientContext ctx;
    auto stream = stub_->StreamSteps(&ctx);
    ASSERT_TRUE(stream->Write(StepRequest("cancel", 1, 1.0)));
    v1::StreamStepsResponse reply;
    ASSERT_TRUE(stream->Read(&reply));
    ctx.TryCancel();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // The server learns of the cancellation asynchronously.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (handled() < before + 1 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(handled(), before + 1);
  EXPECT_EQ(Get("grpc_server_started_total", m), started + 1);
  // gRPC 1.51 runs PRE_SEND_STATUS for the status the reactor finishes with even after the client
  // cancelled; StreamSteps finishes a stream whose read failed with OK, as a Go handler would.
  EXPECT_EQ(Get("grpc_server_handled_total", WithCode(m, "OK")) +
                Get("grpc_server_handled_total", WithCode(m, "Canceled")),
            ok_or_canceled + 1);
}

TEST_F(GrpcMetricsTest, HealthCheckIsCounted) {
  const LabelMap m = Method("Check", "unary", "grpc.health.v1.Health");
  const double ok = Get("grpc_server_handled_total", WithCode(m, "OK"));
  grpc::GenericStub generic(channel_);
  grpc::ClientContext ctx;
  grpc::Slice empty("");  // an empty message (HealthCheckRequest: the overall status)
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  absl::Notification done;
  grpc::Status status;
  generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                    [&](grpc::Status s) {
                      status = std::move(s);
                      done.Notify();
                    });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(Get("grpc_server_handled_total", WithCode(m, "OK")), ok + 1);
  EXPECT_EQ(Get("grpc_server_started_total", m), Get("grpc_server_msg_sent_total", m));
}

TEST_F(GrpcMetricsTest, UnknownMethodsAddNoSeries) {
  grpc::GenericStub generic(channel_);
  grpc::ClientContext ctx;
  grpc::Slice empty("");  // an empty message (HealthCheckRequest: the overall status)
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  absl::Notification done;
  grpc::Status status;
  generic.UnaryCall(&ctx, "/optd.v1.Optimizer/NoSuchMethod", grpc::StubOptions(), &request,
                    &response, [&](grpc::Status s) {
                      status = std::move(s);
                      done.Notify();
                    });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_THAT(Scrape(), Not(HasSubstr("NoSuchMethod")));
}

TEST_F(GrpcMetricsTest, StepsReachTheSessionMetrics) {
  ASSERT_TRUE(CreateAdam("steps").ok());
  const LabelMap s = {{"session", "steps"}, {"optimizer", "adam"}};
  const LabelMap step = Method("Step");
  const double ok = Get("grpc_server_handled_total", WithCode(step, "OK"));
  const double invalid = Get("grpc_server_handled_total", WithCode(step, "InvalidArgument"));
  v1::StepResponse reply;
  for (int i = 1; i <= 4; ++i) {
    grpc::ClientContext ctx;
    ASSERT_TRUE(
        stub_->Step(&ctx, StepRequest("steps", static_cast<float>(i), 10.0 / i), &reply).ok());
  }
  {
    v1::StepRequest bad = StepRequest("steps", 1, 0);
    bad.mutable_gradients(0)->set_name("nope");
    grpc::ClientContext ctx;
    ASSERT_EQ(stub_->Step(&ctx, bad, &reply).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    const float nan = std::nanf("");
    v1::StepRequest bad = StepRequest("steps", nan, 0);
    grpc::ClientContext ctx;
    v1::StepResponse ignored;
    ASSERT_EQ(stub_->Step(&ctx, bad, &ignored).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }

  const std::string text = Scrape();
  EXPECT_THAT(SampleValue(text, "optd_steps_total", s), Optional(4.0));
  EXPECT_THAT(SampleValue(text, "optd_gradient_norm", s),
              Optional(::testing::DoubleNear(reply.gradient_norm(), 1e-12)));
  EXPECT_THAT(SampleValue(text, "optd_learning_rate", s), Optional(0.1));
  EXPECT_THAT(SampleValue(text, "optd_loss", s), Optional(2.5));
  LabelMap reason = s;
  reason["reason"] = "invalid";
  EXPECT_THAT(SampleValue(text, "optd_refused_steps_total", reason), Optional(1.0));
  reason["reason"] = "non_finite";
  EXPECT_THAT(SampleValue(text, "optd_refused_steps_total", reason), Optional(1.0));
  // Every request that reached the session counts its gradient bytes, applied or not.
  EXPECT_THAT(SampleValue(text, "optd_received_bytes_total", s), Optional(6 * 16.0));
  EXPECT_THAT(SampleValue(text, "optd_sent_bytes_total", s), Optional(4 * 16.0));
  EXPECT_GT(SampleValue(text, "optd_optimizer_state_bytes", s).value_or(0), 0);
  EXPECT_GT(SampleValue(text, "optd_update_ratio", s).value_or(0), 0);
  EXPECT_THAT(SampleValue(text, "grpc_server_handled_total", WithCode(step, "OK")),
              Optional(ok + 4));
  EXPECT_THAT(SampleValue(text, "grpc_server_handled_total", WithCode(step, "InvalidArgument")),
              Optional(invalid + 2));
}

TEST_F(GrpcMetricsTest, DeleteSessionRemovesItsSeries) {
  ASSERT_TRUE(CreateAdam("doomed").ok());
  {
    grpc::ClientContext ctx;
    v1::StepResponse reply;
    ASSERT_TRUE(stub_->Step(&ctx, StepRequest("doomed", 1, 1), &reply).ok());
  }
  ASSERT_THAT(Scrape(), HasSubstr("session=\"doomed\""));
  v1::DeleteSessionRequest req;
  req.set_session_id("doomed");
  v1::DeleteSessionResponse out;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->DeleteSession(&ctx, req, &out).ok());
  EXPECT_THAT(Scrape(), Not(HasSubstr("session=\"doomed\"")));
}

TEST_F(GrpcMetricsTest, SessionLabelsAreBoundedByTheFlag) {
  for (int i = 0; i < kMaxLabelledSessions + 2; ++i) {
    ASSERT_TRUE(CreateAdam("bound-" + std::to_string(i)).ok());
  }
  const std::string text = Scrape();
  EXPECT_EQ(CountSamples(text, "optd_steps_total"), kMaxLabelledSessions + 1);
  EXPECT_THAT(SampleValue(text, "optd_steps_total", {{"session", "_other"}, {"optimizer", "adam"}}),
              Optional(0.0));
  EXPECT_THAT(SampleValue(text, "optd_metrics_other_sessions"), Optional(2.0));
  EXPECT_THAT(SampleValue(text, "optd_sessions", {{"optimizer", "adam"}}),
              Optional(kMaxLabelledSessions + 2.0));
}

}  // namespace
}  // namespace optd
