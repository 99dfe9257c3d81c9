// quadratic_worker: a minimal optd worker in C++. It fits w (a vector of --dim elements) to the
// target t[i] = i - dim/2 by minimising the loss 0.5 * ||w - t||^2 through an optd session: each
// step it computes the gradient (w - t) locally, sends it with the loss, and continues from the
// parameters the server returns. Used by the README quick start and the cross-language test.
//
//   quadratic_worker --server=127.0.0.1:50051 --session=demo --steps=200
//
// Against a session sharded over several optd servers (README "Sharding"), give every shard's
// address instead of --server: --addresses=127.0.0.1:50061,127.0.0.1:50062,127.0.0.1:50063. The
// worker then attaches to the sharded session (any order of the addresses), or creates it with w
// cut into one row range per shard (--split_min_elements, default 1), and steps it through a
// ShardedWorker (every step sent to every shard at once). --stream is not supported then.
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
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/time/clock.h"
#include "client/cpp/client.h"
#include "client/cpp/security_flags.h"
#include "client/cpp/sharded_client.h"
#include "client/cpp/sharded_worker.h"
#include "client/cpp/worker.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "optd address");
ABSL_FLAG(std::vector<std::string>, addresses, {},
          "the addresses of every shard of a sharded session (comma-separated, at least two); "
          "replaces --server");
ABSL_FLAG(int64_t, split_min_elements, 1,
          "with --addresses, when creating: tensors of at least this many elements are cut into "
          "row ranges, one per shard");
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

optd::v1::SessionConfig AdamConfig() {
  optd::v1::SessionConfig config;
  config.mutable_optimizer()->mutable_adam()->set_lr(0.1);
  return config;
}

// What the loop needs of a step, from a Worker or a ShardedWorker.
struct Stepped {
  int64_t version = 0;
  bool duplicate = false;
  int64_t sequence = 0;
  int64_t incarnation = 0;
  std::vector<float> w;
};

// The worker as the loop sees it: its id, pull (w and its version), step, final version.
struct Driver {
  std::string worker_id;
  std::function<absl::StatusOr<std::vector<float>>()> pull;
  std::function<absl::StatusOr<Stepped>(const oc::HostTensor&, const oc::StepOptions&)> step;
  std::function<int64_t()> version;
  std::function<absl::Status()> close = [] { return absl::OkStatus(); };
};

// The sharded session `session`: attached, or created (w of `dim` zeros) if absent and `create`.
// Workers that start together may race to create it; a create that loses is undone (on the
// shards it reached) and the worker attaches again.
absl::StatusOr<oc::ShardedSession> AttachOrCreate(oc::ShardedClient* client,
                                                  const std::string& session, int dim,
                                                  bool create) {
  absl::Status last;
  for (int attempt = 0; attempt < 20; ++attempt) {
    absl::StatusOr<oc::ShardedSession> attached = client->Attach(session);
    if (attached.ok() || attached.status().code() != absl::StatusCode::kNotFound || !create) {
      return attached;
    }
    oc::ShardedCreateOptions options;
    options.split_min_elements = absl::GetFlag(FLAGS_split_min_elements);
    absl::StatusOr<oc::ShardedSession> created = client->CreateSession(
        session, AdamConfig(), {{"w", {dim}, std::vector<float>(dim)}}, options);
    if (created.ok() || created.status().code() != absl::StatusCode::kAlreadyExists) {
      return created;
    }
    last = created.status();
    absl::SleepFor(absl::Milliseconds(50 * (attempt + 1)));
  }
  return last;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string session = absl::GetFlag(FLAGS_session);
  const int dim = absl::GetFlag(FLAGS_dim);
  const int steps = absl::GetFlag(FLAGS_steps);
  const std::vector<std::string> addresses = absl::GetFlag(FLAGS_addresses);
  if (dim < 1 || steps < 0)
    return Fail(absl::InvalidArgumentError("--dim must be >= 1, --steps >= 0"));
  if (!addresses.empty() && absl::GetFlag(FLAGS_stream))
    return Fail(absl::InvalidArgumentError("--stream is not supported with --addresses"));
  oc::ClientOptions client_options;
  oc::ApplySecurityFlags(&client_options);
  oc::WorkerOptions options;
  options.worker_id = absl::GetFlag(FLAGS_worker);
  options.first_sequence = absl::GetFlag(FLAGS_first_sequence);

  std::vector<float> target(dim);
  for (int i = 0; i < dim; ++i) target[i] = static_cast<float>(i) - dim / 2.0f;

  // One server (a Worker, or its WorkerStream) or every shard (a ShardedWorker).
  std::unique_ptr<oc::Client> client;
  std::unique_ptr<oc::Worker> worker;
  std::unique_ptr<oc::WorkerStream> stream;
  std::unique_ptr<oc::ShardedClient> sharded_client;
  std::unique_ptr<oc::ShardedWorker> sharded;
  Driver driver;
  if (addresses.empty()) {
    absl::StatusOr<std::unique_ptr<oc::Client>> connected =
        oc::Client::Connect(absl::GetFlag(FLAGS_server), client_options);
    if (!connected.ok()) return Fail(connected.status());
    client = *std::move(connected);
    if (absl::GetFlag(FLAGS_create)) {  // unless another worker already did
      absl::StatusOr<optd::v1::Session> created =
          client->CreateSession(session, AdamConfig(), {{"w", {dim}, std::vector<float>(dim)}});
      if (!created.ok() && created.status().code() != absl::StatusCode::kAlreadyExists) {
        return Fail(created.status());
      }
    }
    worker = std::make_unique<oc::Worker>(client.get(), session, options);
    if (absl::GetFlag(FLAGS_stream)) stream = worker->OpenStream();
    driver.worker_id = worker->worker_id();
    driver.pull = [&]() -> absl::StatusOr<std::vector<float>> {
      absl::StatusOr<oc::PullResult> pulled = worker->Pull();
      if (!pulled.ok()) return pulled.status();
      return pulled->tensors[0].values;
    };
    driver.step = [&](const oc::HostTensor& grad,
                      const oc::StepOptions& step) -> absl::StatusOr<Stepped> {
      absl::StatusOr<oc::StepResult> r =
          stream ? stream->Step({grad}, step) : worker->Step({grad}, step);
      if (!r.ok()) return r.status();
      return Stepped{r->version, r->duplicate, r->sequence, r->worker_incarnation,
                     r->parameters[0].values};
    };
    driver.version = [&] { return worker->version().value_or(0); };
    driver.close = [&] { return stream ? stream->Close() : absl::OkStatus(); };
  } else {
    absl::StatusOr<std::unique_ptr<oc::ShardedClient>> connected =
        oc::ShardedClient::Connect(addresses, client_options);
    if (!connected.ok()) return Fail(connected.status());
    sharded_client = *std::move(connected);
    absl::StatusOr<oc::ShardedSession> attached =
        AttachOrCreate(sharded_client.get(), session, dim, absl::GetFlag(FLAGS_create));
    if (!attached.ok()) return Fail(attached.status());
    sharded = std::make_unique<oc::ShardedWorker>(sharded_client.get(), *attached, options);
    driver.worker_id = sharded->worker_id();
    driver.pull = [&]() -> absl::StatusOr<std::vector<float>> {
      absl::StatusOr<oc::ShardedPullResult> pulled = sharded->Pull();
      if (!pulled.ok()) return pulled.status();
      return pulled->merged.tensors[0].values;
    };
    driver.step = [&](const oc::HostTensor& grad,
                      const oc::StepOptions& step) -> absl::StatusOr<Stepped> {
      absl::StatusOr<oc::ShardedStepResult> r = sharded->Step({grad}, step);
      if (!r.ok()) return r.status();
      return Stepped{r->merged.version, r->merged.duplicate, r->merged.sequence,
                     r->merged.worker_incarnation, r->merged.parameters[0].values};
    };
    driver.version = [&] { return sharded->version().value_or(0); };
  }
  int64_t first_sequence = 0, last_sequence = 0, incarnation = 0;

  absl::StatusOr<std::vector<float>> pulled = driver.pull();  // w and the version it is at
  if (!pulled.ok()) return Fail(pulled.status());
  std::vector<float> w = *pulled;
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
    absl::StatusOr<Stepped> result = driver.step(grad, step);
    if (result.status().code() == absl::StatusCode::kAborted) {
      // Stale: another worker moved the session on, or the server restarted and restored the
      // session at its checkpoint. Pull and recompute.
      if (oc::ServerRestarted(result.status())) {
        std::printf("the server restarted (incarnation %s): continuing from the restored session\n",
                    oc::ServerIncarnation(result.status()).c_str());
      }
      ++aborted;
      if (++aborts_in_a_row > kMaxConsecutiveAborts) return Fail(result.status());
      pulled = driver.pull();
      if (!pulled.ok()) return Fail(pulled.status());
      w = *pulled;
      continue;
    }
    if (!result.ok()) return Fail(result.status());
    aborts_in_a_row = 0;
    duplicates += result->duplicate ? 1 : 0;
    if (first_sequence == 0) first_sequence = result->sequence;
    last_sequence = result->sequence;
    incarnation = result->incarnation;
    w = std::move(result->w);
    if (applied % 50 == 0) {
      std::printf("step %4d  version %5lld  loss %.6f\n", applied,
                  static_cast<long long>(result->version), loss);
    }
    ++applied;
  }
  if (absl::Status s = driver.close(); !s.ok()) return Fail(s);
  std::printf(
      "worker %s steps %d duplicates %d aborted %d first_sequence %lld last_sequence %lld "
      "incarnation %lld version %lld final loss %.6f\n",
      driver.worker_id.c_str(), applied, duplicates, aborted,
      static_cast<long long>(first_sequence), static_cast<long long>(last_sequence),
      static_cast<long long>(incarnation), static_cast<long long>(driver.version()), loss);
  std::printf("final loss %.6f\n", loss);
  return loss < absl::GetFlag(FLAGS_max_loss) ? 0 : 2;
}
