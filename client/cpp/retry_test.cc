// RetryPolicy's arithmetic, and the Client's retries against real servers: a lost reply (a client
// interceptor turns the first Step's OK into UNAVAILABLE after the server applied it), a server
// that starts late, and an address where nothing listens.

#include "client/cpp/retry.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cpp/client.h"
#include "client/cpp/client_testing.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/client_interceptor.h"
#include "gtest/gtest.h"
#include "server/service/server.h"

namespace optd {
namespace client {
namespace {

using ::optd::client::testing::Sgd;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// --- RetryPolicy ---------------------------------------------------------------------------------

TEST(RetryPolicyTest, TheDefaultBudgetOutlastsGrpcsFirstReconnects) {
  const RetryPolicy policy;
  ASSERT_TRUE(policy.Validate().ok());
  EXPECT_EQ(policy.NominalBackoff(1), absl::Milliseconds(100));
  EXPECT_EQ(policy.NominalBackoff(2), absl::Milliseconds(200));
  EXPECT_EQ(policy.NominalBackoff(5), absl::Milliseconds(1600));
  EXPECT_EQ(policy.NominalBackoff(6), absl::Seconds(2));  // capped
  EXPECT_EQ(policy.NominalBackoff(9), absl::Seconds(2));
  // gRPC redials after 1 s, 2.6 s, 5.2 s, 9.3 s (+-20%); the Python client waits ~0.75 s in all.
  EXPECT_EQ(policy.TotalBackoff(), absl::Milliseconds(100 + 200 + 400 + 800 + 1600 + 4 * 2000));
  EXPECT_GE(policy.TotalBackoff(), absl::Seconds(10));
  EXPECT_TRUE(policy.Retries(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(policy.Retries(absl::StatusCode::kDeadlineExceeded));
  EXPECT_FALSE(policy.Retries(absl::StatusCode::kAborted));
  EXPECT_FALSE(policy.Retries(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(RetryPolicy::None().TotalBackoff(), absl::ZeroDuration());
}

TEST(RetryPolicyTest, BackoffIsJitteredWithinItsBounds) {
  const RetryPolicy policy;
  absl::BitGen gen;
  absl::Duration lowest = absl::InfiniteDuration(), highest = absl::ZeroDuration();
  for (int i = 0; i < 200; ++i) {
    const absl::Duration d = policy.Backoff(3, gen);  // nominal 400 ms
    lowest = std::min(lowest, d);
    highest = std::max(highest, d);
  }
  EXPECT_GE(lowest, absl::Milliseconds(320));
  EXPECT_LE(highest, absl::Milliseconds(480));
  EXPECT_GT(highest - lowest, absl::Milliseconds(40));  // really random
  RetryPolicy steady;
  steady.jitter = 0;
  EXPECT_EQ(steady.Backoff(3, gen), absl::Milliseconds(400));
}

TEST(RetryPolicyTest, ValidateNamesTheFieldAndItsRange) {
  auto error = [](void (*edit)(RetryPolicy*)) {
    RetryPolicy policy;
    edit(&policy);
    absl::Status s = policy.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    return std::string(s.message());
  };
  EXPECT_EQ(error([](RetryPolicy* p) { p->max_attempts = 0; }),
            "RetryPolicy.max_attempts = 0; must be >= 1");
  EXPECT_THAT(error([](RetryPolicy* p) { p->multiplier = 0.5; }),
              HasSubstr("RetryPolicy.multiplier = 0.5; must be finite and >= 1"));
  EXPECT_THAT(error([](RetryPolicy* p) { p->jitter = 1.5; }),
              HasSubstr("RetryPolicy.jitter = 1.5; must be in [0, 1]"));
  EXPECT_THAT(error([](RetryPolicy* p) { p->max_backoff = absl::Milliseconds(10); }),
              HasSubstr("RetryPolicy.max_backoff = 10ms; must be finite and >= initial_backoff"));
  EXPECT_THAT(error([](RetryPolicy* p) { p->retry_codes.clear(); }),
              HasSubstr("RetryPolicy.retry_codes is empty"));

  ClientOptions options;
  options.retry.max_attempts = -1;
  EXPECT_THAT(Client::Connect("127.0.0.1:1", options).status().message(),
              HasSubstr("ClientOptions.RetryPolicy.max_attempts = -1"));
}

// --- A lost reply -------------------------------------------------------------------------------

// Turns the OK status of the next `*budget` Step replies into UNAVAILABLE, as if the reply had been
// lost after the server applied the step.
class LoseStepReplies : public grpc::experimental::Interceptor {
 public:
  LoseStepReplies(grpc::experimental::ClientRpcInfo* info, std::atomic<int>* budget)
      : is_step_(std::string(info->method()) == "/optd.v1.Optimizer/Step"), budget_(budget) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (is_step_ && methods->QueryInterceptionHookPoint(
                        grpc::experimental::InterceptionHookPoints::POST_RECV_STATUS)) {
      grpc::Status* status = methods->GetRecvStatus();
      if (status->ok() && budget_->fetch_sub(1) > 0) {
        *status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "test: the reply was lost");
      }
    }
    methods->Proceed();
  }

 private:
  const bool is_step_;
  std::atomic<int>* const budget_;
};

class LoseStepRepliesFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit LoseStepRepliesFactory(std::atomic<int>* budget) : budget_(budget) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* info) override {
    return new LoseStepReplies(info, budget_);
  }

 private:
  std::atomic<int>* const budget_;
};

RetryPolicy Fast(int attempts) {
  RetryPolicy policy;
  policy.max_attempts = attempts;
  policy.initial_backoff = absl::Milliseconds(10);
  policy.max_backoff = absl::Milliseconds(20);
  return policy;
}

class LostReplyTest : public ::optd::client::testing::ServerTest {
 protected:
  // A client over TCP whose first `lost` Step replies are lost.
  std::unique_ptr<Client> Lossy(int lost) {
    lost_ = lost;
    std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> factories;
    factories.push_back(std::make_unique<LoseStepRepliesFactory>(&lost_));
    ClientOptions options;
    options.retry = Fast(4);
    return std::make_unique<Client>(grpc::experimental::CreateCustomChannelWithInterceptors(
                                        TcpAddress(), grpc::InsecureChannelCredentials(),
                                        grpc::ChannelArguments(), std::move(factories)),
                                    options, TcpAddress());
  }

  std::atomic<int> lost_{0};
};

TEST_F(LostReplyTest, AKeyedStepWhoseReplyIsLostIsRetriedAndAppliedOnce) {
  ASSERT_TRUE(client_->CreateSession("lost-keyed", Sgd(1), {{"p", {1}, {0}}}).ok());
  std::unique_ptr<Client> lossy = Lossy(1);
  StepOptions options;
  options.worker_id = "w";
  options.sequence = 1;
  absl::StatusOr<StepResult> r = lossy->Step("lost-keyed", {{"p", {1}, {1}}}, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->attempts, 2);
  EXPECT_TRUE(r->duplicate);  // the first attempt had been applied
  EXPECT_EQ(r->version, 1);
  EXPECT_THAT(r->parameters[0].values, ElementsAre(-1.0f));
  absl::StatusOr<PullResult> pulled = client_->Pull("lost-keyed");
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(pulled->version, 1);
}

TEST_F(LostReplyTest, AnUnkeyedStepIsNeverRetried) {
  ASSERT_TRUE(client_->CreateSession("lost-unkeyed", Sgd(1), {{"p", {1}, {0}}}).ok());
  std::unique_ptr<Client> lossy = Lossy(1);
  absl::StatusOr<StepResult> r = lossy->Step("lost-unkeyed", {{"p", {1}, {1}}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("1 attempt in"));
  EXPECT_THAT(r.status().message(), HasSubstr("not retried"));
  // It had been applied: retrying it blindly would have applied it twice.
  absl::StatusOr<PullResult> pulled = client_->Pull("lost-unkeyed");
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(pulled->version, 1);
}

TEST_F(LostReplyTest, ARetriedStepOnceTheBudgetIsSpentNamesTheAddressAndAttempts) {
  ASSERT_TRUE(client_->CreateSession("lost-all", Sgd(1), {{"p", {1}, {0}}}).ok());
  std::unique_ptr<Client> lossy = Lossy(100);
  StepOptions options;
  options.worker_id = "w";
  options.sequence = 5;
  absl::StatusOr<StepResult> r = lossy->Step("lost-all", {{"p", {1}, {1}}}, options);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(),
              HasSubstr(absl::StrCat("Step to ", TcpAddress(), ": 4 attempts in")));
  absl::StatusOr<PullResult> pulled = client_->Pull("lost-all");
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(pulled->version, 1);  // four attempts, one application
}

// --- Servers that are not (yet) there ------------------------------------------------------------

// A port on 127.0.0.1 that was free a moment ago (bound to 0, read back, closed).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return -1;
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST(ServerAbsentTest, AKeyedStepWithTheDefaultPolicyReachesAServerThatStartsLate) {
  const int port = FreePort();
  ASSERT_GT(port, 0);
  const std::string address = absl::StrCat("127.0.0.1:", port);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(address);  // default options
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->Health().status().code(), absl::StatusCode::kUnavailable);  // not yet up

  // The server comes up 2 s later, with the session.
  std::unique_ptr<OptdServer> server;
  std::thread starter([&] {
    absl::SleepFor(absl::Seconds(2));
    ServerOptions options;
    options.listen = address;
    absl::StatusOr<std::unique_ptr<OptdServer>> started = OptdServer::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    Client local((*started)->InProcessChannel());
    ASSERT_TRUE(local.CreateSession("late", Sgd(1), {{"p", {1}, {0}}}).ok());
    server = *std::move(started);
  });
  const absl::Time start = absl::Now();
  StepOptions options;
  options.worker_id = "early";
  options.sequence = 1;
  absl::StatusOr<StepResult> r = (*client)->Step("late", {{"p", {1}, {1}}}, options);
  const absl::Duration took = absl::Now() - start;
  starter.join();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->attempts, 1);
  EXPECT_FALSE(r->duplicate);
  EXPECT_EQ(r->version, 1);
  EXPECT_GE(took, absl::Seconds(1.5));
  EXPECT_LT(took, RetryPolicy().TotalBackoff());
  server->Shutdown(absl::Now() + absl::Seconds(5));
}

TEST(ServerAbsentTest, AnAddressWithNoServerFailsNamingItAfterTheRetries) {
  const int port = FreePort();
  ASSERT_GT(port, 0);
  const std::string address = absl::StrCat("127.0.0.1:", port);
  ClientOptions options;
  options.retry = Fast(3);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(address, options);
  ASSERT_TRUE(client.ok()) << client.status();

  StepOptions keyed;
  keyed.worker_id = "w";
  keyed.sequence = 1;
  absl::StatusOr<StepResult> r = (*client)->Step("s", {{"p", {1}, {1}}}, keyed);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr(absl::StrCat("Step to ", address, ": 3 attempts")));
  EXPECT_THAT((*client)->GetSession("s").status().message(),
              HasSubstr(absl::StrCat("GetSession to ", address, ": 3 attempts")));
  EXPECT_THAT((*client)->Step("s", {{"p", {1}, {1}}}).status().message(),
              HasSubstr(absl::StrCat("Step to ", address, ": 1 attempt in")));
  EXPECT_THAT((*client)->CreateSession("s", Sgd(1), {{"p", {1}, {0}}}).status().message(),
              HasSubstr("not retried"));
}

}  // namespace
}  // namespace client
}  // namespace optd
