// Service tests: a real OptdServer on 127.0.0.1:0, called through generated stubs. One TEST per RPC
// behaviour and per error code the contract names.

#include "server/service/optimizer_service.h"

#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "server/service/message_bytes.h"
#include "server/service/server.h"
#include "wire/wire_dtype.h"

namespace optd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

v1::Tensor F32(const std::string& name, std::vector<int64_t> shape, std::vector<float> values) {
  v1::Tensor t;
  t.set_name(name);
  for (int64_t d : shape) t.add_shape(d);
  t.set_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4));
  return t;
}

std::vector<float> Values(const v1::Tensor& t) {
  EXPECT_EQ(t.dtype(), v1::DTYPE_F32);
  std::vector<float> v(t.data().size() / 4);
  std::memcpy(v.data(), t.data().data(), t.data().size());
  return v;
}

class OptimizerServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.store.max_sessions = 64;
    auto server = OptdServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  OptimizerServiceTest()
      : channel_(grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                                     grpc::InsecureChannelCredentials())),
        stub_(v1::Optimizer::NewStub(channel_)) {}

  void TearDown() override {
    // Each test starts from an empty store.
    for (const auto& s : server_->store().List("", 1000)) (void)server_->store().Delete(s->id());
  }

  // Creates session `id` with an SGD(lr) optimizer over w = [1, 2] and b = [3].
  v1::Session CreateSgd(const std::string& id, double lr = 0.5) {
    v1::CreateSessionRequest req;
    req.set_session_id(id);
    req.mutable_config()->mutable_optimizer()->mutable_sgd()->set_lr(lr);
    *req.add_tensors() = F32("w", {2}, {1, 2});
    *req.add_tensors() = F32("b", {1}, {3});
    v1::Session out;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->CreateSession(&ctx, req, &out);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return out;
  }

  // Every tensor of session `id`.
  v1::PullResponse PullAll(const std::string& id) {
    v1::PullRequest pull;
    pull.set_session_id(id);
    v1::PullResponse pulled;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->Pull(&ctx, pull, &pulled);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return pulled;
  }

  v1::StepRequest StepRequest(const std::string& id, float gw, float gb) {
    v1::StepRequest req;
    req.set_session_id(id);
    *req.add_gradients() = F32("w", {2}, {gw, gw});
    *req.add_gradients() = F32("b", {1}, {gb});
    return req;
  }

  grpc::Status Step(const v1::StepRequest& req, v1::StepResponse* out) {
    grpc::ClientContext ctx;
    return stub_->Step(&ctx, req, out);
  }

  grpc::Status Create(const v1::CreateSessionRequest& req) {
    grpc::ClientContext ctx;
    v1::Session out;
    return stub_->CreateSession(&ctx, req, &out);
  }

  static OptdServer* server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Optimizer::Stub> stub_;
};

OptdServer* OptimizerServiceTest::server_ = nullptr;

TEST_F(OptimizerServiceTest, CreateSessionFillsInTorchDefaults) {
  v1::CreateSessionRequest req;
  req.set_session_id("adam");
  req.mutable_config()->mutable_optimizer()->mutable_adam()->set_lr(0.01);
  *req.add_tensors() = F32("w", {2, 2}, {1, 2, 3, 4});
  v1::Session out;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->CreateSession(&ctx, req, &out).ok());
  EXPECT_EQ(out.session_id(), "adam");
  const v1::Adam& adam = out.config().optimizer().adam();
  EXPECT_DOUBLE_EQ(adam.lr(), 0.01);
  EXPECT_DOUBLE_EQ(adam.beta1(), 0.9);
  EXPECT_DOUBLE_EQ(adam.beta2(), 0.999);
  EXPECT_DOUBLE_EQ(adam.eps(), 1e-8);
  EXPECT_FALSE(adam.amsgrad());
  EXPECT_EQ(out.version(), 0);
  EXPECT_EQ(out.num_parameters(), 4);
  EXPECT_EQ(out.parameter_bytes(), 16);
  EXPECT_EQ(out.state_bytes_per_parameter(), 8);
  EXPECT_GT(out.create_time_seconds(), 1.7e9);
}

TEST_F(OptimizerServiceTest, CreateSessionWithoutIdGeneratesOne) {
  v1::CreateSessionRequest req;
  req.mutable_config()->mutable_optimizer()->mutable_adagrad();
  *req.add_tensors() = F32("w", {1}, {1});
  v1::Session out;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->CreateSession(&ctx, req, &out).ok());
  EXPECT_THAT(out.session_id(), ::testing::StartsWith("s-"));
  EXPECT_DOUBLE_EQ(out.config().optimizer().adagrad().eps(), 1e-10);
}

TEST_F(OptimizerServiceTest, DuplicateSessionIsAlreadyExists) {
  CreateSgd("dup");
  v1::CreateSessionRequest req;
  req.set_session_id("dup");
  req.mutable_config()->mutable_optimizer()->mutable_adam();
  *req.add_tensors() = F32("w", {1}, {1});
  grpc::Status s = Create(req);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(s.error_message(), HasSubstr("dup"));
}

TEST_F(OptimizerServiceTest, InvalidCreateRequestsNameTheFieldAndRange) {
  struct Case {
    std::function<void(v1::CreateSessionRequest*)> mutate;
    const char* message;
  };
  std::vector<Case> cases = {
      {[](auto* r) { r->mutable_config()->clear_optimizer(); }, "config.optimizer is not set"},
      {[](auto* r) { r->mutable_config()->mutable_optimizer()->mutable_sgd(); },
       "config.optimizer.sgd.lr is required"},
      {[](auto* r) { r->mutable_config()->mutable_optimizer()->mutable_adam()->set_beta1(1.0); },
       "config.optimizer.adam.beta1 = 1"},
      {[](auto* r) { r->mutable_config()->mutable_optimizer()->mutable_adam()->set_lr(-0.1); },
       "config.optimizer.adam.lr = -0.1"},
      {[](auto* r) {
         r->mutable_config()->mutable_optimizer()->mutable_normalized_gd()->set_norm(
             static_cast<v1::NormalizedGd::Norm>(7));
       },
       "config.optimizer.normalized_gd.norm = 7 is not a known value"},
      {[](auto* r) { r->set_session_id("bad id!"); }, "session_id \"bad id!\""},
      {[](auto* r) { r->clear_tensors(); }, "tensors has 0 entries"},
      {[](auto* r) { r->mutable_tensors(0)->set_dtype(static_cast<v1::DType>(9)); },
       "tensors[0].dtype = 9 is not a known DType"},
      {[](auto* r) { r->mutable_tensors(0)->add_shape(3); }, "tensors[0].data has 8 bytes"},
      {[](auto* r) { r->mutable_tensors(0)->set_name("a b"); }, "invalid character"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    v1::CreateSessionRequest req;
    req.set_session_id("bad-" + std::to_string(i));
    req.mutable_config()->mutable_optimizer()->mutable_adam();
    *req.add_tensors() = F32("w", {2}, {1, 2});
    cases[i].mutate(&req);
    grpc::Status s = Create(req);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << i;
    EXPECT_THAT(s.error_message(), HasSubstr(cases[i].message)) << i;
  }
  EXPECT_EQ(server_->store().size(), 0);  // nothing was created
}

TEST_F(OptimizerServiceTest, GetSessionReportsVersionAndState) {
  CreateSgd("g");
  v1::StepResponse step;
  ASSERT_TRUE(Step(StepRequest("g", 1, 1), &step).ok());
  v1::GetSessionRequest req;
  req.set_session_id("g");
  v1::Session out;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->GetSession(&ctx, req, &out).ok());
  EXPECT_EQ(out.version(), 1);
  ASSERT_EQ(out.tensors_size(), 2);
  EXPECT_EQ(out.tensors(0).name(), "w");
  EXPECT_EQ(out.tensors(1).num_elements(), 1);
}

TEST_F(OptimizerServiceTest, UnknownSessionIsNotFoundForEveryRpc) {
  grpc::ClientContext c1, c2, c3, c4;
  v1::Session session;
  v1::GetSessionRequest get;
  get.set_session_id("ghost");
  EXPECT_EQ(stub_->GetSession(&c1, get, &session).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::DeleteSessionRequest del;
  del.set_session_id("ghost");
  v1::DeleteSessionResponse deleted;
  EXPECT_EQ(stub_->DeleteSession(&c2, del, &deleted).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::PullRequest pull;
  pull.set_session_id("ghost");
  v1::PullResponse pulled;
  EXPECT_EQ(stub_->Pull(&c3, pull, &pulled).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::StepResponse step;
  grpc::Status s = Step(StepRequest("ghost", 1, 1), &step);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("session ghost not found"));
}

TEST_F(OptimizerServiceTest, ListSessionsPagesThroughAllInIdOrder) {
  for (const char* id : {"l3", "l1", "l2"}) CreateSgd(id);
  std::vector<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    v1::ListSessionsRequest req;
    req.set_page_size(2);
    req.set_page_token(token);
    v1::ListSessionsResponse out;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->ListSessions(&ctx, req, &out).ok());
    for (const auto& s : out.sessions()) seen.push_back(s.session_id());
    token = out.next_page_token();
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_THAT(seen, ElementsAre("l1", "l2", "l3"));
  EXPECT_EQ(pages, 2);

  v1::ListSessionsRequest bad;
  bad.set_page_size(5000);
  v1::ListSessionsResponse out;
  grpc::ClientContext ctx;
  grpc::Status s = stub_->ListSessions(&ctx, bad, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(),
              HasSubstr("page_size = 5000 is out of range: must be in [0, 1000]"));
}

TEST_F(OptimizerServiceTest, DeleteSessionRemovesIt) {
  CreateSgd("d");
  v1::DeleteSessionRequest del;
  del.set_session_id("d");
  v1::DeleteSessionResponse out;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->DeleteSession(&ctx, del, &out).ok());
  v1::StepResponse step;
  EXPECT_EQ(Step(StepRequest("d", 1, 1), &step).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(OptimizerServiceTest, StepAppliesAndReturnsParameters) {
  CreateSgd("s", 0.5);
  v1::StepResponse out;
  ASSERT_TRUE(Step(StepRequest("s", 2, -2), &out).ok());
  EXPECT_EQ(out.version(), 1);
  EXPECT_DOUBLE_EQ(out.learning_rate(), 0.5);
  EXPECT_DOUBLE_EQ(out.gradient_norm(), std::sqrt(12.0));
  ASSERT_EQ(out.parameters_size(), 2);
  EXPECT_THAT(Values(out.parameters(0)), ElementsAre(0.0f, 1.0f));
  EXPECT_THAT(Values(out.parameters(1)), ElementsAre(4.0f));

  v1::StepRequest none = StepRequest("s", 0, 0);
  none.set_return_parameters(v1::RETURN_PARAMETERS_NONE);
  ASSERT_TRUE(Step(none, &out).ok());
  EXPECT_EQ(out.version(), 2);
  EXPECT_EQ(out.parameters_size(), 0);
}

TEST_F(OptimizerServiceTest, StepReturnsParametersInTheRequestedDType) {
  CreateSgd("dt", 1);
  v1::StepRequest req = StepRequest("dt", 0, 0);
  req.set_return_dtype(v1::DTYPE_F16);
  v1::StepResponse out;
  ASSERT_TRUE(Step(req, &out).ok());
  EXPECT_EQ(out.parameters(0).dtype(), v1::DTYPE_F16);
  EXPECT_EQ(out.parameters(0).data(), std::string("\x00\x3c\x00\x40", 4));  // 1.0, 2.0
}

TEST_F(OptimizerServiceTest, BadStepsAreInvalidArgumentAndChangeNothing) {
  CreateSgd("bad");
  std::vector<std::pair<v1::StepRequest, const char*>> cases;
  v1::StepRequest r = StepRequest("bad", 1, 1);
  r.mutable_gradients()->Clear();
  cases.push_back({r, "gradients is empty"});
  r = StepRequest("bad", 1, 1);
  *r.add_gradients() = F32("extra", {1}, {1});
  cases.push_back({r, "\"extra\" is not a tensor of session bad"});
  r = StepRequest("bad", std::numeric_limits<float>::quiet_NaN(), 1);
  cases.push_back({r, "gradients[0] \"w\" element 0 is nan"});
  r = StepRequest("bad", 1, std::numeric_limits<float>::infinity());
  cases.push_back({r, "element 0 is inf"});
  r = StepRequest("bad", 1, 1);
  r.mutable_gradients(0)->set_dtype(v1::DTYPE_BF16);
  cases.push_back({r, "gradients[0].data has 8 bytes; must be 4"});
  r = StepRequest("bad", 1, 1);
  r.mutable_gradients(1)->add_shape(1);
  cases.push_back({r, "gradients[1].shape [1, 1] of \"b\" must be [1]"});
  r = StepRequest("bad", 1, 1);
  r.set_return_dtype(static_cast<v1::DType>(5));
  cases.push_back({r, "return_dtype = 5 is not a known DType"});
  r = StepRequest("bad", 1, 1);
  r.set_return_parameters(static_cast<v1::ReturnParameters>(3));
  cases.push_back({r, "return_parameters = 3 is not a known value"});
  for (const auto& [req, message] : cases) {
    v1::StepResponse out;
    grpc::Status s = Step(req, &out);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << message;
    EXPECT_THAT(s.error_message(), HasSubstr(message));
  }
  const v1::PullResponse pulled = PullAll("bad");
  EXPECT_EQ(pulled.version(), 0);
  EXPECT_THAT(Values(pulled.tensors(0)), ElementsAre(1.0f, 2.0f));
  EXPECT_THAT(Values(pulled.tensors(1)), ElementsAre(3.0f));
}

// Large requests are read where gRPC received them (message_bytes.h): the same results as small
// ones, for every dtype, unary and streamed, and a bad value deep inside is still found.
TEST_F(OptimizerServiceTest, LargeGradientsStepExactlyInEveryDTypeAndBadOnesAreFound) {
  // 281600 floats (1.1 MB as F32): large enough to be read in blocks on the pool.
  constexpr int64_t kRows = 1100, kDim = 256;
  std::vector<float> init(kRows * kDim), grad(kRows * kDim);
  double squares = 0;  // small integers: exact in any order
  for (size_t i = 0; i < init.size(); ++i) {
    init[i] = static_cast<float>(i % 1000);
    grad[i] = static_cast<float>(static_cast<int>(i % 7) - 3);  // exact in every dtype
    squares += grad[i] * grad[i];
  }
  v1::CreateSessionRequest create;
  create.set_session_id("big");
  create.mutable_config()->mutable_optimizer()->mutable_sgd()->set_lr(1);
  *create.add_tensors() = F32("w", {kRows, kDim}, init);
  ASSERT_TRUE(Create(create).ok());

  grpc::ClientContext stream_ctx;
  auto stream = stub_->StreamSteps(&stream_ctx);
  std::vector<float> want = init;
  for (const v1::DType dtype : {v1::DTYPE_F32, v1::DTYPE_BF16, v1::DTYPE_F16}) {
    for (const bool streamed : {false, true}) {
      v1::StepRequest req;
      req.set_session_id("big");
      v1::Tensor* g = req.add_gradients();
      g->set_name("w");
      g->add_shape(kRows);
      g->add_shape(kDim);
      g->set_dtype(dtype);
      EncodeFloats(static_cast<WireDType>(dtype), grad, g->mutable_data());
      v1::StepResponse out;
      if (streamed) {
        v1::StreamStepsResponse reply;
        ASSERT_TRUE(stream->Write(req));
        ASSERT_TRUE(stream->Read(&reply));
        ASSERT_TRUE(reply.has_reply()) << reply.error().message();
        out = reply.reply();
      } else {
        ASSERT_TRUE(Step(req, &out).ok());
      }
      for (size_t i = 0; i < want.size(); ++i) want[i] -= grad[i];
      EXPECT_EQ(out.gradient_norm(), std::sqrt(squares));
      ASSERT_EQ(Values(out.parameters(0)), want) << "dtype " << dtype << " streamed " << streamed;

      // The same request with a NaN near its end changes nothing and names the element.
      std::vector<float> bad = grad;
      bad[281500] = std::numeric_limits<float>::quiet_NaN();
      EncodeFloats(static_cast<WireDType>(dtype), bad, g->mutable_data());
      grpc::Status s = Step(req, &out);
      EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_THAT(s.error_message(), HasSubstr("element 281500 is nan"));
      // And one byte short is a length error, not a crash.
      g->mutable_data()->pop_back();
      s = Step(req, &out);
      EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_THAT(s.error_message(), HasSubstr("gradients[0].data has"));
    }
  }
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(PullAll("big").version(), 6);
}

TEST_F(OptimizerServiceTest, PullReturnsChosenTensors) {
  CreateSgd("p");
  v1::PullRequest req;
  req.set_session_id("p");
  req.add_names("b");
  v1::PullResponse out;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->Pull(&ctx, req, &out).ok());
  ASSERT_EQ(out.tensors_size(), 1);
  EXPECT_EQ(out.tensors(0).name(), "b");
  EXPECT_THAT(out.tensors(0).shape(), ElementsAre(1));
  EXPECT_THAT(Values(out.tensors(0)), ElementsAre(3.0f));

  req.set_names(0, "zzz");
  grpc::ClientContext ctx2;
  grpc::Status s = stub_->Pull(&ctx2, req, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("names[0] \"zzz\""));
}

TEST_F(OptimizerServiceTest, StreamStepsRepliesInOrderAndSurvivesErrors) {
  CreateSgd("st", 0.5);
  grpc::ClientContext ctx;
  auto stream = stub_->StreamSteps(&ctx);
  v1::StreamStepsResponse reply;
  for (int i = 1; i <= 3; ++i) {
    ASSERT_TRUE(stream->Write(StepRequest("st", 1, 1)));
    ASSERT_TRUE(stream->Read(&reply));
    ASSERT_TRUE(reply.has_reply());
    EXPECT_EQ(reply.reply().version(), i);
  }
  // A refused step answers with its error and the stream goes on.
  ASSERT_TRUE(stream->Write(StepRequest("st", std::numeric_limits<float>::quiet_NaN(), 1)));
  ASSERT_TRUE(stream->Read(&reply));
  ASSERT_TRUE(reply.has_error());
  EXPECT_EQ(reply.error().code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(reply.error().message(), HasSubstr("nan"));
  ASSERT_TRUE(stream->Write(StepRequest("no-such", 1, 1)));
  ASSERT_TRUE(stream->Read(&reply));
  EXPECT_EQ(reply.error().code(), grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(stream->Write(StepRequest("st", 1, 1)));
  ASSERT_TRUE(stream->Read(&reply));
  EXPECT_EQ(reply.reply().version(), 4);
  EXPECT_THAT(Values(reply.reply().parameters(0)), ElementsAre(-1.0f, 0.0f));
  stream->WritesDone();
  EXPECT_FALSE(stream->Read(&reply));
  EXPECT_TRUE(stream->Finish().ok());
}

// Bytes that are no StepRequest, sent with a generic stub (Step and StreamSteps parse their own).
grpc::ByteBuffer BytesOf(const std::string& bytes) {
  grpc::Slice slice(bytes.data(), bytes.size());
  return grpc::ByteBuffer(&slice, 1);
}
const char kNotAStepRequest[] = "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01";

// Waits for the next event of `cq` and checks it is `tag`, successful.
void Await(grpc::CompletionQueue* cq, void* tag) {
  void* got = nullptr;
  bool ok = false;
  ASSERT_TRUE(cq->Next(&got, &ok));
  EXPECT_EQ(got, tag);
  EXPECT_TRUE(ok);
}

// On a generic StreamSteps call: writes `request` bytes, reads and parses the reply.
v1::StreamStepsResponse Exchange(grpc::GenericClientAsyncReaderWriter* call,
                                 grpc::CompletionQueue* cq, const std::string& request) {
  call->Write(BytesOf(request), call);
  Await(cq, call);
  grpc::ByteBuffer bytes;
  call->Read(&bytes, call);
  Await(cq, call);
  v1::StreamStepsResponse reply;
  EXPECT_TRUE(ParseMessage(&bytes, &reply).ok());
  return reply;
}

TEST_F(OptimizerServiceTest, UnparsableStepBytesAreInvalidArgumentAndTheServerGoesOn) {
  CreateSgd("raw", 0.5);
  grpc::GenericStub generic(channel_);
  grpc::CompletionQueue cq;
  {  // unary
    grpc::ClientContext ctx;
    grpc::ByteBuffer request = BytesOf(std::string(kNotAStepRequest, sizeof(kNotAStepRequest) - 1));
    auto call = generic.PrepareUnaryCall(&ctx, "/optd.v1.Optimizer/Step", request, &cq);
    call->StartCall();
    grpc::ByteBuffer response;
    grpc::Status status;
    call->Finish(&response, &status, reinterpret_cast<void*>(1));
    Await(&cq, reinterpret_cast<void*>(1));
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("not a valid optd.v1.StepRequest message"));
  }
  {  // stream: the bad request is answered with a StepError and the next one is served
    grpc::ClientContext ctx;
    auto call = generic.PrepareCall(&ctx, "/optd.v1.Optimizer/StreamSteps", &cq);
    call->StartCall(reinterpret_cast<void*>(2));
    Await(&cq, reinterpret_cast<void*>(2));
    v1::StreamStepsResponse reply =
        Exchange(call.get(), &cq, std::string(kNotAStepRequest, sizeof(kNotAStepRequest) - 1));
    ASSERT_TRUE(reply.has_error());
    EXPECT_EQ(reply.error().code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(reply.error().message(), HasSubstr("not a valid optd.v1.StepRequest message"));
    reply = Exchange(call.get(), &cq, StepRequest("raw", 1, 1).SerializeAsString());
    ASSERT_TRUE(reply.has_reply());
    EXPECT_EQ(reply.reply().version(), 1);
    EXPECT_THAT(Values(reply.reply().parameters(0)), ElementsAre(0.5f, 1.5f));
    call->WritesDone(reinterpret_cast<void*>(7));
    Await(&cq, reinterpret_cast<void*>(7));
    grpc::Status status;
    call->Finish(&status, reinterpret_cast<void*>(8));
    Await(&cq, reinterpret_cast<void*>(8));
    EXPECT_TRUE(status.ok()) << status.error_message();
  }
  cq.Shutdown();
  void* tag;
  bool ok;
  while (cq.Next(&tag, &ok)) {
  }
  // Nothing was applied by the bad requests: one step in all.
  EXPECT_EQ(PullAll("raw").version(), 1);
}

TEST_F(OptimizerServiceTest, ConcurrentStepsOnOneAndManySessionsAreExact) {
  constexpr int kThreads = 8;
  constexpr int kSteps = 50;
  for (int k = 0; k < 4; ++k) CreateSgd("c" + std::to_string(k), 0.25);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto stub = v1::Optimizer::NewStub(channel_);
      for (int i = 0; i < kSteps; ++i) {
        const std::string id = "c" + std::to_string((t + i) % 4);
        v1::StepRequest req = StepRequest(id, 1, 2);
        req.set_return_parameters(v1::RETURN_PARAMETERS_NONE);
        v1::StepResponse out;
        grpc::ClientContext ctx;
        ASSERT_TRUE(stub->Step(&ctx, req, &out).ok());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  int64_t total_version = 0;
  for (int k = 0; k < 4; ++k) {
    v1::PullRequest req;
    req.set_session_id("c" + std::to_string(k));
    v1::PullResponse out;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->Pull(&ctx, req, &out).ok());
    total_version += out.version();
    // b starts at 3 and moves by -0.25 * 2 per step.
    EXPECT_FLOAT_EQ(Values(out.tensors(1))[0], 3.0f - 0.5f * out.version());
  }
  EXPECT_EQ(total_version, kThreads * kSteps);
}

TEST_F(OptimizerServiceTest, UpdateSessionChangesHyperparametersForTheNextStep) {
  CreateSgd("u", 0.5);
  v1::UpdateSessionRequest req;
  req.set_session_id("u");
  req.mutable_optimizer()->mutable_sgd()->set_lr(0.25);
  req.mutable_clipping()->set_clip_value(1.0);
  v1::Session out;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->UpdateSession(&ctx, req, &out).ok());
  EXPECT_DOUBLE_EQ(out.config().optimizer().sgd().lr(), 0.25);
  EXPECT_DOUBLE_EQ(out.learning_rate(), 0.25);
  EXPECT_DOUBLE_EQ(out.config().clipping().clip_value(), 1.0);
  v1::StepResponse step;
  ASSERT_TRUE(Step(StepRequest("u", 4, -4), &step).ok());
  EXPECT_DOUBLE_EQ(step.learning_rate(), 0.25);
  EXPECT_DOUBLE_EQ(step.gradient_norm(), std::sqrt(48.0));             // before clipping
  EXPECT_THAT(Values(step.parameters(0)), ElementsAre(0.75f, 1.75f));  // clipped to 1
  EXPECT_THAT(Values(step.parameters(1)), ElementsAre(3.25f));

  // A schedule from now on: StepLR(step_size 1, gamma 0.5) continues at step k = 1.
  v1::UpdateSessionRequest schedule;
  schedule.set_session_id("u");
  schedule.mutable_schedule()->mutable_step()->set_step_size(1);
  schedule.mutable_schedule()->mutable_step()->set_gamma(0.5);
  grpc::ClientContext ctx2;
  ASSERT_TRUE(stub_->UpdateSession(&ctx2, schedule, &out).ok());
  EXPECT_DOUBLE_EQ(out.learning_rate(), 0.125);
  ASSERT_TRUE(Step(StepRequest("u", 0, 0), &step).ok());
  EXPECT_DOUBLE_EQ(step.learning_rate(), 0.125);
}

TEST_F(OptimizerServiceTest, InvalidUpdatesChangeNothing) {
  CreateSgd("ub", 0.5);
  struct Case {
    std::function<void(v1::UpdateSessionRequest*)> mutate;
    grpc::StatusCode code;
    const char* message;
  };
  std::vector<Case> cases = {
      {[](auto* r) { r->mutable_optimizer()->mutable_adam()->set_lr(0.1); },
       grpc::StatusCode::INVALID_ARGUMENT, "the optimizer kind cannot change"},
      {[](auto* r) { r->mutable_optimizer()->mutable_sgd()->set_lr(-1); },
       grpc::StatusCode::INVALID_ARGUMENT, "optimizer.sgd.lr = -1"},
      {[](auto* r) {
         r->mutable_optimizer()->mutable_sgd()->set_lr(0.1);
         r->mutable_schedule()->mutable_step()->set_step_size(0);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "schedule.step.step_size = 0"},
      {[](auto* r) { r->mutable_clipping()->set_max_norm(-2); }, grpc::StatusCode::INVALID_ARGUMENT,
       "clipping.max_norm = -2"},
      {[](auto* r) { r->set_session_id("nope"); }, grpc::StatusCode::NOT_FOUND,
       "session nope not found"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    v1::UpdateSessionRequest req;
    req.set_session_id("ub");
    cases[i].mutate(&req);
    v1::Session out;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->UpdateSession(&ctx, req, &out);
    EXPECT_EQ(s.error_code(), cases[i].code) << i;
    EXPECT_THAT(s.error_message(), HasSubstr(cases[i].message)) << i;
  }
  v1::GetSessionRequest get;
  get.set_session_id("ub");
  v1::Session session;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->GetSession(&ctx, get, &session).ok());
  EXPECT_DOUBLE_EQ(session.config().optimizer().sgd().lr(), 0.5);
  EXPECT_EQ(session.config().schedule().kind_case(), v1::LrSchedule::kConstant);
  EXPECT_DOUBLE_EQ(session.config().clipping().max_norm(), 0);
}

TEST_F(OptimizerServiceTest, BoundedStaleGradientIsAbortedWithTheCurrentVersion) {
  v1::CreateSessionRequest req;
  req.set_session_id("b");
  req.mutable_config()->mutable_optimizer()->mutable_sgd()->set_lr(1);
  req.mutable_config()->mutable_consistency()->set_mode(v1::Consistency::MODE_BOUNDED);
  req.mutable_config()->mutable_consistency()->set_max_staleness(1);
  *req.add_tensors() = F32("w", {2}, {0, 0});
  *req.add_tensors() = F32("b", {1}, {0});
  ASSERT_TRUE(Create(req).ok());
  v1::StepResponse out;
  for (int v = 0; v < 2; ++v) {
    v1::StepRequest step = StepRequest("b", 1, 1);
    step.set_version(v);
    ASSERT_TRUE(Step(step, &out).ok());
  }
  v1::StepRequest stale = StepRequest("b", 1, 1);
  stale.set_version(0);  // 2 versions old
  grpc::ClientContext ctx;
  grpc::Status s = stub_->Step(&ctx, stale, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_THAT(s.error_message(), HasSubstr("accepts at most 1"));
  auto it = ctx.GetServerTrailingMetadata().find("optd-current-version");
  ASSERT_NE(it, ctx.GetServerTrailingMetadata().end());
  EXPECT_EQ(std::string(it->second.data(), it->second.size()), "2");
}

TEST_F(OptimizerServiceTest, RetriedStepIsAnsweredOnceAndReusedSequenceIsRefused) {
  CreateSgd("r", 1);
  v1::StepRequest step = StepRequest("r", 1, 1);
  step.set_worker_id("w1");
  step.set_sequence(1);
  v1::StepResponse first, retry;
  ASSERT_TRUE(Step(step, &first).ok());
  ASSERT_TRUE(Step(step, &retry).ok());
  EXPECT_FALSE(first.duplicate());
  EXPECT_TRUE(retry.duplicate());
  EXPECT_EQ(retry.version(), first.version());
  EXPECT_THAT(Values(retry.parameters(0)), ElementsAre(0.0f, 1.0f));  // applied once
  for (int q = 2; q < 40; ++q) {
    step.set_sequence(q);
    ASSERT_TRUE(Step(step, &retry).ok());
  }
  step.set_sequence(1);
  grpc::Status s = Step(step, &retry);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("sequence = 1 of worker w1"));
}

TEST_F(OptimizerServiceTest, SyncStepsOverGrpcWaitWithoutBlockingAndFinishTogether) {
  v1::CreateSessionRequest req;
  req.set_session_id("sync");
  req.mutable_config()->mutable_optimizer()->mutable_sgd()->set_lr(1);
  req.mutable_config()->mutable_consistency()->set_mode(v1::Consistency::MODE_SYNC);
  req.mutable_config()->mutable_consistency()->set_workers(3);
  *req.add_tensors() = F32("w", {2}, {0, 0});
  *req.add_tensors() = F32("b", {1}, {0});
  ASSERT_TRUE(Create(req).ok());
  std::vector<std::thread> workers;
  std::vector<v1::StepResponse> replies(3);
  std::vector<grpc::Status> statuses(3);
  for (int t = 0; t < 3; ++t) {
    workers.emplace_back([&, t] {
      auto stub = v1::Optimizer::NewStub(channel_);
      v1::StepRequest step = StepRequest("sync", static_cast<float>(t + 1), 0);
      step.set_worker_id("w" + std::to_string(t));
      step.set_version(0);
      grpc::ClientContext ctx;
      statuses[t] = stub->Step(&ctx, step, &replies[t]);
    });
  }
  for (std::thread& t : workers) t.join();
  for (int t = 0; t < 3; ++t) {
    ASSERT_TRUE(statuses[t].ok()) << statuses[t].error_message();
    EXPECT_EQ(replies[t].version(), 1);
    EXPECT_EQ(replies[t].workers(), 3);
    EXPECT_THAT(Values(replies[t].parameters(0)), ElementsAre(-2.0f, -2.0f));  // mean(1, 2, 3)
  }
}

TEST_F(OptimizerServiceTest, RowSparseGradientsAndTouchedRows) {
  v1::CreateSessionRequest req;
  req.set_session_id("sp");
  req.mutable_config()->mutable_optimizer()->mutable_sgd()->set_lr(1);
  *req.add_tensors() = F32("emb", {4, 2}, {0, 0, 0, 0, 0, 0, 0, 0});
  ASSERT_TRUE(Create(req).ok());
  v1::StepRequest step;
  step.set_session_id("sp");
  v1::Tensor* g = step.add_gradients();
  *g = F32("emb", {4, 2}, {1, 1, 2, 2, 3, 3});
  for (int64_t r : {2, 0, 2}) g->mutable_rows()->add_indices(r);  // row 2 twice: summed
  step.set_return_parameters(v1::RETURN_PARAMETERS_TOUCHED);
  v1::StepResponse out;
  ASSERT_TRUE(Step(step, &out).ok());
  ASSERT_EQ(out.parameters_size(), 1);
  EXPECT_THAT(out.parameters(0).rows().indices(), ElementsAre(0, 2));
  EXPECT_THAT(Values(out.parameters(0)), ElementsAre(-2.0f, -2.0f, -4.0f, -4.0f));

  g->mutable_rows()->set_indices(1, 4);
  grpc::Status s = Step(step, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("gradients[0].rows.indices[1] = 4 is out of range"));

  v1::PullRequest pull;
  pull.set_session_id("sp");
  v1::TensorRows* rows = pull.add_rows();
  rows->set_name("emb");
  rows->add_indices(2);
  rows->add_indices(1);
  v1::PullResponse pulled;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->Pull(&ctx, pull, &pulled).ok());
  EXPECT_EQ(pulled.version(), 1);
  EXPECT_THAT(pulled.tensors(0).rows().indices(), ElementsAre(2, 1));
  EXPECT_THAT(Values(pulled.tensors(0)), ElementsAre(-4.0f, -4.0f, 0.0f, 0.0f));
}

TEST(OptdServerTest, OversizedRequestIsResourceExhaustedAndServerKeepsServing) {
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.max_message_bytes = 64 << 10;
  auto server = OptdServer::Start(options);
  ASSERT_TRUE(server.ok());
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string((*server)->port()),
                                     grpc::InsecureChannelCredentials());
  auto stub = v1::Optimizer::NewStub(channel);
  v1::CreateSessionRequest req;
  req.set_session_id("big");
  req.mutable_config()->mutable_optimizer()->mutable_adam();
  *req.add_tensors() = F32("w", {32 << 10}, std::vector<float>(32 << 10, 1.0f));  // 128 KiB
  v1::Session out;
  grpc::ClientContext ctx;
  grpc::Status s = stub->CreateSession(&ctx, req, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);

  *req.mutable_tensors(0) = F32("w", {4}, {1, 2, 3, 4});
  grpc::ClientContext ctx2;
  EXPECT_TRUE(stub->CreateSession(&ctx2, req, &out).ok());
}

TEST(OptdServerTest, RejectsBadOptionsAndUnbindableAddresses) {
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.max_message_bytes = 10;
  EXPECT_EQ(OptdServer::Start(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.max_message_bytes = 1 << 20;
  options.listen = "256.0.0.1:1";
  // Plaintext off loopback needs `insecure`; with it, the address itself is refused.
  EXPECT_EQ(OptdServer::Start(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.insecure = true;
  EXPECT_EQ(OptdServer::Start(options).status().code(), absl::StatusCode::kUnavailable);
}

TEST(OptdServerTest, LoopbackAddressesAreTheOnesThatNeedNoTls) {
  for (const char* local : {"127.0.0.1:50051", "127.3.2.1:1", "localhost:0", "[::1]:50051",
                            "unix:/tmp/optd.sock"}) {
    EXPECT_TRUE(IsLoopbackAddress(local)) << local;
  }
  for (const char* remote : {"0.0.0.0:50051", "[::]:50051", "10.0.0.7:1", "optd-0.optd:50051",
                             ":50051"}) {
    EXPECT_FALSE(IsLoopbackAddress(remote)) << remote;
  }
}

// A stream waiting for its next request holds nothing shutdown must finish: it is ended at once
// (the client reopens it to the next server), not left open until the deadline.
TEST(OptdServerTest, ShutdownEndsAnIdleStreamAtOnceAndRefusesNewCalls) {
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  auto server = OptdServer::Start(options);
  ASSERT_TRUE(server.ok());
  // A TCP channel: a new call on an in-process channel of a server that is shutting down crashes
  // inside gRPC 1.51.
  auto stub = v1::Optimizer::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string((*server)->port()), grpc::InsecureChannelCredentials()));
  v1::CreateSessionRequest req;
  req.set_session_id("x");
  req.mutable_config()->mutable_optimizer()->mutable_sgd()->set_lr(1);
  *req.add_tensors() = F32("w", {1}, {0});
  v1::Session session;
  grpc::ClientContext c1;
  ASSERT_TRUE(stub->CreateSession(&c1, req, &session).ok());

  grpc::ClientContext ctx;
  auto stream = stub->StreamSteps(&ctx);
  v1::StepRequest step;
  step.set_session_id("x");
  *step.add_gradients() = F32("w", {1}, {1});
  v1::StreamStepsResponse reply;
  ASSERT_TRUE(stream->Write(step));
  ASSERT_TRUE(stream->Read(&reply));  // the stream is open on the server, waiting for a request
  EXPECT_EQ(reply.reply().version(), 1);

  const absl::Time start = absl::Now();
  (*server)->Shutdown(start + absl::Seconds(30));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10)) << "Shutdown waited for the idle stream";
  EXPECT_FALSE(stream->Read(&reply));
  const grpc::Status ended = stream->Finish();
  EXPECT_TRUE(ended.error_code() == grpc::StatusCode::UNAVAILABLE ||
              ended.error_code() == grpc::StatusCode::CANCELLED)
      << ended.error_code() << " " << ended.error_message();
  // New calls are refused.
  v1::GetSessionRequest get;
  get.set_session_id("x");
  grpc::ClientContext c2;
  c2.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  EXPECT_FALSE(stub->GetSession(&c2, get, &session).ok());
}

}  // namespace
}  // namespace optd
