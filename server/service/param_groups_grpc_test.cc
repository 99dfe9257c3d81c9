// Parameter groups over gRPC (SessionConfig.param_groups, UpdateSessionRequest.param_groups): a
// real OptdServer on 127.0.0.1:0 through the generated stub. Each group steps with its own
// hyperparameters; GetSession shows the groups with every field set; UpdateSession changes one
// group; the checkpoint's config codec keeps them; malformed groups are INVALID_ARGUMENT naming
// the field.

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "optd/v1/optd.grpc.pb.h"
#include "server/service/config_codec.h"
#include "server/service/proto_convert.h"
#include "server/service/server.h"

namespace optd {
namespace {

using ::testing::ElementsAre;
using ::testing::FloatEq;
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

class ParamGroupsGrpcTest : public ::testing::Test {
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

  ParamGroupsGrpcTest()
      : stub_(v1::Optimizer::NewStub(grpc::CreateChannel(
            "127.0.0.1:" + std::to_string(server_->port()), grpc::InsecureChannelCredentials()))) {}

  // Tensors a, b, c of one element each; SGD lr 1 for the session, param_groups[0] = {c, a}
  // with lr 0.1 (and momentum 0: unset, the session's).
  v1::CreateSessionRequest Request(const std::string& id) {
    v1::CreateSessionRequest request;
    request.set_session_id(id);
    request.mutable_config()->mutable_optimizer()->mutable_sgd()->set_lr(1.0);
    v1::ParamGroup* group = request.mutable_config()->add_param_groups();
    group->add_tensors("c");
    group->add_tensors("a");
    group->mutable_optimizer()->mutable_sgd()->set_lr(0.1);
    *request.add_tensors() = F32("a", {1});
    *request.add_tensors() = F32("b", {1});
    *request.add_tensors() = F32("c", {1});
    return request;
  }

  grpc::Status Create(const v1::CreateSessionRequest& request, v1::Session* session) {
    grpc::ClientContext context;
    return stub_->CreateSession(&context, request, session);
  }

  static OptdServer* server_;
  std::unique_ptr<v1::Optimizer::Stub> stub_;
};

OptdServer* ParamGroupsGrpcTest::server_ = nullptr;

TEST_F(ParamGroupsGrpcTest, EachGroupStepsWithItsOwnHyperparametersAndCanChange) {
  v1::Session session;
  ASSERT_TRUE(Create(Request("groups"), &session).ok());
  ASSERT_EQ(session.config().param_groups_size(), 1);
  // In the session's tensor order, every field set.
  EXPECT_THAT(session.config().param_groups(0).tensors(), ElementsAre("a", "c"));
  EXPECT_EQ(session.config().param_groups(0).optimizer().sgd().lr(), 0.1);
  EXPECT_TRUE(session.config().param_groups(0).optimizer().sgd().has_momentum());

  v1::StepRequest step;
  step.set_session_id("groups");
  for (const char* name : {"a", "b", "c"}) *step.add_gradients() = F32(name, {1});
  v1::StepResponse reply;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->Step(&context, step, &reply).ok());
  }
  EXPECT_THAT(Values(reply.parameters(0)), ElementsAre(0.9f));  // a: lr 0.1
  EXPECT_THAT(Values(reply.parameters(1)), ElementsAre(0.0f));  // b: the session's lr 1
  EXPECT_THAT(Values(reply.parameters(2)), ElementsAre(0.9f));  // c: lr 0.1

  v1::UpdateSessionRequest update;
  update.set_session_id("groups");
  v1::ParamGroupUpdate* change = update.add_param_groups();
  change->set_index(0);
  change->mutable_optimizer()->mutable_sgd()->set_lr(0.5);
  v1::Session updated;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->UpdateSession(&context, update, &updated).ok());
  }
  EXPECT_EQ(updated.config().param_groups(0).optimizer().sgd().lr(), 0.5);
  EXPECT_EQ(updated.config().optimizer().sgd().lr(), 1.0);
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->Step(&context, step, &reply).ok());
  }
  EXPECT_THAT(Values(reply.parameters(0)), ElementsAre(FloatEq(0.9f - 0.5f)));
  EXPECT_THAT(Values(reply.parameters(1)), ElementsAre(-1.0f));

  // An index out of range, or a bad value, changes nothing.
  change->set_index(1);
  {
    grpc::ClientContext context;
    grpc::Status s = stub_->UpdateSession(&context, update, &updated);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("index = 1 is out of range"));
  }
  change->set_index(0);
  change->mutable_optimizer()->mutable_sgd()->set_lr(-2);
  {
    grpc::ClientContext context;
    grpc::Status s = stub_->UpdateSession(&context, update, &updated);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("param_groups[0].optimizer.sgd.lr = -2"));
  }
  v1::GetSessionRequest get;
  get.set_session_id("groups");
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->GetSession(&context, get, &updated).ok());
  }
  EXPECT_EQ(updated.config().param_groups(0).optimizer().sgd().lr(), 0.5);
}

TEST_F(ParamGroupsGrpcTest, TheCheckpointConfigKeepsTheGroups) {
  v1::Session session;
  ASSERT_TRUE(Create(Request("groups-codec"), &session).ok());
  absl::StatusOr<SessionConfig> config = ConfigFromProto(session.config());
  ASSERT_TRUE(config.ok()) << config.status();
  ProtoJsonConfigCodec codec;
  absl::StatusOr<SessionConfig> back = codec.Decode(codec.Encode(*config));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->param_groups.size(), 1u);
  EXPECT_THAT(back->param_groups[0].tensors, ElementsAre("a", "c"));
  EXPECT_EQ(std::get<SgdOptions>(back->param_groups[0].optimizer).lr, 0.1);
}

TEST_F(ParamGroupsGrpcTest, MalformedGroupsAreRefusedNamingTheField) {
  struct Case {
    std::string name;
    std::function<void(v1::CreateSessionRequest*)> edit;
    std::string phrase;
  };
  const std::vector<Case> cases = {
      {"unknown tensor",
       [](v1::CreateSessionRequest* r) {
         r->mutable_config()->mutable_param_groups(0)->set_tensors(0, "zz");
       },
       "config.param_groups[0].tensors[0] \"zz\" is not one of the session's tensors"},
      {"two groups",
       [](v1::CreateSessionRequest* r) {
         v1::ParamGroup* g = r->mutable_config()->add_param_groups();
         g->add_tensors("a");
       },
       "config.param_groups[1].tensors[0] \"a\" is already in config.param_groups[0]"},
      {"empty", [](v1::CreateSessionRequest* r) { r->mutable_config()->add_param_groups(); },
       "config.param_groups[1].tensors is empty"},
      {"other kind",
       [](v1::CreateSessionRequest* r) {
         r->mutable_config()->mutable_param_groups(0)->mutable_optimizer()->mutable_adam();
       },
       "config.param_groups[0].optimizer is adam but config.optimizer is sgd"},
      {"bad value",
       [](v1::CreateSessionRequest* r) {
         r->mutable_config()->mutable_param_groups(0)->mutable_optimizer()->mutable_sgd()->set_lr(
             -1);
       },
       "config.param_groups[0].optimizer.sgd.lr = -1"},
      {"model-wide state",
       [](v1::CreateSessionRequest* r) {
         r->mutable_config()->mutable_optimizer()->mutable_prodigy();
         r->mutable_config()->mutable_param_groups(0)->mutable_optimizer()->mutable_prodigy();
       },
       "config.param_groups: prodigy keeps model-wide state"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    v1::CreateSessionRequest request = Request("groups-bad");
    c.edit(&request);
    v1::Session session;
    grpc::Status s = Create(request, &session);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr(c.phrase));
  }
}

}  // namespace
}  // namespace optd
