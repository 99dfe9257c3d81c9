// quadratic_worker: a minimal optd worker in C++. It fits w (a vector of --dim elements) to the
// target t[i] = i - dim/2 by minimising the loss 0.5 * ||w - t||^2 through an optd session: each
// step it computes the gradient (w - t) locally, sends it with the loss, and continues from the
// parameters the server returns. Used by the README quick start and the cross-language test.
//
//   quadratic_worker --server=127.0.0.1:50051 --session=demo --steps=200
//
// Against a server with TLS and tokens: --tls_ca=ca.pem (--tls_cert=PEM --tls_key=PEM for mTLS),
// and the token in OPTD_TOKEN (or --token).
//
// It creates the session (Adam, lr 0.1) when it does not exist yet (unless --nocreate), and
// otherwise steps the existing one, so several workers, in any language, can share a session. It
// steps as an optd::client::Worker: it joins the session (a new incarnation of its worker id, so a
// restarted worker may reuse the id), and every step carries the worker id, the incarnation, the
// next sequence number (1, 2, ...; --first_sequence=N > 0 skips the join: unjoined mode) and the
// version of the parameters it was computed at, so it takes part in ASYNC, SYNC and BOUNDED
// sessions alike and is retried safely (applied once). A stale gradient (ABORTED) makes it pull and
// recompute. --stream steps over one StreamSteps stream (a WorkerStream) instead of one Step call
// per step. It outlasts a restart of a server run with --checkpoint_dir: the step in flight is
// retried until the server is back, refused as stale (the session was restored at its checkpoint),
// and the worker pulls the restored parameters and goes on; it prints a line when that happens.
//
// It prints "step N version V loss L" every 50 steps, then the summary line of the Go example
// worker (client/go/cmd/worker) and the final loss:
//
//   worker W steps N duplicates D aborted A first_sequence F last_sequence S incarnation I ...
//   final loss L
//
// where "..." is "version V final loss L" on the same line; F and S are the sequences of the first
// and the last step applied, I the incarnation of the last (0 in unjoined mode).
//
// and exits 0 if the final loss is below --max_loss (1 on an error, 2 if the loss is too high).

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "client/cpp/client.h"
#include "client/cpp/security_flags.h"
#include "client/cpp/worker.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "optd address");
ABSL_FLAG(std::string, session, "quadratic", "session id (created as Adam(lr=0.1) if absent)");
ABSL_FLAG(bool, create, true, "create the session if it does not exist (--nocreate: attach only)");
ABSL_FLAG(int, dim, 8, "length of w");
ABSL_FLAG(int, steps, 200, "steps to apply");
ABSL_FLAG(std::string, worker, "cpp-worker", "worker id sent with each step");
ABSL_FLAG(int64_t, first_sequence, 0,
          "sequence number of the first step, without joining the session (0: join, and number "
          "from 1)");
ABSL_FLAG(bool, stream, false, "step over one StreamSteps stream instead of unary Step calls");
ABSL_FLAG(double, max_loss, 1e-2, "exit 2 if the final loss is not below this");

namespace {

namespace oc = ::optd::client;

constexpr int kMaxConsecutiveAborts = 100;

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "quadratic_worker: %s\n", status.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string session = absl::GetFlag(FLAGS_session);
  const int dim = absl::GetFlag(FLAGS_dim);
  const int steps = absl::GetFlag(FLAGS_steps);
  if (dim < 1 || steps < 0)
    return Fail(absl::InvalidArgumentError("--dim must be >= 1, --steps >= 0"));
  oc::ClientOptions client_options;
  oc::ApplySecurityFlags(&client_options);
  absl::StatusOr<std::unique_ptr<oc::Client>> client =
      oc::Client::Connect(absl::GetFlag(FLAGS_server), client_options);
  if (!client.ok()) return Fail(client.status());

  std::vector<float> target(dim);
  for (int i = 0; i < dim; ++i) target[i] = static_cast<float>(i) - dim / 2.0f;

  if (absl::GetFlag(FLAGS_create)) {  // unless another worker already did
    optd::v1::SessionConfig config;
    config.mutable_optimizer()->mutable_adam()->set_lr(0.1);
    absl::StatusOr<optd::v1::Session> created =
        (*client)->CreateSession(session, config, {{"w", {dim}, std::vector<float>(dim)}});
    if (!created.ok() && created.status().code() != absl::StatusCode::kAlreadyExists) {
      return Fail(created.status());
    }
  }

  oc::WorkerOptions options;
  options.worker_id = absl::GetFlag(FLAGS_worker);
  options.first_sequence = absl::GetFlag(FLAGS_first_sequence);
  oc::Worker worker(client->get(), session, options);
  std::unique_ptr<oc::WorkerStream> stream;
  if (absl::GetFlag(FLAGS_stream)) stream = worker.OpenStream();
  int64_t first_sequence = 0, last_sequence = 0, incarnation = 0;

  absl::StatusOr<oc::PullResult> pulled = worker.Pull();  // w and the version it is at
  if (!pulled.ok()) return Fail(pulled.status());
  std::vector<float> w = pulled->tensors[0].values;
  double loss = 0;
  int applied = 0, duplicates = 0, aborted = 0, aborts_in_a_row = 0;
  while (applied < steps) {
    oc::HostTensor grad{"w", {dim}, std::vector<float>(dim)};
    loss = 0;
    for (int i = 0; i < dim; ++i) {
      grad.values[i] = w[i] - target[i];
      loss += 0.5 * grad.values[i] * grad.values[i];
    }
    oc::StepOptions step;
    step.loss = loss;
    absl::StatusOr<oc::StepResult> result =
        stream ? stream->Step({grad}, step) : worker.Step({grad}, step);
    if (result.status().code() == absl::StatusCode::kAborted) {
      // Stale: another worker moved the session on, or the server restarted and restored the
      // session at its checkpoint. Pull and recompute.
      if (oc::ServerRestarted(result.status())) {
        std::printf("the server restarted (incarnation %s): continuing from the restored session\n",
                    oc::ServerIncarnation(result.status()).c_str());
      }
      ++aborted;
      if (++aborts_in_a_row > kMaxConsecutiveAborts) return Fail(result.status());
      pulled = worker.Pull();
      if (!pulled.ok()) return Fail(pulled.status());
      w = pulled->tensors[0].values;
      continue;
    }
    if (!result.ok()) return Fail(result.status());
    aborts_in_a_row = 0;
    duplicates += result->duplicate ? 1 : 0;
    if (first_sequence == 0) first_sequence = result->sequence;
    last_sequence = result->sequence;
    incarnation = result->worker_incarnation;
    w = result->parameters[0].values;
    if (applied % 50 == 0) {
      std::printf("step %4d  version %5lld  loss %.6f\n", applied,
                  static_cast<long long>(result->version), loss);
    }
    ++applied;
  }
  if (stream) {
    if (absl::Status s = stream->Close(); !s.ok()) return Fail(s);
  }
  std::printf(
      "worker %s steps %d duplicates %d aborted %d first_sequence %lld last_sequence %lld "
      "incarnation %lld version %lld final loss %.6f\n",
      worker.worker_id().c_str(), applied, duplicates, aborted,
      static_cast<long long>(first_sequence), static_cast<long long>(last_sequence),
      static_cast<long long>(incarnation), static_cast<long long>(worker.version().value_or(0)),
      loss);
  std::printf("final loss %.6f\n", loss);
  return loss < absl::GetFlag(FLAGS_max_loss) ? 0 : 2;
}
