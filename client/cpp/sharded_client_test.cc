// Sharded sessions from C++ (sharded_client.h, sharded_worker.h): three real optd servers (in
// process, on 127.0.0.1:0) hold the shards and a fourth holds the same sessions whole; the
// sharded results are the whole server's bits.

#include "client/cpp/sharded_client.h"

#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/cpp/client_testing.h"
#include "client/cpp/sharded_worker.h"
#include "client/cpp/worker.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/service/server.h"

namespace optd {
namespace client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::SizeIs;

// emb (16000 elements) is split into three row ranges; the rest stay whole.
constexpr int64_t kSplit = 4096;

const std::vector<std::pair<std::string, std::vector<int64_t>>>& Shapes() {
  static const auto* shapes = new std::vector<std::pair<std::string, std::vector<int64_t>>>{
      {"emb", {1000, 16}}, {"w1", {16, 32}}, {"b1", {32}}, {"w2", {32, 4}}, {"b2", {4}}};
  return *shapes;
}

std::vector<HostTensor> Random(uint32_t seed, float scale) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal;
  std::vector<HostTensor> out;
  for (const auto& [name, shape] : Shapes()) {
    HostTensor t{name, shape, {}};
    t.values.resize(t.num_elements());
    for (float& v : t.values) v = scale * normal(gen);
    out.push_back(std::move(t));
  }
  return out;
}

std::vector<HostTensor> Model() { return Random(7, 1.0f); }
std::vector<HostTensor> Gradients(int step, int worker = 0) {
  return Random(1000 * step + worker + 1, 0.1f);
}

v1::SessionConfig AdamConfig() {
  v1::SessionConfig config;
  config.mutable_optimizer()->mutable_adam()->set_lr(1e-2);
  config.mutable_optimizer()->mutable_adam()->set_weight_decay(0.01);
  return config;
}

v1::SessionConfig SyncAdam(int workers) {
  v1::SessionConfig config = AdamConfig();
  config.mutable_consistency()->set_mode(v1::Consistency::MODE_SYNC);
  config.mutable_consistency()->set_workers(workers);
  config.mutable_consistency()->set_barrier_timeout_seconds(30);
  return config;
}

WorkerOptions Named(std::string id) {
  WorkerOptions options;
  options.worker_id = std::move(id);
  options.version = 0;  // a new session's
  return options;
}

// Bit-for-bit equality of two lists of tensors (names, shapes, rows, values).
void ExpectSameBits(const std::vector<HostTensor>& a, const std::vector<HostTensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(a[i].shape, b[i].shape) << a[i].name;
    EXPECT_EQ(a[i].rows, b[i].rows) << a[i].name;
    ASSERT_EQ(a[i].values.size(), b[i].values.size()) << a[i].name;
    EXPECT_EQ(
        0, std::memcmp(a[i].values.data(), b[i].values.data(), a[i].values.size() * sizeof(float)))
        << a[i].name;
  }
}

class ShardedTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    for (int i = 0; i < 4; ++i) {  // three shards and one whole server
      ServerOptions options;
      options.listen = "127.0.0.1:0";
      absl::StatusOr<std::unique_ptr<OptdServer>> server = OptdServer::Start(options);
      ASSERT_TRUE(server.ok()) << server.status();
      servers_->push_back(*std::move(server));
    }
  }

  static void TearDownTestSuite() {
    for (std::unique_ptr<OptdServer>& s : *servers_) s->Shutdown(absl::Now() + absl::Seconds(5));
    servers_->clear();
  }

  static std::string Address(int i) { return absl::StrCat("127.0.0.1:", (*servers_)[i]->port()); }
  static std::vector<std::string> ShardAddresses() { return {Address(0), Address(1), Address(2)}; }

  void SetUp() override {
    ASSERT_THAT(*servers_, SizeIs(4));
    absl::StatusOr<std::unique_ptr<ShardedClient>> sharded =
        ShardedClient::Connect(ShardAddresses());
    ASSERT_TRUE(sharded.ok()) << sharded.status();
    sharded_ = *std::move(sharded);
    absl::StatusOr<std::unique_ptr<Client>> whole = Client::Connect(Address(3));
    ASSERT_TRUE(whole.ok()) << whole.status();
    whole_ = *std::move(whole);
  }

  ShardedSession Create(const std::string& id, const v1::SessionConfig& config) {
    ShardedCreateOptions options;
    options.split_min_elements = kSplit;
    absl::StatusOr<ShardedSession> session = sharded_->CreateSession(id, config, Model(), options);
    EXPECT_TRUE(session.ok()) << session.status();
    EXPECT_TRUE(whole_->CreateSession(id, config, Model()).ok());
    return session.ok() ? *std::move(session) : ShardedSession{};
  }

  static inline std::vector<std::unique_ptr<OptdServer>>* servers_ =
      new std::vector<std::unique_ptr<OptdServer>>();
  std::unique_ptr<ShardedClient> sharded_;
  std::unique_ptr<Client> whole_;
};

TEST_F(ShardedTest, TheServerPlansRowRangesForTheLargeTensorAndBalancesTheRest) {
  ShardedCreateOptions options;
  options.split_min_elements = kSplit;
  absl::StatusOr<v1::Placement> placement = sharded_->PlanPlacement(AdamConfig(), Model(), options);
  ASSERT_TRUE(placement.ok()) << placement.status();
  std::vector<std::string> emb;
  for (const v1::PlacedSlice& s : placement->slices()) {
    if (s.tensor() == "emb") emb.push_back(absl::StrCat(s.name(), "@", s.shard()));
  }
  EXPECT_THAT(emb, ElementsAre("emb:rows:0:333@0", "emb:rows:333:666@1", "emb:rows:666:1000@2"));
  absl::StatusOr<ShardSlices> slices = ShardSlices::FromPlacement(*placement);
  ASSERT_TRUE(slices.ok()) << slices.status();
  EXPECT_THAT(slices->tensor_names(), ElementsAre("emb", "w1", "b1", "w2", "b2"));
}

TEST_F(ShardedTest, OneAsyncWorkerGivesTheBitsOfOneServer) {
  ShardedSession session = Create("one-worker", AdamConfig());
  ASSERT_EQ(session.num_shards(), 3);
  ShardedWorker worker(sharded_.get(), session, Named("w0"));
  Worker single(whole_.get(), "one-worker", Named("w0"));
  absl::StatusOr<ShardedStepResult> r;
  absl::StatusOr<StepResult> s;
  for (int step = 0; step < 8; ++step) {
    StepOptions options;
    options.loss = 1.0;
    r = worker.Step(Gradients(step), options);
    ASSERT_TRUE(r.ok()) << r.status();
    s = single.Step(Gradients(step), options);
    ASSERT_TRUE(s.ok()) << s.status();
  }
  EXPECT_EQ(r->merged.version, 8);
  EXPECT_EQ(session.placement.checkpoint_every_versions(), 100);  // the default
  EXPECT_THAT(r->shard_versions, ElementsAre(8, 8, 8));
  EXPECT_THAT(r->shard_sequences, ElementsAre(8, 8, 8));
  EXPECT_TRUE(r->versions_agree());
  EXPECT_FALSE(r->merged.duplicate);
  EXPECT_NEAR(r->merged.gradient_norm, s->gradient_norm, 1e-4 * s->gradient_norm);
  ExpectSameBits(r->merged.parameters, s->parameters);
  EXPECT_EQ(worker.version(), 8);

  absl::StatusOr<ShardedPullResult> pulled = worker.Pull();
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(pulled->merged.version, 8);
  ExpectSameBits(pulled->merged.tensors, s->parameters);
  ASSERT_TRUE(worker.DeleteSession().ok());
  EXPECT_EQ(sharded_->client(1)->GetSession("one-worker").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(ShardedTest, TwoSyncWorkersGiveTheBitsOfOneServer) {
  ShardedSession session = Create("sync-two", SyncAdam(2));
  constexpr int kSteps = 4;
  std::vector<absl::Status> failures(4);
  std::vector<std::vector<HostTensor>> last(4);
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {  // sharded worker w
      WorkerOptions options;       // the version from the session
      options.worker_id = absl::StrCat("worker-", w);
      ShardedWorker worker(sharded_.get(), session, options);
      worker.Join().IgnoreError();
      for (int step = 0; step < kSteps; ++step) {
        absl::StatusOr<ShardedStepResult> r = worker.Step(Gradients(step, w));
        if (!r.ok()) {
          failures[w] = r.status();
          return;
        }
        if (r->merged.version != step + 1 || r->merged.workers != 2) {
          failures[w] = absl::InternalError(absl::StrCat("version ", r->merged.version));
        }
        last[w] = r->merged.parameters;
      }
    });
    threads.emplace_back([&, w] {  // the same worker on the whole server
      Worker worker(whole_.get(), "sync-two", Named(absl::StrCat("worker-", w)));
      for (int step = 0; step < kSteps; ++step) {
        absl::StatusOr<StepResult> r = worker.Step(Gradients(step, w));
        if (!r.ok()) {
          failures[2 + w] = r.status();
          return;
        }
        last[2 + w] = r->parameters;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const absl::Status& f : failures) ASSERT_TRUE(f.ok()) << f;
  ExpectSameBits(last[0], last[2]);
  ExpectSameBits(last[1], last[2]);
  ExpectSameBits(last[3], last[2]);
}

TEST_F(ShardedTest, RowSparseGradientsAreCutByRowsAndTouchedRowsComeBackWhole) {
  v1::SessionConfig config = AdamConfig();  // SparseAdam: no weight decay
  config.mutable_optimizer()->mutable_adam()->clear_weight_decay();
  ShardedSession session = Create("sparse", config);
  ShardedWorker worker(sharded_.get(), session, Named("w0"));
  Worker single(whole_.get(), "sparse", Named("w0"));
  std::vector<HostTensor> grads = Gradients(0);
  // Rows of emb on shards 0 and 2 (332 and 998 and 5 twice: summed), none on shard 1.
  const std::vector<int64_t> rows = {998, 5, 332, 5};
  std::vector<float> values(rows.size() * 16);
  for (size_t i = 0; i < values.size(); ++i) values[i] = 0.01f * static_cast<float>(i % 37);
  grads[0] = RowSparse("emb", {1000, 16}, rows, values);
  StepOptions options;
  options.return_parameters = v1::RETURN_PARAMETERS_TOUCHED;
  absl::StatusOr<ShardedStepResult> r = worker.Step(grads, options);
  ASSERT_TRUE(r.ok()) << r.status();
  absl::StatusOr<StepResult> s = single.Step(grads, options);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(r->merged.parameters[0].name, "emb");
  ASSERT_TRUE(r->merged.parameters[0].rows.has_value());
  EXPECT_THAT(*r->merged.parameters[0].rows, ElementsAre(5, 332, 998));
  EXPECT_EQ(r->merged.parameters[0].shape, (std::vector<int64_t>{1000, 16}));
  ExpectSameBits(r->merged.parameters, s->parameters);

  // The whole model after the step, and some rows in the order asked.
  absl::StatusOr<ShardedPullResult> all = worker.Pull();
  absl::StatusOr<PullResult> all_single = whole_->Pull("sparse");
  ASSERT_TRUE(all.ok() && all_single.ok()) << all.status() << all_single.status();
  ExpectSameBits(all->merged.tensors, all_single->tensors);
  PullOptions some;
  some.names = {"b2", "emb"};
  some.rows = {{"emb", {999, 0, 500, 333}}};
  absl::StatusOr<ShardedPullResult> part = worker.Pull(some);
  absl::StatusOr<PullResult> part_single = whole_->Pull("sparse", some);
  ASSERT_TRUE(part.ok() && part_single.ok()) << part.status() << part_single.status();
  ASSERT_THAT(part->merged.tensors, SizeIs(2));
  EXPECT_EQ(part->merged.tensors[0].name, "emb");  // model order
  EXPECT_THAT(*part->merged.tensors[0].rows, ElementsAre(999, 0, 500, 333));
  for (const HostTensor& t : part_single->tensors) {
    const HostTensor& mine = part->merged.tensors[t.name == "emb" ? 0 : 1];
    ExpectSameBits({mine}, {t});
  }
  // Rows of emb on shards 0 and 2 only: shard 1 is not asked.
  PullOptions two_shards;
  two_shards.names = {"emb"};
  two_shards.rows = {{"emb", {999, 0, 998}}};
  absl::StatusOr<ShardedPullResult> rows_pulled = worker.Pull(two_shards);
  ASSERT_TRUE(rows_pulled.ok()) << rows_pulled.status();
  EXPECT_THAT(rows_pulled->shard_versions, ElementsAre(1, -1, 1));
  EXPECT_THAT(*rows_pulled->merged.tensors[0].rows, ElementsAre(999, 0, 998));
}

TEST_F(ShardedTest, AttachingWithTheAddressesInAnotherOrderFindsEveryShard) {
  ShardedSession created = Create("attach", AdamConfig());
  ShardedWorker first(sharded_.get(), created, Named("a"));
  ASSERT_TRUE(first.Step(Gradients(0)).ok());

  absl::StatusOr<std::unique_ptr<ShardedClient>> reversed =
      ShardedClient::Connect({Address(2), Address(0), Address(1)});
  ASSERT_TRUE(reversed.ok()) << reversed.status();
  absl::StatusOr<ShardedSession> attached = (*reversed)->Attach("attach");
  ASSERT_TRUE(attached.ok()) << attached.status();
  EXPECT_THAT(attached->client_of_shard, ElementsAre(1, 2, 0));
  EXPECT_EQ(attached->fingerprint(), created.fingerprint());
  EXPECT_EQ((*reversed)->ShardAddress(*attached, 0), Address(0));

  ShardedWorker second(reversed->get(), *attached, Named("b"));
  absl::StatusOr<ShardedStepResult> r = second.Step(Gradients(1));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->merged.version, 2);
  absl::StatusOr<ShardedPullResult> a = first.Pull();
  ASSERT_TRUE(a.ok()) << a.status();
  ExpectSameBits(a->merged.tensors, r->merged.parameters);
}

TEST_F(ShardedTest, AShardRefusesAStepNamingAnotherPlacementOrNone) {
  ShardedSession session = Create("fingerprint", AdamConfig());
  absl::StatusOr<std::vector<std::vector<HostTensor>>> parts = session.slices->Split(Gradients(0));
  ASSERT_TRUE(parts.ok()) << parts.status();
  Client* shard0 = sharded_->ShardClient(session, 0);
  StepOptions options;
  options.placement_fingerprint = session.fingerprint() ^ 1;
  absl::StatusOr<StepResult> wrong = shard0->Step("fingerprint", (*parts)[0], options);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kFailedPrecondition) << wrong.status();
  options.placement_fingerprint = 0;
  absl::StatusOr<StepResult> none = shard0->Step("fingerprint", (*parts)[0], options);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition) << none.status();
  absl::StatusOr<PullResult> pulled = shard0->Pull("fingerprint");
  ASSERT_TRUE(pulled.ok());
  EXPECT_EQ(pulled->version, 0);  // nothing applied
}

TEST_F(ShardedTest, SyncShardsAnsweringDifferentVersionsAreAnError) {
  ShardedSession created = Create("diverged", SyncAdam(1));
  // Shard 0 alone steps once (as a shard restored from another checkpoint would be off by one).
  absl::StatusOr<std::vector<std::vector<HostTensor>>> parts = created.slices->Split(Gradients(0));
  ASSERT_TRUE(parts.ok()) << parts.status();
  StepOptions alone;
  alone.worker_id = "alone";
  alone.version = 0;
  alone.placement_fingerprint = created.fingerprint();
  ASSERT_TRUE(sharded_->ShardClient(created, 0)->Step("diverged", (*parts)[0], alone).ok());

  absl::StatusOr<ShardedSession> attached = sharded_->Attach("diverged");
  ASSERT_TRUE(attached.ok()) << attached.status();
  WorkerOptions options;  // each shard's worker at its shard's version: 1, 0, 0
  options.worker_id = "w";
  ShardedWorker worker(sharded_.get(), *attached, options);
  absl::StatusOr<ShardedStepResult> r = worker.Step(Gradients(1));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr(absl::StrCat("shard 0 (", Address(0), ") at 2")));
  EXPECT_THAT(r.status().message(), HasSubstr(absl::StrCat("shard 1 (", Address(1), ") at 1")));
}

TEST_F(ShardedTest, BadAddressesAreRefusedBeforeAnyCall) {
  absl::StatusOr<std::unique_ptr<ShardedClient>> one = ShardedClient::Connect({Address(0)});
  EXPECT_EQ(one.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(one.status().message(), HasSubstr("at least two"));
  absl::StatusOr<std::unique_ptr<ShardedClient>> twice =
      ShardedClient::Connect({Address(0), Address(1), Address(0)});
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(twice.status().message(), HasSubstr("is repeated"));

  EXPECT_EQ(ResolveShards("localhost", 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveShards("no-such-host.invalid", 50051).status().code(),
            absl::StatusCode::kInvalidArgument);
  // 127.0.0.1 is one address: too few for a sharded session.
  absl::StatusOr<std::vector<std::string>> single = ResolveShards("127.0.0.1", 50051);
  EXPECT_EQ(single.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(single.status().message(), HasSubstr("127.0.0.1:50051"));
}

TEST_F(ShardedTest, AttachingRefusesUnknownUnshardedAndIncompleteSessions) {
  absl::StatusOr<ShardedSession> unknown = sharded_->Attach("no-such-session");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown.status().message(), HasSubstr(Address(0)));

  for (int i = 0; i < 3; ++i) {  // one ordinary session of the same id on each server
    ASSERT_TRUE(sharded_->client(i)->CreateSession("plain", AdamConfig(), Model()).ok());
  }
  absl::StatusOr<ShardedSession> plain = sharded_->Attach("plain");
  EXPECT_EQ(plain.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(plain.status().message(), HasSubstr("not sharded"));

  Create("three", AdamConfig());
  absl::StatusOr<std::unique_ptr<ShardedClient>> two =
      ShardedClient::Connect({Address(0), Address(1)});
  ASSERT_TRUE(two.ok());
  absl::StatusOr<ShardedSession> incomplete = (*two)->Attach("three");
  EXPECT_EQ(incomplete.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(incomplete.status().message(), HasSubstr("of 3"));
}

TEST_F(ShardedTest, ACreateAShardRefusesIsUndoneOnTheOthers) {
  ASSERT_TRUE(sharded_->client(2)->CreateSession("taken", AdamConfig(), Model()).ok());
  ShardedCreateOptions options;
  options.split_min_elements = kSplit;
  absl::StatusOr<ShardedSession> s =
      sharded_->CreateSession("taken", AdamConfig(), Model(), options);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(s.status().message(), HasSubstr("shard 2 (" + Address(2) + ")"));
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(sharded_->client(i)->GetSession("taken").status().code(),
              absl::StatusCode::kNotFound);
  }
  EXPECT_EQ(sharded_->CreateSession("", AdamConfig(), Model()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ShardedTest, GradientsThatDoNotFitThePlacementAreRefusedBeforeAnyCall) {
  ShardedSession session = Create("bad-grads", AdamConfig());
  ShardedWorker worker(sharded_.get(), session);
  std::vector<HostTensor> grads = Gradients(0);
  grads.pop_back();
  absl::StatusOr<ShardedStepResult> missing = worker.Step(grads);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(missing.status().message(), HasSubstr("lack [b2]"));
  grads = Gradients(0);
  grads[1].shape = {32, 16};
  absl::StatusOr<ShardedStepResult> shape = worker.Step(grads);
  EXPECT_EQ(shape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(shape.status().message(), HasSubstr("w1 has shape [32, 16]"));
  EXPECT_FALSE(worker.shard_worker(0).joined());  // no call was made
}

}  // namespace
}  // namespace client
}  // namespace optd
