#include "client/cpp/worker.h"

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cpp/client_testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace client {
namespace {

using ::optd::client::testing::BoundedSgd;
using ::optd::client::testing::Sgd;
using ::optd::client::testing::SyncSgd;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

using WorkerTest = ::optd::client::testing::ServerTest;

WorkerOptions Named(std::string id) {
  WorkerOptions options;
  options.worker_id = std::move(id);
  return options;
}

TEST_F(WorkerTest, JoinsAtItsFirstStepAndNumbersItsStepsFromOne) {
  ASSERT_TRUE(client_->CreateSession("w-seq", Sgd(1), {{"p", {1}, {0}}}).ok());
  Worker worker(client_.get(), "w-seq");
  EXPECT_THAT(worker.worker_id(), StartsWith("cpp-"));
  EXPECT_EQ(worker.next_sequence(), 1);
  EXPECT_FALSE(worker.joined());

  for (int i = 1; i <= 3; ++i) {
    absl::StatusOr<StepResult> r = worker.Step({{"p", {1}, {1}}});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->sequence, i);
    EXPECT_EQ(r->worker_incarnation, worker.incarnation());
    EXPECT_FALSE(r->duplicate);
    EXPECT_EQ(r->attempts, 1);
  }
  EXPECT_TRUE(worker.joined());
  EXPECT_GT(worker.incarnation(), 0);
  EXPECT_EQ(worker.next_sequence(), 4);
  EXPECT_EQ(worker.version(), 3);

  // Two workers of one process get different ids.
  EXPECT_NE(Worker(client_.get(), "w-seq").worker_id(), worker.worker_id());
}

TEST_F(WorkerTest, ResendingAnAppliedSequenceIsADuplicateAndAForgottenOneIsRefused) {
  ASSERT_TRUE(client_->CreateSession("w-dup", Sgd(1), {{"p", {1}, {0}}}).ok());
  Worker worker(client_.get(), "w-dup", Named("dup"));
  worker.set_next_sequence(100);  // before any join: unjoined mode
  ASSERT_TRUE(worker.Step({{"p", {1}, {1}}}).ok());
  worker.set_next_sequence(100);
  absl::StatusOr<StepResult> again = worker.Step({{"p", {1}, {1}}});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->duplicate);
  EXPECT_EQ(again->version, 1);

  // The server remembers a worker's last 16 outcomes; an older sequence is FAILED_PRECONDITION.
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(worker.Step({{"p", {1}, {0}}}).ok());
  worker.set_next_sequence(100);
  absl::Status refused = worker.Step({{"p", {1}, {0}}}).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(NeedsRejoin(refused));  // the worker is known; only that sequence is not
  EXPECT_FALSE(worker.joined());
}

TEST_F(WorkerTest, SendsItsVersionSoTheServerMeasuresStaleness) {
  ASSERT_TRUE(client_->CreateSession("w-stale", Sgd(1), {{"p", {1}, {0}}}).ok());
  Worker slow(client_.get(), "w-stale", Named("slow"));
  Worker fast(client_.get(), "w-stale", Named("fast"));
  ASSERT_TRUE(slow.Pull().ok());
  EXPECT_EQ(slow.version(), 0);
  ASSERT_TRUE(fast.Step({{"p", {1}, {1}}}).ok());
  ASSERT_TRUE(fast.Step({{"p", {1}, {1}}}).ok());

  absl::StatusOr<StepResult> r = slow.Step({{"p", {1}, {1}}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->staleness, 2);  // computed at version 0, arrived at 2
  EXPECT_EQ(r->version, 3);
  EXPECT_EQ(slow.version(), 3);
  r = slow.Step({{"p", {1}, {1}}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->staleness, 0);
}

TEST_F(WorkerTest, ABoundedSessionAbortsAStaleWorkerWhoseVersionThenCatchesUp) {
  ASSERT_TRUE(client_->CreateSession("w-bounded", BoundedSgd(1, 0), {{"p", {1}, {0}}}).ok());
  Worker a(client_.get(), "w-bounded", Named("a"));
  Worker b(client_.get(), "w-bounded", Named("b"));
  ASSERT_TRUE(a.Pull().ok());
  ASSERT_TRUE(b.Pull().ok());
  ASSERT_TRUE(a.Step({{"p", {1}, {1}}}).ok());

  absl::StatusOr<StepResult> r = b.Step({{"p", {1}, {1}}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted) << r.status();
  EXPECT_EQ(b.version(), 1);  // from the ABORTED reply
  r = b.Step({{"p", {1}, {1}}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 2);
}

TEST_F(WorkerTest, ASyncSessionNeedsTheVersionAWorkerGetsFromPull) {
  ASSERT_TRUE(client_->CreateSession("w-sync-version", SyncSgd(1, 1), {{"p", {1}, {0}}}).ok());
  Worker worker(client_.get(), "w-sync-version", Named("solo"));
  absl::StatusOr<StepResult> r = worker.Step({{"p", {1}, {1}}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("version"));
  ASSERT_TRUE(worker.Pull().ok());
  r = worker.Step({{"p", {1}, {1}}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 1);
  EXPECT_EQ(r->workers, 1);
}

// Two workers, one SYNC barrier of 2: worker i sends w - target[i]; the step uses their mean,
// w - 2, so w_k = 2 - 2 * 0.5^k with lr 0.5. Every reply of a barrier is the same for both.
// `stream_second`: the second worker steps over a WorkerStream instead of unary calls.
void RunTwoSyncWorkers(Client* client, const std::string& session, bool stream_second) {
  constexpr int kSteps = 12;
  const float targets[2] = {1.0f, 3.0f};
  ASSERT_TRUE(client->CreateSession(session, SyncSgd(0.5, 2), {{"w", {1}, {0}}}).ok());
  std::vector<StepResult> results[2];
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      Worker worker(client, session, Named(i == 0 ? "sync-a" : "sync-b"));
      absl::StatusOr<PullResult> pulled = worker.Pull();
      ASSERT_TRUE(pulled.ok()) << pulled.status();
      float w = pulled->tensors[0].values[0];
      std::unique_ptr<WorkerStream> stream;
      if (i == 1 && stream_second) stream = worker.OpenStream();
      for (int k = 0; k < kSteps; ++k) {
        const std::vector<HostTensor> g = {{"w", {1}, {w - targets[i]}}};
        absl::StatusOr<StepResult> r = stream ? stream->Step(g) : worker.Step(g);
        ASSERT_TRUE(r.ok()) << "worker " << i << " step " << k << ": " << r.status();
        w = r->parameters[0].values[0];
        results[i].push_back(*r);
      }
      EXPECT_EQ(worker.version(), kSteps);
      if (stream) {
        EXPECT_TRUE(stream->Close().ok());
        EXPECT_EQ(stream->reconnects(), 0);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_EQ(results[0].size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(results[1].size(), static_cast<size_t>(kSteps));
  float expected = 0;
  for (int k = 0; k < kSteps; ++k) {
    expected = expected - 0.5f * (expected - 2.0f);
    for (int i = 0; i < 2; ++i) {
      const StepResult& r = results[i][k];
      EXPECT_EQ(r.version, k + 1) << "worker " << i;
      EXPECT_EQ(r.workers, 2);
      EXPECT_FALSE(r.duplicate);
      EXPECT_EQ(r.staleness, 0);
      EXPECT_THAT(r.parameters[0].values, ElementsAre(expected)) << "worker " << i << " step " << k;
    }
  }
  absl::StatusOr<v1::Session> info = client->GetSession(session);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->version(), kSteps);
}

TEST_F(WorkerTest, TwoWorkersStepASyncSessionTogether) {
  RunTwoSyncWorkers(client_.get(), "w-sync", /*stream_second=*/false);
}

TEST_F(WorkerTest, AStreamingAndAUnaryWorkerShareASyncBarrier) {
  RunTwoSyncWorkers(client_.get(), "w-sync-stream", /*stream_second=*/true);
}

TEST_F(WorkerTest, WorkerStreamNumbersStepsAndTracksTheVersion) {
  ASSERT_TRUE(client_->CreateSession("w-stream", BoundedSgd(1, 0), {{"p", {1}, {0}}}).ok());
  Worker other(client_.get(), "w-stream", Named("other"));
  Worker worker(client_.get(), "w-stream", Named("streamer"));
  ASSERT_TRUE(worker.Pull().ok());
  std::unique_ptr<WorkerStream> stream = worker.OpenStream();
  const int64_t first = worker.next_sequence();
  absl::StatusOr<StepResult> r = stream->Step({{"p", {1}, {1}}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sequence, first);
  EXPECT_EQ(worker.version(), 1);

  // Another worker moves the session on: the streamed gradient is stale, refused, and the stream
  // goes on with the version the refusal carried.
  ASSERT_TRUE(other.Pull().ok());
  ASSERT_TRUE(other.Step({{"p", {1}, {1}}}).ok());
  r = stream->Step({{"p", {1}, {1}}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted) << r.status();
  EXPECT_EQ(worker.version(), 2);
  r = stream->Step({{"p", {1}, {1}}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 3);
  EXPECT_EQ(r->sequence, first + 2);

  // The same sequence again on the stream: answered from the first outcome, not applied.
  worker.set_next_sequence(first + 2);
  r = stream->Step({{"p", {1}, {1}}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->duplicate);
  EXPECT_EQ(r->version, 3);
  EXPECT_TRUE(stream->Close().ok());
  EXPECT_EQ(stream->reconnects(), 0);
}

TEST_F(WorkerTest, WorkerStreamReopensAStreamThatFailed) {
  ASSERT_TRUE(client_->CreateSession("w-reopen", Sgd(1), {{"p", {1}, {0}}}).ok());
  Worker worker(client_.get(), "w-reopen", Named("reopen"));
  std::unique_ptr<WorkerStream> stream = worker.OpenStream(absl::Milliseconds(300));
  ASSERT_TRUE(stream->Step({{"p", {1}, {1}}}).ok());
  absl::SleepFor(absl::Milliseconds(500));  // the stream's deadline passes: DEADLINE_EXCEEDED
  absl::StatusOr<StepResult> r = stream->Step({{"p", {1}, {1}}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 2);
  EXPECT_EQ(r->attempts, 2);
  EXPECT_EQ(stream->reconnects(), 1);

  // With no retries allowed, the failure is returned, naming the stream's target and the step.
  absl::SleepFor(absl::Milliseconds(500));
  StepOptions once;
  once.retry = RetryPolicy::None();
  r = stream->Step({{"p", {1}, {1}}}, once);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("of worker reopen, 1 attempt"));
  absl::StatusOr<v1::Session> info = client_->GetSession("w-reopen");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->version(), 2);
}

}  // namespace
}  // namespace client
}  // namespace optd
