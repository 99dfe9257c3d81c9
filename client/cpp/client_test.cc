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
#include "client/cpp/client_testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "wire/wire_dtype.h"

namespace optd {
namespace client {
namespace {

using ::optd::client::testing::Adam;
using ::optd::client::testing::BoundedSgd;
using ::optd::client::testing::Sgd;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

using ClientTest = ::optd::client::testing::ServerTest;

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
    absl::StatusOr<PullResult> pulled = client_->Pull("pull-dtypes", {/*names=*/{}, dtype});
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
  absl::StatusOr<PullResult> pulled = client_->Pull("pull-names", {{"b"}});
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  ASSERT_EQ(pulled->tensors.size(), 1u);
  EXPECT_EQ(pulled->tensors[0].name, "b");
  EXPECT_EQ(pulled->tensors[0].values, std::vector<float>{3});

  EXPECT_EQ(client_->Pull("pull-names", {{"nope"}}).status().code(),
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
  none.return_parameters = v1::RETURN_PARAMETERS_NONE;
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

// A partial step (torch: a .grad that is None): the tensors without a gradient stay as they are;
// a step with no gradient at all is refused.
TEST_F(ClientTest, StepWithSomeGradientsLeavesTheOthersAndWithNoneIsInvalidArgument) {
  ASSERT_TRUE(
      client_->CreateSession("step-missing", Sgd(1), {{"w", {1}, {1}}, {"b", {1}, {1}}}).ok());
  absl::StatusOr<StepResult> r = client_->Step("step-missing", {{"w", {1}, {0.5f}}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 1);
  ASSERT_EQ(r->parameters.size(), 2u);
  EXPECT_THAT(r->parameters[0].values, ElementsAre(0.5f));
  EXPECT_THAT(r->parameters[1].values, ElementsAre(1.0f));  // b: no gradient, unchanged
  r = client_->Step("step-missing", {});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("gradients is empty"));
  absl::StatusOr<PullResult> pulled = client_->Pull("step-missing");
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(pulled->version, 1);
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
      options.return_parameters = v1::RETURN_PARAMETERS_NONE;
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
  options.return_parameters = v1::RETURN_PARAMETERS_NONE;
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

// --- UpdateSession -----------------------------------------------------------------------------

TEST_F(ClientTest, SetLearningRateKeepsTheVersionAndTheNextStepUsesIt) {
  ASSERT_TRUE(client_->CreateSession("update-lr", Sgd(1), {{"p", {1}, {0}}}).ok());
  ASSERT_TRUE(client_->Step("update-lr", {{"p", {1}, {1}}}).ok());
  absl::StatusOr<v1::Session> updated = client_->SetLearningRate("update-lr", 0.25);
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_DOUBLE_EQ(updated->config().optimizer().sgd().lr(), 0.25);
  EXPECT_EQ(updated->version(), 1);
  EXPECT_DOUBLE_EQ(updated->learning_rate(), 0.25);

  absl::StatusOr<StepResult> r = client_->Step("update-lr", {{"p", {1}, {1}}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 2);
  EXPECT_DOUBLE_EQ(r->learning_rate, 0.25);
  EXPECT_THAT(r->parameters[0].values, ElementsAre(-1.25f));  // -1 * 1, then -0.25 * 1
}

TEST_F(ClientTest, UpdateSessionChangesOnlyWhatIsSetAndKeepsAdamState) {
  ASSERT_TRUE(client_->CreateSession("update-adam", Adam(), {{"w", {2}, {0, 0}}}).ok());
  ASSERT_TRUE(client_->Step("update-adam", {{"w", {2}, {1, -1}}}).ok());
  v1::UpdateSessionRequest request;
  request.set_session_id("update-adam");
  request.mutable_optimizer()->mutable_adam()->set_beta2(0.99);
  request.mutable_schedule()->mutable_step()->set_step_size(10);
  request.mutable_clipping()->set_max_norm(0.5);
  absl::StatusOr<v1::Session> updated = client_->UpdateSession(request);
  ASSERT_TRUE(updated.ok()) << updated.status();
  const v1::Adam& adam = updated->config().optimizer().adam();
  EXPECT_DOUBLE_EQ(adam.beta2(), 0.99);
  EXPECT_DOUBLE_EQ(adam.lr(), 1e-3);  // not set: kept
  EXPECT_EQ(updated->config().schedule().step().step_size(), 10);
  EXPECT_DOUBLE_EQ(updated->config().clipping().max_norm(), 0.5);
  EXPECT_EQ(updated->version(), 1);
  EXPECT_EQ(updated->optimizer_state_bytes(), 2 * 8);  // moments of 2 elements kept

  absl::StatusOr<v1::Session> got = client_->GetSession("update-adam");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_DOUBLE_EQ(got->config().optimizer().adam().beta2(), 0.99);
}

TEST_F(ClientTest, UpdateSessionToAnotherOptimizerKindIsInvalidArgumentAndChangesNothing) {
  ASSERT_TRUE(client_->CreateSession("update-kind", Sgd(0.5), {{"p", {1}, {0}}}).ok());
  v1::UpdateSessionRequest request;
  request.set_session_id("update-kind");
  request.mutable_optimizer()->mutable_adam()->set_lr(0.1);
  EXPECT_EQ(client_->UpdateSession(request).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->SetLearningRate("update-kind", -1).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<v1::Session> got = client_->GetSession("update-kind");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_DOUBLE_EQ(got->config().optimizer().sgd().lr(), 0.5);
  EXPECT_EQ(client_->SetLearningRate("no-such-session", 1).status().code(),
            absl::StatusCode::kNotFound);
}

// --- BF16 / F16 --------------------------------------------------------------------------------

TEST_F(ClientTest, Bf16GradientsAndF16ParametersRoundAsTheWireSays) {
  // p = 0 - 1 * g with g = 1/3 sent as BF16; the parameter comes back as F16.
  ASSERT_TRUE(client_->CreateSession("dtypes", Sgd(1), {{"p", {2}, {0, 0}}}).ok());
  const float third = 1.0f / 3.0f;
  StepOptions options;
  options.gradient_dtype = v1::DTYPE_BF16;
  options.return_dtype = v1::DTYPE_F16;
  absl::StatusOr<StepResult> r = client_->Step("dtypes", {{"p", {2}, {third, -third}}}, options);
  ASSERT_TRUE(r.ok()) << r.status();
  const float sent = Bf16ToFloat(FloatToBf16(third));
  ASSERT_NE(sent, third);  // the gradient really was rounded
  EXPECT_THAT(r->parameters[0].values,
              ElementsAre(F16ToFloat(FloatToF16(-sent)), F16ToFloat(FloatToF16(sent))));

  absl::StatusOr<PullResult> exact = client_->Pull("dtypes");  // F32: what the server holds
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_THAT(exact->tensors[0].values, ElementsAre(-sent, sent));
  absl::StatusOr<PullResult> bf16 = client_->Pull("dtypes", {{}, v1::DTYPE_BF16});
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_THAT(bf16->tensors[0].values, ElementsAre(-sent, sent));  // BF16-exact already
}

// --- Row-sparse steps and row pulls -------------------------------------------------------------

TEST_F(ClientTest, RowSparseStepReturnsTheTouchedRowsAndRowPullsReadChosenRows) {
  std::vector<float> init(4 * 3);
  for (size_t i = 0; i < init.size(); ++i) init[i] = static_cast<float>(i);
  ASSERT_TRUE(
      client_->CreateSession("sparse", Sgd(1), {{"emb", {4, 3}, init}, {"b", {1}, {0}}}).ok());

  // Rows 2 and 0, and row 2 again (summed).
  StepOptions options;
  options.return_parameters = v1::RETURN_PARAMETERS_TOUCHED;
  absl::StatusOr<StepResult> r = client_->Step(
      "sparse",
      {RowSparse("emb", {4, 3}, {2, 0, 2}, {1, 1, 1, 2, 2, 2, 3, 3, 3}), {"b", {1}, {0.5f}}},
      options);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->parameters.size(), 2u);
  const HostTensor* emb = &r->parameters[0];
  const HostTensor* b = &r->parameters[1];
  if (emb->name != "emb") std::swap(emb, b);
  ASSERT_TRUE(emb->row_sparse());
  EXPECT_THAT(*emb->rows, ElementsAre(0, 2));  // sorted, unique
  EXPECT_THAT(emb->shape, ElementsAre(4, 3));
  EXPECT_THAT(emb->values, ElementsAre(-2, -1, 0, 2, 3, 4));  // row 0 - 2, row 2 - (1 + 3)
  EXPECT_FALSE(b->row_sparse());
  EXPECT_THAT(b->values, ElementsAre(-0.5f));

  PullOptions pull;
  pull.rows = {{"emb", {3, 2}}};
  absl::StatusOr<PullResult> rows = client_->Pull("sparse", pull);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->version, 1);
  ASSERT_EQ(rows->tensors.size(), 2u);
  ASSERT_TRUE(rows->tensors[0].row_sparse());
  EXPECT_THAT(*rows->tensors[0].rows, ElementsAre(3, 2));  // in the order asked
  EXPECT_THAT(rows->tensors[0].values, ElementsAre(9, 10, 11, 2, 3, 4));
  EXPECT_FALSE(rows->tensors[1].row_sparse());  // "b": not asked by rows, whole

  pull.rows = {{"emb", {4}}};
  EXPECT_EQ(client_->Pull("sparse", pull).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ClientTest, RowSparseGradientsAreCheckedBeforeSending) {
  ASSERT_TRUE(
      client_->CreateSession("sparse-local", Sgd(1), {{"emb", {4, 3}, std::vector<float>(12)}})
          .ok());
  absl::StatusOr<StepResult> r =
      client_->Step("sparse-local", {RowSparse("emb", {4, 3}, {4}, {1, 1, 1})});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("rows[0] = 4 is out of range: must be in [0, 4)"));
  r = client_->Step("sparse-local", {RowSparse("emb", {4, 3}, {1}, {1, 1})});
  EXPECT_THAT(r.status().message(), HasSubstr("has 2 values"));
  PullOptions pull;
  pull.names = {"emb"};
  pull.rows = {{"other", {0}}};
  EXPECT_THAT(client_->Pull("sparse-local", pull).status().message(),
              HasSubstr("not among PullOptions.names"));
  absl::StatusOr<PullResult> pulled = client_->Pull("sparse-local");
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(pulled->version, 0);
}

// --- Keys, versions and client-side checks ------------------------------------------------------

TEST_F(ClientTest, ResendingASequenceIsADuplicateAndIsNotAppliedAgain) {
  ASSERT_TRUE(client_->CreateSession("resend", Sgd(1), {{"p", {1}, {0}}}).ok());
  StepOptions options;
  options.worker_id = "w0";
  options.sequence = 7;
  absl::StatusOr<StepResult> first = client_->Step("resend", {{"p", {1}, {1}}}, options);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->duplicate);
  EXPECT_EQ(first->sequence, 7);
  absl::StatusOr<StepResult> again = client_->Step("resend", {{"p", {1}, {1}}}, options);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->duplicate);
  EXPECT_EQ(again->version, 1);
  EXPECT_THAT(again->parameters[0].values, ElementsAre(-1.0f));
  absl::StatusOr<PullResult> pulled = client_->Pull("resend");
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(pulled->version, 1);
}

TEST_F(ClientTest, AStaleGradientIsAbortedWithTheCurrentVersion) {
  ASSERT_TRUE(client_->CreateSession("stale", BoundedSgd(1, 0), {{"p", {1}, {0}}}).ok());
  StepOptions options;
  options.version = 0;
  ASSERT_TRUE(client_->Step("stale", {{"p", {1}, {1}}}, options).ok());
  absl::StatusOr<StepResult> r = client_->Step("stale", {{"p", {1}, {1}}}, options);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted) << r.status();
  EXPECT_EQ(CurrentVersion(r.status()), 1);
  EXPECT_EQ(CurrentVersion(absl::AbortedError("no payload")), std::nullopt);

  std::unique_ptr<StepStream> stream = client_->StreamSteps();
  r = stream->Step("stale", {{"p", {1}, {1}}}, options);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted) << r.status();
  EXPECT_EQ(CurrentVersion(r.status()), 1);
  EXPECT_TRUE(stream->Close().ok());
}

TEST_F(ClientTest, RequestsTheClientCanTellAreBadFailBeforeSending) {
  ASSERT_TRUE(client_->CreateSession("local-checks", Sgd(1), {{"p", {1}, {0}}}).ok());
  const std::vector<HostTensor> g = {{"p", {1}, {1}}};
  auto step_error = [&](const StepOptions& options) {
    absl::StatusOr<StepResult> r = client_->Step("local-checks", g, options);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    return std::string(r.status().message());
  };
  StepOptions options;
  options.sequence = 3;
  EXPECT_THAT(step_error(options), HasSubstr("sequence = 3 needs a worker_id"));
  options.worker_id = "bad id";
  EXPECT_THAT(step_error(options), HasSubstr("worker_id 'bad id' contains ' '"));
  options = StepOptions();
  options.loss = std::nan("");
  EXPECT_THAT(step_error(options), HasSubstr("loss = nan; must be finite"));
  options = StepOptions();
  options.version = -2;
  EXPECT_THAT(step_error(options), HasSubstr("version = -2; must be >= 0"));
  options = StepOptions();
  options.return_dtype = static_cast<v1::DType>(9);
  EXPECT_THAT(step_error(options), HasSubstr("return_dtype = 9"));
  EXPECT_THAT(client_->Step("", g).status().message(), HasSubstr("session_id '' has 0 characters"));
  EXPECT_THAT(client_->GetSession("a/b").status().message(), HasSubstr("contains '/'"));
  // "tenant:id" (an admin's name for another tenant's session) passes the client's check; the
  // parts are checked each, and a second ':' is refused.
  EXPECT_EQ(client_->GetSession("acme:run-1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(client_->GetSession("acme:run:1").status().message(), HasSubstr("contains ':'"));
  EXPECT_THAT(client_->GetSession("ac/me:run").status().message(),
              HasSubstr("the tenant of session_id 'ac/me' contains '/'"));
  EXPECT_EQ(client_->ListSessions(1001).status().code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<PullResult> pulled = client_->Pull("local-checks");
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(pulled->version, 0);
}

TEST(ClientUnreachableTest, FailsFastOrWaitsUntilTheDeadline) {
  // Port 1 on loopback: nothing listens there.
  ClientOptions options;
  options.timeout = absl::Milliseconds(300);
  absl::StatusOr<std::unique_ptr<Client>> fast = Client::Connect("127.0.0.1:1", options);
  ASSERT_TRUE(fast.ok()) << fast.status();
  EXPECT_EQ((*fast)->Health().status().code(), absl::StatusCode::kUnavailable);

  options.wait_for_ready = true;
  options.retry = RetryPolicy::None();  // retry_test.cc covers retries
  absl::StatusOr<std::unique_ptr<Client>> patient = Client::Connect("127.0.0.1:1", options);
  ASSERT_TRUE(patient.ok()) << patient.status();
  EXPECT_EQ((*patient)->GetSession("x").status().code(), absl::StatusCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace client
}  // namespace optd
