// optd-shard-bench: one session of --tensors x [--rows, --cols] float32 parameters (default 8 x
// 1M = 8M, Adam) stepped by --workers workers (default 4, ASYNC), held by 1, 2 and 4 optd shard
// processes in turn, side by side in one run (README "Sharding"). One shard is an ordinary
// session stepped by Workers (client/cpp/worker.h); 2 and 4 shards are a sharded session stepped
// by ShardedWorkers (client/cpp/sharded_worker.h), each step cut along the placement and sent to
// every shard at once.
//
// About 20 seconds with the defaults on 2 cores. Each phase creates the session, lets every worker
// join, then runs --steps steps per worker (or until --seconds pass) and reports, per shard count:
//   steps/s       steps applied per second, all workers together (one worker's step on every
//                 shard counts once);
//   p50 ms        median latency of a worker's step (all shards answered);
//   CPU s/step    each shard process's user + system CPU over the phase (/proc/<pid>/stat, utime
//                 + stime) per step, and their sum;
//   client CPU    this process's CPU (the workers: cutting, encoding, decoding, assembling) per
//                 step, likewise;
//   MB/step       per shard, the message bytes of one worker step's request (gradients) and reply
//                 (parameters, RETURN_PARAMETERS_ALL), protobuf sizes.
// The phases alternate over --rounds rounds (1 2 4, 4 2 1, ...); a cell is the median over rounds
// with the range [min-max] beside it.
//
// This process tunes glibc malloc as optd does (server/malloc_tuning.h), so that the workers'
// multi-megabyte buffers are reused rather than page-faulted in anew at every step.
//
// Servers: as many optd processes as the largest --shards count (--optd_binary, 127.0.0.1:0, no
// metrics), started at the beginning; a phase of N shards uses the first N. They are stopped by
// pid at the end (SIGTERM, then SIGKILL), on error paths too (bench/child_process.h).
//
//   optd-shard-bench                       # 8M parameters, 4 workers, 1 2 4 shards, 3 rounds
//   optd-shard-bench --mode=sync --rounds=3
//   optd-shard-bench --tensors=1 --rows=8192 --cols=1024 --split_min_elements=1048576

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/child_process.h"
#include "client/cpp/client.h"
#include "client/cpp/sharded_client.h"
#include "client/cpp/sharded_worker.h"
#include "client/cpp/worker.h"
#include "server/malloc_tuning.h"

#ifndef OPTD_BENCH_OPTD_BINARY
#define OPTD_BENCH_OPTD_BINARY "optd"
#endif

ABSL_FLAG(std::string, optd_binary, OPTD_BENCH_OPTD_BINARY, "The optd binary to start.");
ABSL_FLAG(std::vector<std::string>, shards, std::vector<std::string>({"1", "2", "4"}),
          "Shard counts to compare, each >= 1.");
ABSL_FLAG(int, workers, 4, "Worker threads, each with its own channels, one step in flight each.");
ABSL_FLAG(int, tensors, 8, "Tensors of the model.");
ABSL_FLAG(int64_t, rows, 1024, "Rows of each tensor.");
ABSL_FLAG(int64_t, cols, 1024, "Columns of each tensor.");
ABSL_FLAG(int64_t, split_min_elements, 0,
          "Tensors of at least this many elements are cut into row ranges (0: optd's 4Mi).");
ABSL_FLAG(std::string, mode, "async", "async, or sync (a barrier of --workers gradients).");
ABSL_FLAG(int, steps, 6, "Steps per worker per phase.");
ABSL_FLAG(double, seconds, 20, "At most this long per phase (workers stop after their step).");
ABSL_FLAG(int, rounds, 3, "Rounds; the phases alternate their order from round to round.");

namespace {

namespace oc = ::optd::client;
using ::optd::bench::ChildProcess;

// user + system CPU seconds of `pid` so far, from /proc/<pid>/stat (fields 14 and 15).
absl::StatusOr<double> CpuSeconds(pid_t pid) {
  const std::string path = absl::StrCat("/proc/", pid, "/stat");
  const int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return absl::NotFoundError(path);
  char buf[4096];
  const ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return absl::InternalError(absl::StrCat("cannot read ", path));
  const std::string text(buf, n);
  const size_t paren = text.rfind(')');  // the command name may hold spaces
  std::vector<std::string> fields = absl::StrSplit(text.substr(paren + 2), ' ');
  // After ") ": field 3 (state) is fields[0], so utime (14) and stime (15) are [11] and [12].
  int64_t utime = 0, stime = 0;
  if (fields.size() < 13 || !absl::SimpleAtoi(fields[11], &utime) ||
      !absl::SimpleAtoi(fields[12], &stime)) {
    return absl::InternalError(absl::StrCat("cannot parse ", path));
  }
  return static_cast<double>(utime + stime) / sysconf(_SC_CLK_TCK);
}

struct Phase {
  int shards = 0;
  int64_t steps = 0;
  double seconds = 0;
  double p50_ms = 0;
  std::vector<double> cpu_per_step;  // by shard
  double client_cpu_per_step = 0;    // this process
  std::vector<double> sent_mb;       // by shard, one worker step's request
  std::vector<double> received_mb;   // by shard, its reply
  double steps_per_s() const { return steps / seconds; }
};

std::vector<oc::HostTensor> Model(float fill) {
  std::vector<oc::HostTensor> out;
  const int64_t rows = absl::GetFlag(FLAGS_rows), cols = absl::GetFlag(FLAGS_cols);
  for (int t = 0; t < absl::GetFlag(FLAGS_tensors); ++t) {
    oc::HostTensor tensor{absl::StrCat("t", t), {rows, cols}, {}};
    tensor.values.resize(rows * cols);
    for (int64_t i = 0; i < rows * cols; ++i) {
      tensor.values[i] = fill * static_cast<float>((i * 7919 + t) % 1000 - 500) / 500.0f;
    }
    out.push_back(std::move(tensor));
  }
  return out;
}

optd::v1::SessionConfig Config() {
  optd::v1::SessionConfig config;
  config.mutable_optimizer()->mutable_adam()->set_lr(1e-3);
  if (absl::GetFlag(FLAGS_mode) == "sync") {
    config.mutable_consistency()->set_mode(optd::v1::Consistency::MODE_SYNC);
    config.mutable_consistency()->set_workers(absl::GetFlag(FLAGS_workers));
    config.mutable_consistency()->set_barrier_timeout_seconds(60);
  }
  return config;
}

// Message bytes (MB) of each shard's request for `grads` and of its reply's parameters.
absl::Status MeasureBytes(const std::vector<std::vector<oc::HostTensor>>& per_shard,
                          uint64_t fingerprint, Phase* phase) {
  for (const std::vector<oc::HostTensor>& part : per_shard) {
    oc::StepOptions options;
    options.worker_id = "bench-w0";
    options.sequence = 1;
    options.version = 0;
    options.placement_fingerprint = fingerprint;
    absl::StatusOr<optd::v1::StepRequest> request =
        oc::MakeStepRequest("shard-bench", part, options);
    if (!request.ok()) return request.status();
    optd::v1::StepResponse reply;
    for (const oc::HostTensor& t : part) {
      absl::StatusOr<optd::v1::Tensor> p = oc::HostTensorToProto(t);
      if (!p.ok()) return p.status();
      *reply.add_parameters() = *std::move(p);
    }
    reply.set_version(1);
    phase->sent_mb.push_back(request->ByteSizeLong() / 1e6);
    phase->received_mb.push_back(reply.ByteSizeLong() / 1e6);
  }
  return absl::OkStatus();
}

// One phase: the session on the first `n` servers, --workers workers, --steps steps each.
absl::StatusOr<Phase> RunPhase(const std::vector<std::unique_ptr<ChildProcess>>& servers, int n,
                               const std::vector<oc::HostTensor>& model,
                               const std::vector<oc::HostTensor>& grads) {
  const std::string id = absl::StrCat("shard-bench-", n);
  const int workers = absl::GetFlag(FLAGS_workers);
  Phase phase;
  phase.shards = n;
  std::unique_ptr<oc::Client> single;
  std::unique_ptr<oc::ShardedClient> sharded;
  std::optional<oc::ShardedSession> session;
  // One step of worker w, by type of session.
  std::vector<std::function<absl::Status()>> steps(workers);
  std::vector<std::function<absl::Status()>> joins(workers);
  std::vector<std::unique_ptr<oc::Worker>> plain_workers;
  std::vector<std::unique_ptr<oc::ShardedWorker>> sharded_workers;
  // Each worker its own Client (its own channel), as separate processes would have.
  std::vector<std::unique_ptr<oc::Client>> worker_clients;
  std::vector<std::unique_ptr<oc::ShardedClient>> worker_sharded;
  oc::StepOptions step_options;
  if (n == 1) {
    absl::StatusOr<std::unique_ptr<oc::Client>> c = oc::Client::Connect(servers[0]->address());
    if (!c.ok()) return c.status();
    single = *std::move(c);
    if (absl::StatusOr<optd::v1::Session> s = single->CreateSession(id, Config(), model); !s.ok()) {
      return s.status();
    }
    if (absl::Status s = MeasureBytes({grads}, 0, &phase); !s.ok()) return s;
    for (int w = 0; w < workers; ++w) {
      absl::StatusOr<std::unique_ptr<oc::Client>> wc = oc::Client::Connect(servers[0]->address());
      if (!wc.ok()) return wc.status();
      worker_clients.push_back(*std::move(wc));
      oc::WorkerOptions options;
      options.worker_id = absl::StrCat("bench-w", w);
      options.version = 0;
      plain_workers.push_back(
          std::make_unique<oc::Worker>(worker_clients.back().get(), id, options));
      oc::Worker* worker = plain_workers.back().get();
      joins[w] = [worker] { return worker->Join(); };
      steps[w] = [worker, &grads, &step_options] {
        return worker->Step(grads, step_options).status();
      };
    }
  } else {
    std::vector<std::string> addresses;
    for (int i = 0; i < n; ++i) addresses.push_back(servers[i]->address());
    absl::StatusOr<std::unique_ptr<oc::ShardedClient>> c = oc::ShardedClient::Connect(addresses);
    if (!c.ok()) return c.status();
    sharded = *std::move(c);
    oc::ShardedCreateOptions create;
    create.split_min_elements = absl::GetFlag(FLAGS_split_min_elements);
    absl::StatusOr<oc::ShardedSession> s = sharded->CreateSession(id, Config(), model, create);
    if (!s.ok()) return s.status();
    session = *std::move(s);
    absl::StatusOr<std::vector<std::vector<oc::HostTensor>>> parts = session->slices->Split(grads);
    if (!parts.ok()) return parts.status();
    if (absl::Status st = MeasureBytes(*parts, session->fingerprint(), &phase); !st.ok()) {
      return st;
    }
    for (int w = 0; w < workers; ++w) {
      absl::StatusOr<std::unique_ptr<oc::ShardedClient>> wc = oc::ShardedClient::Connect(addresses);
      if (!wc.ok()) return wc.status();
      worker_sharded.push_back(*std::move(wc));
      oc::WorkerOptions options;
      options.worker_id = absl::StrCat("bench-w", w);
      options.version = 0;
      sharded_workers.push_back(
          std::make_unique<oc::ShardedWorker>(worker_sharded.back().get(), *session, options));
      oc::ShardedWorker* worker = sharded_workers.back().get();
      joins[w] = [worker] { return worker->Join(); };
      steps[w] = [worker, &grads, &step_options] {
        return worker->Step(grads, step_options).status();
      };
    }
  }
  for (int w = 0; w < workers; ++w) {
    if (absl::Status s = joins[w](); !s.ok()) return s;
  }

  absl::StatusOr<double> client_before = CpuSeconds(getpid());
  if (!client_before.ok()) return client_before.status();
  std::vector<double> cpu_before(n);
  for (int i = 0; i < n; ++i) {
    absl::StatusOr<double> cpu = CpuSeconds(servers[i]->pid());
    if (!cpu.ok()) return cpu.status();
    cpu_before[i] = *cpu;
  }
  const int steps_per_worker = absl::GetFlag(FLAGS_steps);
  const absl::Time start = absl::Now();
  const absl::Time stop = start + absl::Seconds(absl::GetFlag(FLAGS_seconds));
  std::vector<std::vector<double>> latencies(workers);
  std::vector<absl::Status> failures(workers);
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      for (int i = 0; i < steps_per_worker && absl::Now() < stop; ++i) {
        const absl::Time t0 = absl::Now();
        absl::Status s = steps[w]();
        if (!s.ok()) {
          failures[w] = s;
          return;
        }
        latencies[w].push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  phase.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  absl::StatusOr<double> client_after = CpuSeconds(getpid());
  if (!client_after.ok()) return client_after.status();
  for (const absl::Status& f : failures) {
    if (!f.ok()) return f;
  }
  std::vector<double> all;
  for (const std::vector<double>& l : latencies) all.insert(all.end(), l.begin(), l.end());
  if (all.empty()) return absl::DeadlineExceededError("no step finished within --seconds");
  std::sort(all.begin(), all.end());
  phase.steps = static_cast<int64_t>(all.size());
  phase.p50_ms = all[all.size() / 2];
  phase.client_cpu_per_step = (*client_after - *client_before) / phase.steps;
  for (int i = 0; i < n; ++i) {
    absl::StatusOr<double> cpu = CpuSeconds(servers[i]->pid());
    if (!cpu.ok()) return cpu.status();
    phase.cpu_per_step.push_back((*cpu - cpu_before[i]) / phase.steps);
  }
  absl::Status deleted = n == 1 ? single->DeleteSession(id) : sharded->DeleteSession(*session);
  if (!deleted.ok()) return deleted;
  return phase;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 == 1 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// "median [min-max]" of one column over rounds, with `decimals` digits.
std::string Cell(const std::vector<double>& v, int decimals) {
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return absl::StrFormat("%.*f [%.*f-%.*f]", decimals, Median(v), decimals, *lo, decimals, *hi);
}

int Run() {
  std::vector<int> counts;
  for (const std::string& s : absl::GetFlag(FLAGS_shards)) {
    int n = 0;
    if (!absl::SimpleAtoi(s, &n) || n < 1 || n > 64) {
      std::fprintf(stderr, "optd-shard-bench: --shards: %s is not a shard count in [1, 64]\n",
                   s.c_str());
      return 1;
    }
    counts.push_back(n);
  }
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (counts.empty() || absl::GetFlag(FLAGS_workers) < 1 || absl::GetFlag(FLAGS_steps) < 1 ||
      absl::GetFlag(FLAGS_rounds) < 1 || absl::GetFlag(FLAGS_tensors) < 1 ||
      (mode != "async" && mode != "sync")) {
    std::fprintf(stderr, "optd-shard-bench: bad flags (see --help)\n");
    return 1;
  }
  const int max_shards = *std::max_element(counts.begin(), counts.end());
  std::vector<std::unique_ptr<ChildProcess>> servers;
  for (int i = 0; i < max_shards; ++i) {
    absl::StatusOr<std::unique_ptr<ChildProcess>> optd =
        ChildProcess::Start({absl::GetFlag(FLAGS_optd_binary), "--listen=127.0.0.1:0",
                             "--metrics_listen=", "--shutdown_grace=0s", "--audit_log="},
                            absl::Seconds(30));
    if (!optd.ok()) {
      std::fprintf(stderr, "optd-shard-bench: %s\n", optd.status().ToString().c_str());
      return 1;
    }
    servers.push_back(*std::move(optd));
  }
  const std::vector<oc::HostTensor> model = Model(1.0f);
  const std::vector<oc::HostTensor> grads = Model(0.01f);
  int64_t params = 0;
  for (const oc::HostTensor& t : model) params += t.num_elements();
  std::printf(
      "optd-shard-bench: %lld float32 parameters (%d x [%lld, %lld]), Adam, %s, %d "
      "workers, %d steps each, %d rounds; shards on 127.0.0.1, %ld cores\n",
      static_cast<long long>(params), absl::GetFlag(FLAGS_tensors),
      static_cast<long long>(absl::GetFlag(FLAGS_rows)),
      static_cast<long long>(absl::GetFlag(FLAGS_cols)), mode.c_str(), absl::GetFlag(FLAGS_workers),
      absl::GetFlag(FLAGS_steps), absl::GetFlag(FLAGS_rounds), sysconf(_SC_NPROCESSORS_ONLN));

  std::vector<std::vector<Phase>> phases(counts.size());  // by shard count, by round
  for (int round = 0; round < absl::GetFlag(FLAGS_rounds); ++round) {
    for (size_t k = 0; k < counts.size(); ++k) {
      const size_t c = round % 2 == 0 ? k : counts.size() - 1 - k;
      absl::StatusOr<Phase> phase = RunPhase(servers, counts[c], model, grads);
      if (!phase.ok()) {
        std::fprintf(stderr, "optd-shard-bench: %d shards: %s\n", counts[c],
                     phase.status().ToString().c_str());
        return 1;
      }
      std::printf(
          "round %d  %d shard%s  %5.2f steps/s  p50 %7.1f ms  client CPU s/step %.3f  shards' "
          "CPU s/step [%s]\n",
          round + 1, counts[c], counts[c] == 1 ? " " : "s", phase->steps_per_s(), phase->p50_ms,
          phase->client_cpu_per_step,
          absl::StrJoin(phase->cpu_per_step, " ", [](std::string* out, double v) {
            absl::StrAppend(out, absl::StrFormat("%.3f", v));
          }).c_str());
      std::fflush(stdout);
      phases[c].push_back(*std::move(phase));
    }
  }

  std::printf(
      "\n| shards | steps/s | p50 ms | shards' CPU s/step (sum) | CPU s/step per shard | client "
      "CPU s/step | MB/step per shard sent / received |\n|---|---|---|---|---|---|---|\n");
  for (size_t c = 0; c < counts.size(); ++c) {
    std::vector<double> rate, p50, cpu_sum, client_cpu;
    std::vector<std::vector<double>> cpu(counts[c]);
    for (const Phase& p : phases[c]) {
      rate.push_back(p.steps_per_s());
      p50.push_back(p.p50_ms);
      client_cpu.push_back(p.client_cpu_per_step);
      double sum = 0;
      for (int i = 0; i < counts[c]; ++i) {
        cpu[i].push_back(p.cpu_per_step[i]);
        sum += p.cpu_per_step[i];
      }
      cpu_sum.push_back(sum);
    }
    std::vector<std::string> per_shard_cpu, bytes;
    for (int i = 0; i < counts[c]; ++i) {
      per_shard_cpu.push_back(absl::StrFormat("%.3f", Median(cpu[i])));
      bytes.push_back(
          absl::StrFormat("%.1f / %.1f", phases[c][0].sent_mb[i], phases[c][0].received_mb[i]));
    }
    std::printf("| %d | %s | %s | %s | %s | %s | %s |\n", counts[c], Cell(rate, 2).c_str(),
                Cell(p50, 0).c_str(), Cell(cpu_sum, 3).c_str(),
                absl::StrJoin(per_shard_cpu, ", ").c_str(), Cell(client_cpu, 3).c_str(),
                absl::StrJoin(bytes, "; ").c_str());
  }
  for (std::unique_ptr<ChildProcess>& s : servers) s->Terminate();
  for (std::unique_ptr<ChildProcess>& s : servers) s->Stop().IgnoreError();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "optd-shard-bench: one session's steps/s over 1, 2 and 4 optd shards (see the top of "
      "bench/shard_bench.cc)");
  absl::ParseCommandLine(argc, argv);
  // The workers move 33.6 MB each way per step, as optd does: reuse freed buffers rather than
  // page-fault fresh ones (server/malloc_tuning.h), like optd on the other side.
  optd::TuneMallocForLargeMessages();
  return Run();
}
