#include "client/cpp/client.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/service/server.h"

namespace optd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

v1::SessionConfig Sgd(double lr) {
  v1::SessionConfig config;
  config.mutable_optimizer()->mutable_sgd()->set_lr(lr);
  return config;
}

v1::SessionConfig Adam() {
  v1::SessionConfig config;
  config.mutable_optimizer()->mutable_adam();
  return config;
}

// One server for the whole suite (starting one costs more than most tests); every test uses its
// own session ids.
class ClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    absl::StatusOr<std::unique_ptr<OptdServer>> server = OptdServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }

  static void TearDownTestSuite() {
    if (server_ == nullptr) return;
    server_->Shutdown(absl::Now() + absl::Seconds(5));
    delete server_;
    server_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    client_ = std::make_unique<Client>(server_->InProcessChannel());
  }

  static std::string TcpAddress() { return absl::StrCat("127.0.0.1:", server_->port()); }

  static OptdServer* server_;
  std::unique_ptr<Client> client_;
};

OptdServer* ClientTest::server_ = nullptr;

// --- CreateSession / GetSession / DeleteSession ----------------------------------------------

TEST_F(ClientTest, CreateSessionReturnsTheSessionWithDefaultsFilledIn) {
  absl::StatusOr<v1::Session> session =
      client_->CreateSession("create-defaults", Adam(),
                             {{"w", {2, 3}, std::vector<float>(6, 0.5f)}, {"b", {3}, {1, 2, 3}}});
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(session->session_id(), "create-defaults");
  const v1::Adam& adam = session->config().optimizer().adam();
  EXPECT_TRUE(adam.has_lr());
  EXPECT_DOUBLE_EQ(adam.lr(), 1e-3);
  EXPECT_DOUBLE_EQ(adam.beta1(), 0.9);
  EXPECT_DOUBLE_EQ(adam.beta2(), 0.999);
  EXPECT_DOUBLE_EQ(adam.eps(), 1e-8);
  ASSERT_EQ(session->tensors_size(), 2);
  EXPECT_EQ(session->tensors(0).name(), "w");
  EXPECT_THAT(session->tensors(0).shape(), ElementsAre(2, 3));
  EXPECT_EQ(session->tensors(0).num_elements(), 6);
  EXPECT_EQ(session->version(), 0);
  EXPECT_EQ(session->num_parameters(), 9);
  EXPECT_EQ(session->parameter_bytes(), 36);
  EXPECT_EQ(session->state_bytes_per_parameter(), 8);
  EXPECT_GT(session->create_time_seconds(), 0);

  absl::StatusOr<v1::Session> got = client_->GetSession("create-defaults");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->session_id(), "create-defaults");
  EXPECT_EQ(got->num_parameters(), 9);
}

TEST_F(ClientTest, CreateSessionFromAFullRequest) {
  v1::CreateSessionRequest request;
  request.set_session_id("create-request");
  *request.mutable_config() = Sgd(0.5);
  absl::StatusOr<v1::Tensor> t = HostTensorToProto({"p", {1}, {1.0f}}, v1::DTYPE_BF16);
  ASSERT_TRUE(t.ok()) << t.status();
  *request.add_tensors() = *t;
  absl::StatusOr<v1::Session> session = client_->CreateSession(request);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_DOUBLE_EQ(session->config().optimizer().sgd().lr(), 0.5);
}

TEST_F(ClientTest, CreateSessionWithoutAnIdGetsAGeneratedOne) {
  absl::StatusOr<v1::Session> session = client_->CreateSession("", Adam(), {{"w", {1}, {0}}});
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_FALSE(session->session_id().empty());
  EXPECT_TRUE(client_->GetSession(session->session_id()).ok());
}

TEST_F(ClientTest, CreateSessionTwiceIsAlreadyExists) {
  ASSERT_TRUE(client_->CreateSession("twice", Adam(), {{"w", {1}, {0}}}).ok());
  absl::StatusOr<v1::Session> again = client_->CreateSession("twice", Adam(), {{"w", {1}, {0}}});
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists) << again.status();
}

TEST_F(ClientTest, CreateSessionWithABadHyperparameterIsInvalidArgumentNamingIt) {
  v1::SessionConfig config = Adam();
  config.mutable_optimizer()->mutable_adam()->set_beta1(1.5);
  absl::StatusOr<v1::Session> session =
      client_->CreateSession("bad-beta1", config, {{"w", {1}, {0}}});
  EXPECT_EQ(session.status().code(), absl::StatusCode::kInvalidArgument) << session.status();
  EXPECT_THAT(session.status().message(), HasSubstr("beta1"));
  EXPECT_EQ(client_->GetSession("bad-beta1").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ClientTest, CreateSessionRejectsAMalformedHostTensorBeforeSending) {
  absl::StatusOr<v1::Session> session =
      client_->CreateSession("malformed", Adam(), {{"w", {2, 2}, {1, 2, 3}}});
  EXPECT_EQ(session.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->GetSession("malformed").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ClientTest, UnknownSessionIsNotFoundEverywhere) {
  EXPECT_EQ(client_->GetSession("no-such-session").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->DeleteSession("no-such-session").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->Pull("no-such-session").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->Step("no-such-session", {{"w", {1}, {0}}}).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(ClientTest, DeleteSessionRemovesIt) {
  ASSERT_TRUE(client_->CreateSession("to-delete", Adam(), {{"w", {1}, {0}}}).ok());
  EXPECT_TRUE(client_->DeleteSession("to-delete").ok());
  EXPECT_EQ(client_->GetSession("to-delete").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->DeleteSession("to-delete").code(), absl::StatusCode::kNotFound);
}

// --- ListSessions --------------------------------------------------------------------------------

TEST_F(ClientTest, ListSessionsFollowsPageTokensAndSortsById) {
  for (const char* id : {"list-c", "list-a", "list-e", "list-b", "list-d"}) {
    ASSERT_TRUE(client_->CreateSession(id, Adam(), {{"w", {1}, {0}}}).ok()) << id;
  }
  absl::StatusOr<std::vector<v1::Session>> paged = client_->ListSessions(/*page_size=*/2);
  ASSERT_TRUE(paged.ok()) << paged.status();
  absl::StatusOr<std::vector<v1::Session>> whole = client_->ListSessions();
  ASSERT_TRUE(whole.ok()) << whole.status();

  std::vector<std::string> paged_ids, whole_ids, listed;
  for (const v1::Session& s : *paged) paged_ids.push_back(s.session_id());
  for (const v1::Session& s : *whole) whole_ids.push_back(s.session_id());
  EXPECT_EQ(paged_ids, whole_ids);
  EXPECT_TRUE(std::is_sorted(paged_ids.begin(), paged_ids.end()));
  for (const std::string& id : paged_ids) {
    if (id.rfind("list-", 0) == 0) listed.push_back(id);
  }
  EXPECT_THAT(listed, ElementsAre("list-a", "list-b", "list-c", "list-d", "list-e"));
}

// --- Pull --------------------------------------------------------------------------------------

TEST_F(ClientTest, PullDecodesEveryDType) {
  // Values exact in BF16 and F16, so every encoding reads back the same.
  const std::vector<float> w = {0.5f, -2.0f, 3.25f, 0.0f};
  ASSERT_TRUE(
      client_->CreateSession("pull-dtypes", Adam(), {{"w", {2, 2}, w}, {"b", {1}, {7}}}).ok());
  for (const v1::DType dtype : {v1::DTYPE_F32, v1::DTYPE_BF16, v1::DTYPE_F16}) {
    absl::StatusOr<PullResult> pulled = client_->Pull("pull-dtypes", {}, dtype);
    ASSERT_TRUE(pulled.ok()) << pulled.status();
    EXPECT_EQ(pulled->version, 0);
    ASSERT_EQ(pulled->tensors.size(), 2u) << dtype;
    EXPECT_EQ(pulled->tensors[0].name, "w");
    EXPECT_THAT(pulled->tensors[0].shape, ElementsAre(2, 2));
    EXPECT_EQ(pulled->tensors[0].values, w) << dtype;
    EXPECT_EQ(pulled->tensors[1].values, std::vector<float>{7}) << dtype;
  }
}

TEST_F(ClientTest, PullByName) {
  ASSERT_TRUE(
      client_->CreateSession("pull-names", Adam(), {{"w", {2}, {1, 2}}, {"b", {1}, {3}}}).ok());
  absl::StatusOr<PullResult> pulled = client_->Pull("pull-names", {"b"});
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  ASSERT_EQ(pulled->tensors.size(), 1u);
  EXPECT_EQ(pulled->tensors[0].name, "b");
  EXPECT_EQ(pulled->tensors[0].values, std::vector<float>{3});

  EXPECT_EQ(client_->Pull("pull-names", {"nope"}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// --- Step --------------------------------------------------------------------------------------

TEST_F(ClientTest, StepAppliesSgdAndReturnsTheNewParameters) {
  ASSERT_TRUE(client_->CreateSession("step-sgd", Sgd(0.5), {{"p", {2}, {1.0f, 2.0f}}}).ok());
  StepOptions options;
  options.worker_id = "w0";
  options.loss = 1.25;
  absl::StatusOr<StepResult> r = client_->Step("step-sgd", {{"p", {2}, {0.5f, -1.0f}}}, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 1);
  EXPECT_NEAR(r->gradient_norm, std::sqrt(1.25), 1e-6);
  EXPECT_DOUBLE_EQ(r->learning_rate, 0.5);
  ASSERT_EQ(r->parameters.size(), 1u);
  EXPECT_EQ(r->parameters[0].name, "p");
  EXPECT_THAT(r->parameters[0].values, ElementsAre(0.75f, 2.5f));

  absl::StatusOr<PullResult> pulled = client_->Pull("step-sgd");
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(pulled->version, 1);
  EXPECT_THAT(pulled->tensors[0].values, ElementsAre(0.75f, 2.5f));
}

TEST_F(ClientTest, StepCanReturnNothingOrACompactDType) {
  ASSERT_TRUE(client_->CreateSession("step-return", Sgd(1), {{"p", {2}, {1, 1}}}).ok());
  StepOptions none;
  none.return_parameters = false;
  absl::StatusOr<StepResult> r = client_->Step("step-return", {{"p", {2}, {0.5f, 0.25f}}}, none);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 1);
  EXPECT_TRUE(r->parameters.empty());

  StepOptions bf16;
  bf16.return_dtype = v1::DTYPE_BF16;
  bf16.gradient_dtype = v1::DTYPE_F16;
  r = client_->Step("step-return", {{"p", {2}, {0.25f, 0.25f}}}, bf16);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 2);
  ASSERT_EQ(r->parameters.size(), 1u);
  EXPECT_THAT(r->parameters[0].values, ElementsAre(0.25f, 0.5f));
}

TEST_F(ClientTest, StepWithAMissingGradientIsInvalidArgumentAndChangesNothing) {
  ASSERT_TRUE(
      client_->CreateSession("step-missing", Sgd(1), {{"w", {1}, {1}}, {"b", {1}, {1}}}).ok());
  absl::StatusOr<StepResult> r = client_->Step("step-missing", {{"w", {1}, {1}}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("b"));
  absl::StatusOr<PullResult> pulled = client_->Pull("step-missing");
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(pulled->version, 0);
  EXPECT_EQ(pulled->tensors[0].values, std::vector<float>{1});
}

TEST_F(ClientTest, StepWithANonFiniteGradientIsInvalidArgument) {
  ASSERT_TRUE(client_->CreateSession("step-nan", Sgd(1), {{"w", {1}, {1}}}).ok());
  EXPECT_EQ(client_->Step("step-nan", {{"w", {1}, {std::nanf("")}}}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ClientTest, ConcurrentStepsFromManyThreadsAreEachAppliedOnce) {
  ASSERT_TRUE(client_->CreateSession("step-threads", Sgd(1), {{"p", {1}, {0}}}).ok());
  constexpr int kThreads = 4;
  constexpr int kSteps = 25;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this] {
      StepOptions options;
      options.return_parameters = false;
      for (int i = 0; i < kSteps; ++i) {
        absl::StatusOr<StepResult> r = client_->Step("step-threads", {{"p", {1}, {-1}}}, options);
        EXPECT_TRUE(r.ok()) << r.status();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  absl::StatusOr<PullResult> pulled = client_->Pull("step-threads");
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(pulled->version, kThreads * kSteps);
  EXPECT_EQ(pulled->tensors[0].values, std::vector<float>{kThreads * kSteps});
}

// --- StreamSteps -------------------------------------------------------------------------------

TEST_F(ClientTest, StepStreamRepliesInOrderAndSurvivesARefusedStep) {
  ASSERT_TRUE(client_->CreateSession("stream", Sgd(1), {{"p", {1}, {0}}}).ok());
  std::unique_ptr<StepStream> stream = client_->StreamSteps();

  absl::StatusOr<StepResult> r = stream->Step("stream", {{"p", {1}, {-1}}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 1);
  EXPECT_THAT(r->parameters[0].values, ElementsAre(1.0f));

  // Refused steps come back as their own status; the stream goes on.
  EXPECT_EQ(stream->Step("no-such-session", {{"p", {1}, {-1}}}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(stream->Step("stream", {{"q", {1}, {-1}}}).status().code(),
            absl::StatusCode::kInvalidArgument);

  StepOptions options;
  options.return_parameters = false;
  r = stream->Step("stream", {{"p", {1}, {-1}}}, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 2);
  EXPECT_TRUE(r->parameters.empty());

  EXPECT_TRUE(stream->Close().ok());
  EXPECT_TRUE(stream->Close().ok());  // idempotent
  EXPECT_EQ(stream->Step("stream", {{"p", {1}, {-1}}}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(ClientTest, StepStreamRejectsAMalformedHostTensorWithoutBreakingTheStream) {
  ASSERT_TRUE(client_->CreateSession("stream-local", Sgd(1), {{"p", {1}, {0}}}).ok());
  std::unique_ptr<StepStream> stream = client_->StreamSteps();
  EXPECT_EQ(stream->Step("stream-local", {{"p", {1}, {1, 2}}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(stream->Step("stream-local", {{"p", {1}, {1}}}).ok());
  EXPECT_TRUE(stream->Close().ok());
}

TEST_F(ClientTest, StepStreamDestroyedOpenIsCancelled) {
  ASSERT_TRUE(client_->CreateSession("stream-drop", Sgd(1), {{"p", {1}, {0}}}).ok());
  {
    std::unique_ptr<StepStream> stream = client_->StreamSteps();
    ASSERT_TRUE(stream->Step("stream-drop", {{"p", {1}, {1}}}).ok());
  }  // no Close: the destructor cancels and returns
  absl::StatusOr<PullResult> pulled = client_->Pull("stream-drop");
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(pulled->version, 1);
}

TEST_F(ClientTest, StepStreamPastItsLifetimeIsDeadlineExceeded) {
  ASSERT_TRUE(client_->CreateSession("stream-deadline", Sgd(1), {{"p", {1}, {0}}}).ok());
  std::unique_ptr<StepStream> stream = client_->StreamSteps(absl::Milliseconds(500));
  ASSERT_TRUE(stream->Step("stream-deadline", {{"p", {1}, {1}}}).ok());
  absl::SleepFor(absl::Milliseconds(800));
  EXPECT_EQ(stream->Step("stream-deadline", {{"p", {1}, {1}}}).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(stream->Close().code(), absl::StatusCode::kDeadlineExceeded);
}

// --- Health and connection ---------------------------------------------------------------------

TEST_F(ClientTest, HealthOfTheServerAndTheOptimizerServiceIsServing) {
  absl::StatusOr<bool> overall = client_->Health();
  ASSERT_TRUE(overall.ok()) << overall.status();
  EXPECT_TRUE(*overall);
  absl::StatusOr<bool> optimizer = client_->Health("optd.v1.Optimizer");
  ASSERT_TRUE(optimizer.ok()) << optimizer.status();
  EXPECT_TRUE(*optimizer);
  EXPECT_EQ(client_->Health("no.such.Service").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ClientTest, ConnectOverTcp) {
  absl::StatusOr<std::unique_ptr<Client>> tcp = Client::Connect(TcpAddress());
  ASSERT_TRUE(tcp.ok()) << tcp.status();
  absl::StatusOr<bool> serving = (*tcp)->Health();
  ASSERT_TRUE(serving.ok()) << serving.status();
  EXPECT_TRUE(*serving);
  ASSERT_TRUE((*tcp)->CreateSession("tcp", Adam(), {{"w", {3}, {1, 2, 3}}}).ok());
  absl::StatusOr<PullResult> pulled = client_->Pull("tcp");  // seen through the other channel
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_THAT(pulled->tensors[0].values, ElementsAre(1, 2, 3));
}

TEST_F(ClientTest, ConnectRejectsBadOptions) {
  EXPECT_EQ(Client::Connect("").status().code(), absl::StatusCode::kInvalidArgument);
  ClientOptions options;
  options.max_message_bytes = 0;
  EXPECT_EQ(Client::Connect(TcpAddress(), options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = ClientOptions();
  options.timeout = absl::ZeroDuration();
  EXPECT_EQ(Client::Connect(TcpAddress(), options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ClientTest, AReplyOverMaxMessageBytesIsResourceExhausted) {
  ASSERT_TRUE(
      client_->CreateSession("big", Adam(), {{"w", {1000}, std::vector<float>(1000)}}).ok());
  ClientOptions options;
  options.max_message_bytes = 1024;
  absl::StatusOr<std::unique_ptr<Client>> small = Client::Connect(TcpAddress(), options);
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ((*small)->Pull("big").status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE((*small)->GetSession("big").ok());  // a small reply still fits
}

TEST(ClientUnreachableTest, FailsFastOrWaitsUntilTheDeadline) {
  // Port 1 on loopback: nothing listens there.
  ClientOptions options;
  options.timeout = absl::Milliseconds(300);
  absl::StatusOr<std::unique_ptr<Client>> fast = Client::Connect("127.0.0.1:1", options);
  ASSERT_TRUE(fast.ok()) << fast.status();
  EXPECT_EQ((*fast)->Health().status().code(), absl::StatusCode::kUnavailable);

  options.wait_for_ready = true;
  absl::StatusOr<std::unique_ptr<Client>> patient = Client::Connect("127.0.0.1:1", options);
  ASSERT_TRUE(patient.ok()) << patient.status();
  EXPECT_EQ((*patient)->GetSession("x").status().code(), absl::StatusCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace optd
