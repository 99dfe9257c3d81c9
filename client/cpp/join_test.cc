// Joins against a real in-process server: a restarted worker (the same worker id from a new Worker
// and client) is a new incarnation whose steps are applied; a late retry of the old incarnation is
// refused with rejoin; a worker the server forgot (more than 1024 other workers active since) joins
// again by itself and its step is applied once; a retry whose first reply was lost across such a
// forget is the step-outcome-unknown error; WorkerStreams do the same.

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cpp/client.h"
#include "client/cpp/client_testing.h"
#include "client/cpp/worker.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/client_interceptor.h"
#include "gtest/gtest.h"

namespace optd {
namespace client {
namespace {

using ::optd::client::testing::Sgd;
using ::testing::HasSubstr;

// How many workers a session remembers (the least recently active is forgotten first).
constexpr int kRememberedWorkers = 1024;

WorkerOptions Named(std::string id) {
  WorkerOptions options;
  options.worker_id = std::move(id);
  return options;
}

const std::vector<HostTensor> kGrad = {{"p", {1}, {1}}};

class JoinTest : public ::optd::client::testing::ServerTest {
 protected:
  // Makes `session` forget every worker active before: kRememberedWorkers + 1 other workers join
  // and step once each (unary, no parameters back). Returns the steps applied.
  int64_t CrowdOut(const std::string& session, const std::string& prefix) {
    const absl::Time start = absl::Now();
    StepOptions none;
    none.return_parameters = v1::RETURN_PARAMETERS_NONE;
    for (int i = 0; i <= kRememberedWorkers; ++i) {
      Worker other(client_.get(), session, Named(absl::StrCat(prefix, "-", i)));
      absl::StatusOr<StepResult> r = other.Step({{"p", {1}, {0}}}, none);
      EXPECT_TRUE(r.ok()) << r.status();
      if (!r.ok()) break;
      EXPECT_EQ(r->sequence, 1);
      EXPECT_FALSE(r->duplicate);
    }
    EXPECT_LT(absl::Now() - start, absl::Seconds(30));
    return kRememberedWorkers + 1;
  }

  int64_t Version(const std::string& session) {
    absl::StatusOr<v1::Session> info = client_->GetSession(session);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->version() : -1;
  }
};

TEST_F(JoinTest, AWorkerJoinsBeforeItsFirstStepAndNumbersFromOne) {
  ASSERT_TRUE(client_->CreateSession("j-first", Sgd(1), {{"p", {1}, {0}}}).ok());
  Worker worker(client_.get(), "j-first");
  EXPECT_FALSE(worker.joined());
  EXPECT_EQ(worker.incarnation(), 0);
  for (int i = 1; i <= 3; ++i) {
    absl::StatusOr<StepResult> r = worker.Step(kGrad);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->sequence, i);
    EXPECT_EQ(r->worker_incarnation, worker.incarnation());
    EXPECT_EQ(r->rejoins, 0);
    EXPECT_FALSE(r->duplicate);
  }
  EXPECT_TRUE(worker.joined());
  EXPECT_GT(worker.incarnation(), 0);
  EXPECT_EQ(worker.next_sequence(), 4);
  EXPECT_EQ(worker.version(), 3);

  // Join starts afresh: a new incarnation, sequences from 1 again, and the steps are applied.
  const int64_t before = worker.incarnation();
  ASSERT_TRUE(worker.Join().ok());
  EXPECT_GT(worker.incarnation(), before);
  absl::StatusOr<StepResult> r = worker.Step(kGrad);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sequence, 1);
  EXPECT_EQ(r->version, 4);
  EXPECT_FALSE(r->duplicate);

  // An incarnation needs a key.
  StepOptions bad;
  bad.worker_incarnation = 2;
  EXPECT_THAT(MakeStepRequest("j-first", kGrad, bad).status().message(),
              HasSubstr("worker_incarnation = 2"));
  EXPECT_EQ(client_->JoinSession("no-such-session", "w").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->JoinSession("j-first", "bad id").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(JoinTest, ARestartedWorkerIsANewIncarnationWhoseStepsAreApplied) {
  ASSERT_TRUE(client_->CreateSession("j-restart", Sgd(1), {{"p", {1}, {0}}}).ok());
  Worker first(client_.get(), "j-restart", Named("trainer-0"));
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(first.Step(kGrad).ok());
  const int64_t old = first.incarnation();

  // The process restarts: a new client and Worker with the same id. Before joins its sequences
  // 1..3 were answered as duplicates of the old process's steps and not applied.
  std::unique_ptr<Client> restarted_client = TcpClient();
  ASSERT_NE(restarted_client, nullptr);
  Worker restarted(restarted_client.get(), "j-restart", Named("trainer-0"));
  for (int i = 1; i <= 3; ++i) {
    absl::StatusOr<StepResult> r = restarted.Step(kGrad);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->version, 3 + i);
    EXPECT_EQ(r->sequence, i);
    EXPECT_FALSE(r->duplicate);
    EXPECT_EQ(r->rejoins, 0);
  }
  EXPECT_GT(restarted.incarnation(), old);

  // A late retry of the old incarnation (its step 3), unary or on a stream: refused with rejoin.
  StepOptions late;
  late.worker_id = "trainer-0";
  late.sequence = 3;
  late.worker_incarnation = old;
  absl::StatusOr<StepResult> r = client_->Step("j-restart", kGrad, late);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_TRUE(NeedsRejoin(r.status())) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("superseded"));
  std::unique_ptr<StepStream> stream = client_->StreamSteps();
  r = stream->Step("j-restart", kGrad, late);
  EXPECT_TRUE(NeedsRejoin(r.status())) << r.status();
  EXPECT_FALSE(stream->finished());
  EXPECT_TRUE(stream->Close().ok());
  EXPECT_EQ(Version("j-restart"), 6);

  // Two live processes with one id take it from each other: a new step of either is refused once,
  // joins again and is applied.
  r = first.Step(kGrad);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 7);
  EXPECT_EQ(r->rejoins, 1);
  EXPECT_EQ(r->sequence, 1);
}

TEST_F(JoinTest, AForgottenWorkerJoinsAgainAndItsStepIsAppliedOnce) {
  ASSERT_TRUE(client_->CreateSession("j-forgot", Sgd(1), {{"p", {1}, {0}}}).ok());
  Worker worker(client_.get(), "j-forgot", Named("forgotten"));
  ASSERT_TRUE(worker.Step(kGrad).ok());
  const int64_t incarnation = worker.incarnation();
  // An unjoined worker (an explicit first sequence) too.
  WorkerOptions unjoined_options = Named("unjoined");
  unjoined_options.first_sequence = 50;
  Worker unjoined(client_.get(), "j-forgot", unjoined_options);
  absl::StatusOr<StepResult> r = unjoined.Step(kGrad);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sequence, 50);
  EXPECT_EQ(r->worker_incarnation, 0);
  EXPECT_FALSE(unjoined.joined());
  const int64_t version = 2 + CrowdOut("j-forgot", "crowd-a");

  // The server forgot the worker: the step is refused before anything is applied, so the Worker
  // joins again and resends it under the new incarnation.
  r = worker.Step(kGrad);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, version + 1);
  EXPECT_EQ(r->rejoins, 1);
  EXPECT_EQ(r->sequence, 1);
  EXPECT_EQ(r->attempts, 1);
  EXPECT_FALSE(r->duplicate);
  EXPECT_GT(worker.incarnation(), incarnation);
  EXPECT_EQ(r->worker_incarnation, worker.incarnation());

  // The session forgot an unjoined worker, so it cannot tell an unjoined step from a forgotten
  // one's retry: refused with rejoin; the unjoined Worker joins and continues as a joined one.
  r = unjoined.Step(kGrad);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, version + 2);
  EXPECT_EQ(r->rejoins, 1);
  EXPECT_EQ(r->sequence, 1);
  EXPECT_TRUE(unjoined.joined());
  EXPECT_GT(r->worker_incarnation, 0);
  EXPECT_EQ(Version("j-forgot"), version + 2);
}

// Turns the OK status of the next Step reply into UNAVAILABLE after running a hook (which makes the
// server forget the worker), as if the reply had been lost after the step was applied.
class LoseReplyAfter : public grpc::experimental::Interceptor {
 public:
  LoseReplyAfter(grpc::experimental::ClientRpcInfo* info, std::atomic<bool>* armed,
                 std::function<void()>* hook)
      : is_step_(std::string(info->method()) == "/optd.v1.Optimizer/Step"),
        armed_(armed),
        hook_(hook) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (is_step_ && methods->QueryInterceptionHookPoint(
                        grpc::experimental::InterceptionHookPoints::POST_RECV_STATUS)) {
      grpc::Status* status = methods->GetRecvStatus();
      if (status->ok() && armed_->exchange(false)) {
        (*hook_)();
        *status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "test: the reply was lost");
      }
    }
    methods->Proceed();
  }

 private:
  const bool is_step_;
  std::atomic<bool>* const armed_;
  std::function<void()>* const hook_;
};

class LoseReplyAfterFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  LoseReplyAfterFactory(std::atomic<bool>* armed, std::function<void()>* hook)
      : armed_(armed), hook_(hook) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* info) override {
    return new LoseReplyAfter(info, armed_, hook_);
  }

 private:
  std::atomic<bool>* const armed_;
  std::function<void()>* const hook_;
};

TEST_F(JoinTest, ARetryAcrossAForgetIsAStepOutcomeUnknownAndTheNextStepWorks) {
  ASSERT_TRUE(client_->CreateSession("j-unknown", Sgd(1), {{"p", {1}, {0}}}).ok());
  std::atomic<bool> armed{false};
  std::function<void()> hook = [this] { CrowdOut("j-unknown", "crowd-b"); };
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> factories;
  factories.push_back(std::make_unique<LoseReplyAfterFactory>(&armed, &hook));
  ClientOptions options;
  options.retry.initial_backoff = absl::Milliseconds(10);
  options.retry.max_backoff = absl::Milliseconds(20);
  options.retry.max_attempts = 4;
  Client lossy(grpc::experimental::CreateCustomChannelWithInterceptors(
                   TcpAddress(), grpc::InsecureChannelCredentials(), grpc::ChannelArguments(),
                   std::move(factories)),
               options, TcpAddress());

  Worker worker(&lossy, "j-unknown", Named("lossy"));
  ASSERT_TRUE(worker.Step(kGrad).ok());
  const int64_t refused_incarnation = worker.incarnation();
  armed = true;
  absl::StatusOr<StepResult> r = worker.Step(kGrad);
  EXPECT_FALSE(armed);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_TRUE(IsStepOutcomeUnknown(r.status())) << r.status();
  EXPECT_THAT(r.status().message(),
              HasSubstr(absl::StrCat("step sequence 2 of worker lossy (incarnation ",
                                     refused_incarnation, ") on session j-unknown is unknown")));
  EXPECT_THAT(r.status().message(), HasSubstr("may have been applied once or not at all"));
  EXPECT_THAT(
      r.status().message(),
      HasSubstr(absl::StrCat("joined the session again as incarnation ", worker.incarnation())));
  EXPECT_GT(worker.incarnation(), refused_incarnation);
  // The first attempt was applied, once.
  const int64_t version = 2 + kRememberedWorkers + 1;
  EXPECT_EQ(Version("j-unknown"), version);

  r = worker.Step(kGrad);  // the next step works
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, version + 1);
  EXPECT_EQ(r->sequence, 1);
  EXPECT_EQ(r->rejoins, 0);
  EXPECT_FALSE(r->duplicate);
  EXPECT_FALSE(IsStepOutcomeUnknown(absl::FailedPreconditionError("other")));
}

TEST_F(JoinTest, AWorkerStreamJoinsAgainWhenForgottenAndReportsAnUnknownResend) {
  ASSERT_TRUE(client_->CreateSession("j-stream", Sgd(1), {{"p", {1}, {0}}}).ok());
  Worker worker(client_.get(), "j-stream", Named("streamer"));
  std::unique_ptr<WorkerStream> stream = worker.OpenStream();
  ASSERT_TRUE(stream->Step(kGrad).ok());
  const int64_t incarnation = worker.incarnation();
  int64_t version = 1 + CrowdOut("j-stream", "crowd-s");

  // Refused on the stream (nothing applied): joins again and resends on the same stream.
  absl::StatusOr<StepResult> r = stream->Step(kGrad);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, version + 1);
  EXPECT_EQ(r->rejoins, 1);
  EXPECT_EQ(r->sequence, 1);
  EXPECT_GT(worker.incarnation(), incarnation);
  EXPECT_EQ(stream->reconnects(), 0);
  ++version;
  EXPECT_TRUE(stream->Close().ok());

  // A stream whose lifetime passes: the step is resent on a new stream; if the server forgot the
  // worker meanwhile, the resend is refused and the client cannot know whether the first sending
  // was applied (here it never reached the server).
  std::unique_ptr<WorkerStream> short_lived = worker.OpenStream(absl::Milliseconds(300));
  const absl::Time opened = absl::Now();
  ASSERT_TRUE(short_lived->Step(kGrad).ok());
  ++version;
  version += CrowdOut("j-stream", "crowd-t");
  absl::SleepFor(absl::Milliseconds(400) - (absl::Now() - opened));
  const int64_t refused_incarnation = worker.incarnation();
  r = short_lived->Step(kGrad);
  EXPECT_TRUE(IsStepOutcomeUnknown(r.status())) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("attempt 2"));
  EXPECT_EQ(short_lived->reconnects(), 1);
  EXPECT_GT(worker.incarnation(), refused_incarnation);
  EXPECT_EQ(Version("j-stream"), version);
  r = short_lived->Step(kGrad);  // the next step works (its stream's lifetime is fresh)
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sequence, 1);
  EXPECT_EQ(r->version, version + 1);
}

}  // namespace
}  // namespace client
}  // namespace optd
