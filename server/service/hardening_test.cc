// Hardening (issue #11), one test per class of failure found by trying optd as an adversarial
// user would: each reproduces the failure against a real OptdServer on 127.0.0.1:0 and checks
// that the request is refused with a clear status, that nothing changed, and that the server
// keeps serving.

#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "optd/v1/optd.grpc.pb.h"
#include "server/service/server.h"
#include "wire/wire_dtype.h"

namespace optd {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;

constexpr int64_t kMessageLimit = 4 << 20;  // --max_message_bytes of these servers
constexpr int64_t kMemoryLimit = 32 << 20;  // --max_memory_bytes

v1::Tensor Filled(const std::string& name, std::vector<int64_t> shape, float value,
                  v1::DType dtype = v1::DTYPE_F32) {
  v1::Tensor t;
  t.set_name(name);
  int64_t n = 1;
  for (int64_t d : shape) {
    t.add_shape(d);
    n *= d;
  }
  t.set_dtype(dtype);
  EncodeFloats(static_cast<WireDType>(dtype), std::vector<float>(n, value), t.mutable_data());
  return t;
}

class HardeningTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.max_message_bytes = kMessageLimit;
    options.max_memory_bytes = kMemoryLimit;
    options.store.exactly_once.max_workers = 64;  // the scale case, at a test's scale
    auto server = OptdServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  HardeningTest() {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    channel_ = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(server_->port()),
                                         grpc::InsecureChannelCredentials(), args);
    stub_ = v1::Optimizer::NewStub(channel_);
  }

  void TearDown() override {
    for (const auto& s : server_->store().List("", 1000)) (void)server_->store().Delete(s->id());
  }

  grpc::Status Create(const std::string& id, std::vector<v1::Tensor> tensors,
                      const std::string& optimizer = "sgd") {
    v1::CreateSessionRequest req;
    req.set_session_id(id);
    if (optimizer == "adam") {
      req.mutable_config()->mutable_optimizer()->mutable_adam();
    } else {
      req.mutable_config()->mutable_optimizer()->mutable_sgd()->set_lr(0.5);
    }
    for (v1::Tensor& t : tensors) *req.add_tensors() = std::move(t);
    grpc::ClientContext ctx;
    v1::Session out;
    return stub_->CreateSession(&ctx, req, &out);
  }

  int64_t Version(const std::string& id) {
    v1::GetSessionRequest req;
    req.set_session_id(id);
    v1::Session out;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub_->GetSession(&ctx, req, &out).ok());
    return out.version();
  }

  grpc::Status Step(const v1::StepRequest& req, v1::StepResponse* out,
                    std::multimap<std::string, std::string>* trailers = nullptr) {
    grpc::ClientContext ctx;
    grpc::Status s = stub_->Step(&ctx, req, out);
    if (trailers != nullptr) {
      for (const auto& [key, value] : ctx.GetServerTrailingMetadata()) {
        trailers->emplace(std::string(key.data(), key.size()),
                          std::string(value.data(), value.size()));
      }
    }
    return s;
  }

  static OptdServer* server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Optimizer::Stub> stub_;
};

OptdServer* HardeningTest::server_ = nullptr;

// Class 1: a 10 KB Pull that names the same rows again and again asked the server to gather
// gigabytes. Now its reply is bounded before anything is gathered.
TEST_F(HardeningTest, APullWhoseReplyWouldExceedTheLimitIsRefusedBeforeGathering) {
  std::vector<v1::Tensor> tensors;
  for (int i = 0; i < 16; ++i) tensors.push_back(Filled("t" + std::to_string(i), {2, 16384}, 1));
  ASSERT_TRUE(Create("rows", std::move(tensors)).ok());
  v1::PullRequest pull;
  pull.set_session_id("rows");
  for (int i = 0; i < 16; ++i) {
    pull.add_names("t" + std::to_string(i));
    v1::TensorRows* rows = pull.add_rows();
    rows->set_name("t" + std::to_string(i));
    for (int r = 0; r < 513; ++r) rows->add_indices(0);
  }
  EXPECT_LT(pull.ByteSizeLong(), 20000u);
  const int64_t before = server_->budget().in_use();
  v1::PullResponse out;
  grpc::ClientContext ctx;
  grpc::Status s = stub_->Pull(&ctx, pull, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("nothing was gathered"));
  EXPECT_THAT(s.error_message(), HasSubstr(std::to_string(kMessageLimit)));
  EXPECT_EQ(server_->budget().in_use(), before);
  // A Pull that fits is served.
  v1::PullRequest small;
  small.set_session_id("rows");
  small.add_names("t3");
  grpc::ClientContext ctx2;
  ASSERT_TRUE(stub_->Pull(&ctx2, small, &out).ok());
  EXPECT_THAT(out.tensors(), SizeIs(1));
}

// Class 3: a step whose reply could not be sent was applied anyway and its retry failed again.
// Now it is refused before anything changes; on a stream, the stream goes on.
TEST_F(HardeningTest, AStepWhoseReplyWouldExceedTheLimitIsNotApplied) {
  // 1.5M parameters: a 3 MB BF16 gradient fits, the 6 MB F32 reply would not.
  ASSERT_TRUE(Create("big", {Filled("w", {1500000}, 0, v1::DTYPE_BF16)}).ok());
  v1::StepRequest req;
  req.set_session_id("big");
  *req.add_gradients() = Filled("w", {1500000}, 1, v1::DTYPE_BF16);
  v1::StepResponse out;
  grpc::Status s = Step(req, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("nothing was done"));
  EXPECT_EQ(Version("big"), 0);

  grpc::ClientContext ctx;
  auto stream = stub_->StreamSteps(&ctx);
  v1::StreamStepsResponse reply;
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&reply));
  ASSERT_TRUE(reply.has_error());
  EXPECT_EQ(reply.error().code(), static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  // The same stream answers the next request, which asks for a reply that fits.
  req.set_return_dtype(v1::DTYPE_BF16);
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&reply));
  ASSERT_TRUE(reply.has_reply()) << reply.error().message();
  EXPECT_EQ(reply.reply().version(), 1);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

// Class 2: the memory budget. A session whose parameters and optimizer state would not fit is
// refused with the numbers; one that fits is served and reports its memory.
TEST_F(HardeningTest, SessionsBeyondTheMemoryBudgetAreRefusedWithTheNumbers) {
  // 2M parameters of Adam: 8 MB of parameters + 16 MB of state, twice = 48 MB > 32 MB.
  auto w = [] { return Filled("w", {1000, 2000}, 0, v1::DTYPE_BF16); };
  ASSERT_TRUE(Create("a1", {w()}, "adam").ok());
  grpc::Status s = Create("a2", {w()}, "adam");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("session a2 (2000000 parameters and 8 bytes of "
                                           "optimizer state per parameter) needs 24000000 bytes"));
  EXPECT_THAT(s.error_message(), HasSubstr("memory budget of 33554432 bytes"));
  v1::GetSessionRequest get;
  get.set_session_id("a1");
  v1::Session info;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->GetSession(&ctx, get, &info).ok());
  EXPECT_EQ(info.memory().parameter_bytes(), 8000000);
  EXPECT_EQ(info.memory().optimizer_state_bytes(), 0);  // no step yet
  EXPECT_EQ(info.memory().reserved_state_bytes(), 16000000);
  EXPECT_GE(info.memory().total_bytes(), 24000000);
  // Deleting a1 gives its memory back: a2 fits now.
  grpc::ClientContext del;
  v1::DeleteSessionRequest d;
  d.set_session_id("a1");
  v1::DeleteSessionResponse deleted;
  ASSERT_TRUE(stub_->DeleteSession(&del, d, &deleted).ok());
  EXPECT_TRUE(Create("a2", {w()}, "adam").ok());
}

// Class 4: exactly-once at scale. A worker's step, then more other workers than the session
// remembers, then the first worker's retry: refused (never applied a second time).
TEST_F(HardeningTest, ARetryAfterTheWorkerWasForgottenIsNeverAppliedTwice) {
  ASSERT_TRUE(Create("many", {Filled("w", {4}, 0)}).ok());
  auto keyed = [](const std::string& worker, int64_t sequence) {
    v1::StepRequest req;
    req.set_session_id("many");
    req.set_worker_id(worker);
    req.set_sequence(sequence);
    req.set_return_parameters(v1::RETURN_PARAMETERS_NONE);
    *req.add_gradients() = Filled("w", {4}, 1);
    return req;
  };
  v1::StepResponse out;
  ASSERT_TRUE(Step(keyed("first", 7), &out).ok());
  for (int w = 0; w < 64; ++w) ASSERT_TRUE(Step(keyed("w" + std::to_string(w), 1), &out).ok());
  EXPECT_EQ(Version("many"), 65);
  std::multimap<std::string, std::string> trailers;
  grpc::Status retry = Step(keyed("first", 7), &out, &trailers);
  EXPECT_EQ(retry.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << retry.error_message();
  EXPECT_EQ(trailers.count("optd-rejoin"), 1u);
  EXPECT_EQ(Version("many"), 65);  // not applied again
}

// Worker restarts: a new process with the same worker id joins, and its first steps are applied
// (not swallowed as duplicates of the old process's); the old incarnation's late retry is refused.
TEST_F(HardeningTest, ARestartedWorkerJoinsAgainAndIsNotMistakenForItsPredecessor) {
  ASSERT_TRUE(Create("restart", {Filled("w", {4}, 0)}).ok());
  auto join = [&] {
    v1::JoinSessionRequest req;
    req.set_session_id("restart");
    req.set_worker_id("w1");
    v1::JoinSessionResponse out;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub_->JoinSession(&ctx, req, &out).ok());
    EXPECT_EQ(out.next_sequence(), 1);
    return out.worker_incarnation();
  };
  auto step = [](int64_t incarnation, int64_t sequence) {
    v1::StepRequest req;
    req.set_session_id("restart");
    req.set_worker_id("w1");
    req.set_worker_incarnation(incarnation);
    req.set_sequence(sequence);
    *req.add_gradients() = Filled("w", {4}, 1);
    return req;
  };
  const int64_t first = join();
  v1::StepResponse out;
  for (int64_t seq = 1; seq <= 3; ++seq) ASSERT_TRUE(Step(step(first, seq), &out).ok());
  const int64_t second = join();  // the process restarted
  ASSERT_TRUE(Step(step(second, 1), &out).ok());
  EXPECT_FALSE(out.duplicate());
  EXPECT_EQ(out.version(), 4);
  std::multimap<std::string, std::string> trailers;
  grpc::Status late = Step(step(first, 3), &out, &trailers);
  EXPECT_EQ(late.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(late.error_message(), HasSubstr("superseded"));
  EXPECT_EQ(trailers.count("optd-rejoin"), 1u);
  EXPECT_EQ(Version("restart"), 4);
}

// Class 5: SYNC sums overflowed float32 and set the parameters to -inf. Now the mean of two
// 2e38 gradients is 2e38, and a sum beyond float32 fails the barrier with nothing applied.
TEST_F(HardeningTest, SyncReductionsDoNotOverflow) {
  for (const bool sum : {false, true}) {
    SCOPED_TRACE(sum ? "REDUCE_SUM" : "REDUCE_MEAN");
    v1::CreateSessionRequest create;
    create.set_session_id("sync");
    create.mutable_config()->mutable_optimizer()->mutable_sgd()->set_lr(1e-38);
    v1::Consistency* c = create.mutable_config()->mutable_consistency();
    c->set_mode(v1::Consistency::MODE_SYNC);
    c->set_workers(2);
    if (sum) c->set_reduce(v1::Consistency::REDUCE_SUM);
    *create.add_tensors() = Filled("w", {2}, 0);
    grpc::ClientContext cctx;
    v1::Session created;
    ASSERT_TRUE(stub_->CreateSession(&cctx, create, &created).ok());
    std::vector<grpc::Status> status(2);
    std::vector<v1::StepResponse> out(2);
    std::vector<std::thread> workers;
    for (int w = 0; w < 2; ++w) {
      workers.emplace_back([&, w] {
        v1::StepRequest req;
        req.set_session_id("sync");
        req.set_worker_id("w" + std::to_string(w));
        req.set_version(0);
        *req.add_gradients() = Filled("w", {2}, 2e38f);
        status[w] = Step(req, &out[w]);
      });
    }
    for (std::thread& t : workers) t.join();
    if (sum) {
      EXPECT_EQ(status[0].error_code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_THAT(status[0].error_message(), HasSubstr("beyond float32"));
      EXPECT_EQ(Version("sync"), 0);
    } else {
      ASSERT_TRUE(status[0].ok()) << status[0].error_message();
      std::vector<float> w(2);
      std::memcpy(w.data(), out[0].parameters(0).data().data(), 8);
      EXPECT_FLOAT_EQ(w[0], -2.0f);  // 0 - 1e-38 * 2e38
    }
    grpc::ClientContext dctx;
    v1::DeleteSessionRequest d;
    d.set_session_id("sync");
    v1::DeleteSessionResponse deleted;
    ASSERT_TRUE(stub_->DeleteSession(&dctx, d, &deleted).ok());
  }
}

// Class 6: bytes that are no message got UNIMPLEMENTED "" from every typed method.
TEST_F(HardeningTest, UnparsableBytesAreInvalidArgumentOnEveryMethod) {
  grpc::GenericStub generic(channel_);
  const std::string garbage = "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01";
  for (const char* method : {"CreateSession", "GetSession", "ListSessions", "UpdateSession",
                             "DeleteSession", "Pull", "Step", "JoinSession"}) {
    SCOPED_TRACE(method);
    grpc::ClientContext ctx;
    grpc::Slice slice(garbage.data(), garbage.size());
    grpc::ByteBuffer request(&slice, 1), response;
    grpc::Status status;
    absl::Notification done;
    generic.UnaryCall(&ctx, absl::StrCat("/optd.v1.Optimizer/", method), grpc::StubOptions(),
                      &request, &response, [&](grpc::Status s) {
                        status = std::move(s);
                        done.Notify();
                      });
    done.WaitForNotification();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("is not a valid optd.v1."));
  }
}

// Class 7: a 100 KB session id or a 1 MB tensor name was echoed whole, and the client saw only
// "received initial metadata size exceeds limit". Errors quote a short prefix.
TEST_F(HardeningTest, LongBadValuesAreQuotedShortSoTheErrorArrives) {
  v1::GetSessionRequest get;
  get.set_session_id(std::string(100000, 's'));
  v1::Session out;
  grpc::ClientContext ctx;
  grpc::Status s = stub_->GetSession(&ctx, get, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_LT(s.error_message().size(), 300u);
  EXPECT_THAT(s.error_message(), HasSubstr("(100000 bytes)"));

  grpc::Status c = Create("named", {Filled(std::string(1 << 20, 'n'), {2}, 0)});
  EXPECT_EQ(c.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LT(c.error_message().size(), 300u);
  EXPECT_THAT(c.error_message(), HasSubstr("(1048576 bytes)"));
}

// Class 8: a second server on the same port started too (SO_REUSEPORT), and clients alternated
// between two sets of sessions.
TEST_F(HardeningTest, ASecondServerOnTheSamePortRefusesToStart) {
  ServerOptions options;
  options.listen = "127.0.0.1:" + std::to_string(server_->port());
  absl::StatusOr<std::unique_ptr<OptdServer>> second = OptdServer::Start(options);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr("another process"));
}

}  // namespace
}  // namespace optd
