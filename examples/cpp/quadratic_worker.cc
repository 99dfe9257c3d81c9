// quadratic_worker: a minimal optd worker in C++. It fits w (a vector) to a fixed target by
// minimising the loss 0.5 * ||w - target||^2 through an optd session: each step it computes the
// gradient (w - target) locally, sends it with the loss, and continues from the parameters the
// server returns. Used by the README quick start.
//
//   quadratic_worker --server=127.0.0.1:50051 --session=demo --steps=200
//
// It creates the session (Adam, lr 0.1) when it does not exist yet, and otherwise steps the
// existing one, so several workers can be started against the same session.

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "client/cpp/client.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "optd address");
ABSL_FLAG(std::string, session, "quadratic", "session id (created as Adam(lr=0.1) if absent)");
ABSL_FLAG(int, dim, 8, "length of w");
ABSL_FLAG(int, steps, 200, "steps to run");
ABSL_FLAG(std::string, worker, "cpp-worker", "worker id sent with each step");

namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "quadratic_worker: %s\n", status.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string session = absl::GetFlag(FLAGS_session);
  const int dim = absl::GetFlag(FLAGS_dim);
  auto client = optd::client::Client::Connect(absl::GetFlag(FLAGS_server));
  if (!client.ok()) return Fail(client.status());

  std::vector<float> target(dim);
  for (int i = 0; i < dim; ++i) target[i] = static_cast<float>(i) - dim / 2.0f;

  // Create the session unless another worker already did.
  optd::v1::SessionConfig config;
  config.mutable_optimizer()->mutable_adam()->set_lr(0.1);
  auto created = (*client)->CreateSession(
      session, config, {optd::client::HostTensor{"w", {dim}, std::vector<float>(dim)}});
  if (!created.ok() && created.status().code() != absl::StatusCode::kAlreadyExists) {
    return Fail(created.status());
  }
  auto pulled = (*client)->Pull(session);
  if (!pulled.ok()) return Fail(pulled.status());
  std::vector<float> w = pulled->tensors[0].values;

  optd::client::StepOptions options;
  options.worker_id = absl::GetFlag(FLAGS_worker);
  double loss = 0;
  for (int step = 0; step < absl::GetFlag(FLAGS_steps); ++step) {
    optd::client::HostTensor grad{"w", {dim}, std::vector<float>(dim)};
    loss = 0;
    for (int i = 0; i < dim; ++i) {
      grad.values[i] = w[i] - target[i];
      loss += 0.5 * grad.values[i] * grad.values[i];
    }
    options.loss = loss;
    auto result = (*client)->Step(session, {grad}, options);
    if (!result.ok()) return Fail(result.status());
    w = result->parameters[0].values;
    if (step % 50 == 0) {
      std::printf("step %4d  version %5lld  loss %.6f\n", step,
                  static_cast<long long>(result->version), loss);
    }
  }
  std::printf("final loss %.6f\n", loss);
  return loss < 1e-2 ? 0 : 2;
}
