// Partial steps over gRPC (a StepRequest with gradients for some tensors only; torch: grad None)
// with the optimizers of #15: a real OptdServer on 127.0.0.1:0 called through the generated stub.
// Prodigy, D-Adaptation, DoG and L-DoG refuse them with INVALID_ARGUMENT naming the optimizer and
// why, and the session is unchanged; Schedule-Free, Adafactor and Muon take them, leaving the
// tensor without a gradient exactly as it was (README "Partial steps").

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "optd/v1/optd.grpc.pb.h"
#include "server/service/server.h"

namespace optd {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

v1::Tensor F32(const std::string& name, std::vector<float> values) {
  v1::Tensor t;
  t.set_name(name);
  t.add_shape(static_cast<int64_t>(values.size()));
  t.set_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4));
  return t;
}

std::vector<float> Values(const v1::Tensor& t) {
  std::vector<float> out(t.data().size() / 4);
  std::memcpy(out.data(), t.data().data(), t.data().size());
  return out;
}

class PartialStepGrpcTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    absl::StatusOr<std::unique_ptr<OptdServer>> server = OptdServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  PartialStepGrpcTest()
      : stub_(v1::Optimizer::NewStub(grpc::CreateChannel(
            "127.0.0.1:" + std::to_string(server_->port()), grpc::InsecureChannelCredentials()))) {}

  // Creates session `id` with tensors w (2 elements) and b (1) and the optimizer set by `set`.
  template <typename Set>
  void Create(const std::string& id, Set set) {
    v1::CreateSessionRequest request;
    request.set_session_id(id);
    set(request.mutable_config()->mutable_optimizer());
    *request.add_tensors() = F32("w", {1, -1});
    *request.add_tensors() = F32("b", {0.5});
    v1::Session reply;
    grpc::ClientContext context;
    grpc::Status s = stub_->CreateSession(&context, request, &reply);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  // A step of `id` with a gradient for w only (b absent), or for both.
  grpc::Status Step(const std::string& id, bool with_b, v1::StepResponse* reply) {
    v1::StepRequest request;
    request.set_session_id(id);
    *request.add_gradients() = F32("w", {0.5, 0.25});
    if (with_b) *request.add_gradients() = F32("b", {1});
    grpc::ClientContext context;
    return stub_->Step(&context, request, reply);
  }

  static OptdServer* server_;
  std::unique_ptr<v1::Optimizer::Stub> stub_;
};

OptdServer* PartialStepGrpcTest::server_ = nullptr;

TEST_F(PartialStepGrpcTest, ModelWideEstimatesRefuseAndTheSessionIsUnchanged) {
  Create("prodigy", [](v1::OptimizerConfig* o) { o->mutable_prodigy(); });
  Create("dadapt_adam", [](v1::OptimizerConfig* o) { o->mutable_dadapt_adam(); });
  Create("dadapt_sgd", [](v1::OptimizerConfig* o) { o->mutable_dadapt_sgd(); });
  Create("dog", [](v1::OptimizerConfig* o) { o->mutable_dog(); });
  Create("ldog", [](v1::OptimizerConfig* o) { o->mutable_ldog(); });
  for (const std::string id : {"prodigy", "dadapt_adam", "dadapt_sgd", "dog", "ldog"}) {
    SCOPED_TRACE(id);
    v1::StepResponse reply;
    ASSERT_TRUE(Step(id, true, &reply).ok());
    grpc::Status s = Step(id, false, &reply);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), AllOf(HasSubstr(id + " refuses a partial step"),
                                         HasSubstr("send a gradient for every tensor")));
    v1::PullRequest pull;
    pull.set_session_id(id);
    v1::PullResponse pulled;
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->Pull(&context, pull, &pulled).ok());
    EXPECT_EQ(pulled.version(), 1);
  }
}

TEST_F(PartialStepGrpcTest, PerTensorAndScheduleFreeOptimizersLeaveTheAbsentTensor) {
  Create("sf_adamw", [](v1::OptimizerConfig* o) { o->mutable_schedulefree_adamw(); });
  Create("sf_sgd", [](v1::OptimizerConfig* o) { o->mutable_schedulefree_sgd(); });
  Create("adafactor", [](v1::OptimizerConfig* o) { o->mutable_adafactor(); });
  Create("muon", [](v1::OptimizerConfig* o) { o->mutable_muon(); });
  for (const std::string id : {"sf_adamw", "sf_sgd", "adafactor", "muon"}) {
    SCOPED_TRACE(id);
    v1::StepResponse reply;
    ASSERT_TRUE(Step(id, true, &reply).ok());
    const std::vector<float> b = Values(reply.parameters(1));
    const std::vector<float> w = Values(reply.parameters(0));
    grpc::Status s = Step(id, false, &reply);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(reply.version(), 2);
    ASSERT_EQ(reply.parameters_size(), 2);
    EXPECT_EQ(reply.parameters(1).name(), "b");
    EXPECT_EQ(Values(reply.parameters(1)), b);  // bit for bit
    EXPECT_NE(Values(reply.parameters(0)), w);
  }
}

}  // namespace
}  // namespace optd
