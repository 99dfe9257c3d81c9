// optd-bench: load generator for a running optd, measured side by side with a raw gRPC echo of the
// same bytes (the transport ceiling), because absolute times on the project's shared 2-core
// machines swing by +-20% while ratios measured in one run hold.
//
// Benchmarks (each alternates its contestants over --rounds rounds, AB BA AB ...; a row is the
// median over rounds of each column, a ratio row the median of the per-round ratios):
//   (default)         optd vs echo: N workers x --params x --mode x --dtype, unary or --stream.
//                     Rows optd, echo, optd/echo: steps/s, parameters/s, MB/s (request + reply
//                     message bytes), p50 and p99 latency (µs), server CPU µs per step.
//   --compare_dtypes  optd only, F32 vs BF16 vs F16 on the wire (gradients and replies), same
//                     workload; rows per dtype and the BF16/F32, F16/F32 ratios.
//   --suite           the three targets, PASS/FAIL next to each measured ratio:
//                       1. 1M-parameter Adam F32 step, one worker: parameters/s >= 0.85 x echo;
//                       2. 1K-parameter step, one worker: p50 <= 1.25 x echo p50;
//                       3. BF16 on the wire moves >= 1.6 x the parameters/s of F32 (1M, Adam).
//                     Exit status 0 whatever the verdicts: benchmarks report, tests assert.
//   --compare_tls     optd plaintext vs optd with TLS (a second optd, --tls_cert/--tls_key, its
//                     certificate made by `openssl req` at start-up), 1 worker, Adam, F32, at 1M
//                     and 1K parameters; goals: 1M parameters/s >= 0.8 x plaintext, 1K p50 <= 1.3
//                     x.
//
// Servers: without --server, optd-bench starts optd itself (--optd_binary) on 127.0.0.1:0, with its
// metrics exporter on 127.0.0.1:0 too (parallel runs never collide); it always starts its own
// optd-echo (--echo_binary) on 127.0.0.1:0, so both servers are separate processes on equal
// footing. Both are stopped by pid at the end (SIGTERM, 5 s, SIGKILL), on error paths too. Every
// phase is bounded by --steps per worker and its share of --seconds.
//
//   optd-bench --workers=2 --params=1000 --steps=200
//   optd-bench --compare_dtypes --params=1000000
//   optd-bench --suite
//   optd-bench --compare_tls

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "bench/child_process.h"
#include "bench/load.h"
#include "bench/round_summary.h"
#include "bench/self_signed.h"

#ifndef OPTD_BENCH_OPTD_BINARY
#define OPTD_BENCH_OPTD_BINARY "optd"
#endif
#ifndef OPTD_BENCH_ECHO_BINARY
#define OPTD_BENCH_ECHO_BINARY "optd-echo"
#endif

ABSL_FLAG(std::string, server, "",
          "host:port of a running optd to measure. Empty: start --optd_binary on 127.0.0.1:0 and "
          "stop it at the end.");
ABSL_FLAG(
    std::string, optd_binary, OPTD_BENCH_OPTD_BINARY,
    "The optd binary started when --server is empty (default: the one built with this tool).");
ABSL_FLAG(std::string, echo_binary, OPTD_BENCH_ECHO_BINARY,
          "The optd-echo binary; optd-bench always starts its own echo server on 127.0.0.1:0.");
ABSL_FLAG(int, workers, 1,
          "Worker threads, each with its own channel (TCP connection), one call in flight each. "
          "In --mode=sync also the session's K (gradients per step).");
ABSL_FLAG(
    int64_t, params, 1000000,
    "Float parameters of the session, as a [rows, 256] matrix and a bias of the rest (>= 2).");
ABSL_FLAG(std::string, optimizer, "adam",
          "adam | sgd | adagrad | normalized_gd (torch defaults; "
          "sgd with lr 0.01).");
ABSL_FLAG(std::string, mode, "async",
          "async | sync | bounded. sync: K = --workers gradients per step, each sent with the "
          "version of the previous reply. bounded: versions sent, --max_staleness enforced.");
ABSL_FLAG(int64_t, max_staleness, 8, "--mode=bounded: the session's max_staleness.");
ABSL_FLAG(std::string, dtype, "f32",
          "f32 | bf16 | f16: the wire encoding of the gradients sent and the parameters returned.");
ABSL_FLAG(std::string, return, "all",
          "all | none: whether each Step reply carries every parameter. With none the echo "
          "replies with a reply of the same (tiny) size.");
ABSL_FLAG(bool, stream, false, "Use StreamSteps (and EchoStream) instead of unary calls.");
ABSL_FLAG(int64_t, steps, 1000, "Measured steps per worker per phase, at most.");
ABSL_FLAG(int64_t, warmup, 20, "Unmeasured steps per worker before each phase's measured part.");
ABSL_FLAG(double, seconds, 60,
          "Time budget of the whole run: each phase (one contestant, one round) gets an equal "
          "share and stops when it is spent or --steps are done, whichever comes first.");
ABSL_FLAG(int, rounds, 5,
          "Rounds per contestant, interleaved (ABAB, BABA, ...). Rows report the median over "
          "rounds of each column; ratio rows the median of the per-round ratios.");
ABSL_FLAG(bool, compare_dtypes, false,
          "Run F32, BF16 and F16 back to back (optd only) and print parameters/s and the "
          "BF16/F32 ratio.");
ABSL_FLAG(bool, suite, false,
          "Run the three issue targets (1M Adam F32 vs echo; 1K p50 vs echo p50; BF16 vs F32 "
          "parameters/s at 1M), one worker each, and print PASS/FAIL per target. Honours "
          "--stream, --steps, --warmup, --seconds, --rounds; fixes the rest.");
ABSL_FLAG(bool, compare_tls, false,
          "optd plaintext vs optd with TLS, 1M and 1K parameters (starts both servers itself).");
ABSL_FLAG(bool, verbose, false, "Also print every round's numbers.");

namespace optd {
namespace bench {
namespace {

struct Servers {
  std::unique_ptr<ChildProcess> optd;  // null with --server
  std::unique_ptr<ChildProcess> echo;
  std::unique_ptr<ChildProcess> tls_optd;  // --compare_tls only: optd and optd-echo with TLS
  std::unique_ptr<ChildProcess> tls_echo;
  std::string optd_address;
  std::string echo_address;
  std::string tls_address;
  std::string tls_echo_address;
  std::string tls_ca_pem;  // the TLS optd's (self-signed) certificate
};

// Settings shared by every comparison of a run.
struct RunContext {
  Servers* servers = nullptr;
  PhaseBounds bounds;  // `time` is each phase's share of --seconds
  int rounds = 3;
  bool verbose = false;
  int sessions = 0;  // sessions created so far, for unique ids
};

double ChildCpuSeconds(const void* arg) {
  absl::StatusOr<CpuTime> t = static_cast<const ChildProcess*>(arg)->Cpu();
  return t.ok() ? absl::ToDoubleSeconds(t->total) : -1;
}

// `dtype`: false when the rows are the dtypes.
std::string Describe(const Workload& w, const RunContext& run, bool dtype = true) {
  return absl::StrCat(
      w.workers, " worker", w.workers == 1 ? "" : "s", " x ", w.params, " params, ", w.optimizer,
      ", ", ModeName(w.mode),
      w.mode == optd::v1::Consistency::MODE_BOUNDED
          ? absl::StrCat(" (max_staleness ", w.max_staleness, ")")
          : std::string(),
      ", ", dtype ? DTypeName(w.dtype) : "each dtype", " on the wire, return ",
      w.return_all ? "all" : "none", ", ", w.stream ? "stream" : "unary", "; ", run.rounds,
      " rounds (rows: medians; ratios: median per-round ratio); a phase is <= ", run.bounds.steps,
      " steps/worker (+", run.bounds.warmup, " warm-up) or ",
      absl::StrFormat("%.2f s", absl::ToDoubleSeconds(run.bounds.time)));
}

absl::StatusOr<std::unique_ptr<OptdTarget>> NewOptdTarget(const Workload& w, RunContext& run) {
  const std::string id =
      absl::StrCat("optd-bench-", static_cast<long long>(getpid()), "-", ++run.sessions);
  return OptdTarget::Create(run.servers->optd_address, w, id);
}

absl::Status CheckMeasured(const PhaseStats& s, absl::string_view who, const RunContext& run) {
  if (s.steps > 0) return absl::OkStatus();
  return absl::DeadlineExceededError(
      absl::StrCat(who, " made no measured step within ", absl::FormatDuration(run.bounds.time),
                   " (its share of --seconds): raise --seconds or lower --warmup"));
}

struct Comparison {
  Summary optd;
  Summary echo;
  Summary ratio;  // optd / echo: RoundRatios
};

// optd and the echo, alternating: round 1 optd first (its replies size the echo), round 2 echo
// first, and so on.
absl::StatusOr<Comparison> CompareWithEcho(const Workload& w, RunContext& run) {
  absl::StatusOr<std::unique_ptr<OptdTarget>> optd = NewOptdTarget(w, run);
  if (!optd.ok()) return optd.status();
  absl::StatusOr<std::unique_ptr<EchoTarget>> echo =
      EchoTarget::Create(run.servers->echo_address, w.workers, w.stream);
  if (!echo.ok()) return echo.status();
  const ChildProcess* optd_process = run.servers->optd.get();
  const ChildProcess* echo_process = run.servers->echo.get();

  std::printf("\noptd vs echo: %s\n", Describe(w, run).c_str());
  std::vector<PhaseStats> optd_rounds, echo_rounds;
  for (int r = 0; r < run.rounds; ++r) {
    for (int k = 0; k < 2; ++k) {
      const bool optd_turn = (k == 0) == (r % 2 == 0);
      absl::StatusOr<PhaseStats> s =
          optd_turn ? (*optd)->RunPhase(run.bounds, optd_process ? &ChildCpuSeconds : nullptr,
                                        optd_process)
                    : (*echo)->RunPhase(run.bounds, &ChildCpuSeconds, echo_process);
      const char* name = optd_turn ? "optd" : "echo";
      if (!s.ok()) {
        return absl::Status(s.status().code(), absl::StrCat(name, ": ", s.status().message()));
      }
      if (absl::Status c = CheckMeasured(*s, name, run); !c.ok()) return c;
      if (run.verbose) PrintRound(name, r, *s, w.params);
      if (optd_turn) (*echo)->MatchSizes((*optd)->request_bytes(), (*optd)->reply_bytes());
      (optd_turn ? optd_rounds : echo_rounds).push_back(*std::move(s));
    }
  }
  Comparison c{Summarize(optd_rounds, w.params), Summarize(echo_rounds, w.params),
               RoundRatios(optd_rounds, echo_rounds)};
  std::printf(
      "message bytes per step: Step request %lld, reply %lld; Echo request %lld, "
      "reply %lld\n",
      static_cast<long long>((*optd)->request_bytes()),
      static_cast<long long>((*optd)->reply_bytes()),
      static_cast<long long>((*echo)->request_bytes()),
      static_cast<long long>((*echo)->reply_bytes()));
  PrintColumns();
  PrintRow("optd", c.optd);
  PrintRow("echo", c.echo);
  PrintRatio("optd/echo", c.ratio);
  if (w.mode == optd::v1::Consistency::MODE_BOUNDED) {
    std::printf("stale steps refused (all rounds): %lld\n", static_cast<long long>(c.optd.refused));
  }
  return c;
}

struct TargetComparison {
  std::vector<Summary> rows;    // one per target
  std::vector<Summary> ratios;  // target i / target 0, for i >= 1: RoundRatios
};

// One side of a comparison: a name, a phase to run, and the parameters a step moves.
struct Contestant {
  std::string name;
  std::function<absl::StatusOr<PhaseStats>(const PhaseBounds&)> run_phase;
  int64_t params = 0;
};

Contestant OptdContestant(std::string name, OptdTarget* target, const ChildProcess* process) {
  return {std::move(name),
          [target, process](const PhaseBounds& bounds) {
            return target->RunPhase(bounds, process ? &ChildCpuSeconds : nullptr, process);
          },
          target->workload().params};
}

// The contestants, rotating the order every round; ratios are to the first.
absl::StatusOr<TargetComparison> CompareTargets(const std::vector<Contestant>& contestants,
                                                const RunContext& run) {
  const size_t n = contestants.size();
  std::vector<std::vector<PhaseStats>> rounds(n);
  for (int r = 0; r < run.rounds; ++r) {
    for (size_t k = 0; k < n; ++k) {
      const size_t i = (k + r) % n;
      const Contestant& who = contestants[i];
      absl::StatusOr<PhaseStats> s = who.run_phase(run.bounds);
      if (!s.ok()) {
        return absl::Status(s.status().code(), absl::StrCat(who.name, ": ", s.status().message()));
      }
      if (absl::Status c = CheckMeasured(*s, who.name, run); !c.ok()) return c;
      if (run.verbose) PrintRound(who.name, r, *s, who.params);
      rounds[i].push_back(*std::move(s));
    }
  }
  TargetComparison c;
  PrintColumns();
  for (size_t i = 0; i < n; ++i) {
    c.rows.push_back(Summarize(rounds[i], contestants[i].params));
    PrintRow(contestants[i].name, c.rows.back());
  }
  for (size_t i = 1; i < n; ++i) {
    c.ratios.push_back(RoundRatios(rounds[i], rounds[0]));
    PrintRatio(absl::StrCat(contestants[i].name, "/", contestants[0].name), c.ratios.back());
  }
  return c;
}

// optd alone with each of `dtypes`; one session per dtype.
absl::StatusOr<TargetComparison> CompareDtypes(Workload w,
                                               const std::vector<optd::v1::DType>& dtypes,
                                               RunContext& run) {
  std::vector<std::unique_ptr<OptdTarget>> targets;
  std::vector<std::string> names;
  std::vector<Contestant> contestants;
  for (optd::v1::DType d : dtypes) {
    w.dtype = d;
    absl::StatusOr<std::unique_ptr<OptdTarget>> t = NewOptdTarget(w, run);
    if (!t.ok()) return t.status();
    targets.push_back(*std::move(t));
    names.push_back(std::string(DTypeName(d)));
    contestants.push_back(
        OptdContestant(names.back(), targets.back().get(), run.servers->optd.get()));
  }
  std::printf("\ndtypes %s: %s\n", absl::StrJoin(names, " vs ").c_str(),
              Describe(w, run, /*dtype=*/false).c_str());
  return CompareTargets(contestants, run);
}

struct Verdict {
  std::string target;
  double measured;
  bool at_least;  // true: measured >= goal passes; false: measured <= goal passes
  double goal;
};

void PrintVerdicts(absl::string_view title, const Workload& w, const RunContext& run,
                   const std::vector<Verdict>& verdicts) {
  std::printf(
      "\n%s (%s, %d rounds; each ratio is the median of per-round ratios of phases "
      "run back to back)\n",
      std::string(title).c_str(), w.stream ? "stream" : "unary", run.rounds);
  std::printf("%-50s %9s %9s  %s\n", "target", "measured", "goal", "result");
  for (const Verdict& v : verdicts) {
    const bool pass = v.at_least ? v.measured >= v.goal : v.measured <= v.goal;
    std::printf("%-50s %9.3f %3s %5.2f  %s\n", v.target.c_str(), v.measured,
                v.at_least ? ">=" : "<=", v.goal, pass ? "PASS" : "FAIL");
  }
}

// The workload of the issues' targets: one worker, Adam, ASYNC, F32, every parameter returned
// (unary or --stream as given).
Workload TargetWorkload(const Workload& base) {
  Workload w = base;
  w.workers = 1;
  w.optimizer = "adam";
  w.mode = optd::v1::Consistency::MODE_ASYNC;
  w.dtype = optd::v1::DTYPE_F32;
  w.return_all = true;
  return w;
}

absl::Status RunSuite(const Workload& base, RunContext& run) {
  Workload w = TargetWorkload(base);
  std::vector<Verdict> verdicts;

  w.params = 1000000;
  absl::StatusOr<Comparison> big = CompareWithEcho(w, run);
  if (!big.ok()) return big.status();
  verdicts.push_back(
      {"1M Adam F32 step, 1 worker: params/s, optd/echo", big->ratio.params_per_s, true, 0.85});

  w.params = 1000;
  absl::StatusOr<Comparison> small = CompareWithEcho(w, run);
  if (!small.ok()) return small.status();
  verdicts.push_back(
      {"1K Adam F32 step, 1 worker: p50, optd/echo", small->ratio.p50_us, false, 1.25});

  w.params = 1000000;
  absl::StatusOr<TargetComparison> dtypes =
      CompareDtypes(w, {optd::v1::DTYPE_F32, optd::v1::DTYPE_BF16}, run);
  if (!dtypes.ok()) return dtypes.status();
  verdicts.push_back(
      {"1M Adam, 1 worker: params/s, BF16/F32", dtypes->ratios[0].params_per_s, true, 1.6});

  PrintVerdicts("suite", w, run, verdicts);
  return absl::OkStatus();
}

// optd-echo in plaintext against optd-echo with TLS, with requests and replies of the given sizes.
absl::StatusOr<TargetComparison> CompareEchoTls(const Workload& w, const RunContext& run,
                                                int64_t request_bytes, int64_t reply_bytes) {
  absl::StatusOr<std::unique_ptr<EchoTarget>> plain =
      EchoTarget::Create(run.servers->echo_address, w.workers, w.stream);
  if (!plain.ok()) return plain.status();
  absl::StatusOr<std::unique_ptr<EchoTarget>> tls = EchoTarget::Create(
      run.servers->tls_echo_address, w.workers, w.stream, run.servers->tls_ca_pem);
  if (!tls.ok()) return tls.status();
  std::vector<Contestant> contestants;
  for (auto [name, target, process] :
       {std::make_tuple("echo", plain->get(), run.servers->echo.get()),
        std::make_tuple("echo-tls", tls->get(), run.servers->tls_echo.get())}) {
    target->MatchSizes(request_bytes, reply_bytes);
    contestants.push_back({name,
                           [target = target, process = process](const PhaseBounds& bounds) {
                             return target->RunPhase(bounds, &ChildCpuSeconds, process);
                           },
                           w.params});
  }
  std::printf("\ngRPC echo of the same bytes, plaintext vs TLS\n");
  return CompareTargets(contestants, run);
}

// optd in plaintext against optd with TLS (the certificate's own CA trusted), same workload, at
// 1M and 1K parameters.
absl::Status CompareTls(const Workload& base, RunContext& run) {
  Workload w = TargetWorkload(base);
  std::vector<Verdict> verdicts;
  for (int64_t params : {int64_t{1000000}, int64_t{1000}}) {
    w.params = params;
    w.tls_ca_pem.clear();
    absl::StatusOr<std::unique_ptr<OptdTarget>> plain = NewOptdTarget(w, run);
    if (!plain.ok()) return plain.status();
    Workload tls_workload = w;
    tls_workload.tls_ca_pem = run.servers->tls_ca_pem;
    absl::StatusOr<std::unique_ptr<OptdTarget>> tls = OptdTarget::Create(
        run.servers->tls_address, tls_workload, absl::StrCat("optd-bench-tls-", ++run.sessions));
    if (!tls.ok()) return tls.status();
    std::printf("\noptd, plaintext vs TLS: %s\n", Describe(w, run).c_str());
    absl::StatusOr<TargetComparison> c =
        CompareTargets({OptdContestant("plain", plain->get(), run.servers->optd.get()),
                        OptdContestant("tls", tls->get(), run.servers->tls_optd.get())},
                       run);
    if (!c.ok()) return c.status();
    // The same bytes through a raw gRPC echo, plaintext and TLS: what TLS costs gRPC itself.
    absl::StatusOr<TargetComparison> e =
        CompareEchoTls(w, run, (*plain)->request_bytes(), (*plain)->reply_bytes());
    if (!e.ok()) return e.status();
    if (params == 1000000) {
      verdicts.push_back({"1M Adam F32 step, 1 worker: params/s, TLS/plain",
                          c->ratios[0].params_per_s, true, 0.8});
      verdicts.push_back({"  the same bytes, gRPC echo: params/s, TLS/plain",
                          e->ratios[0].params_per_s, true, 0.8});
    } else {
      verdicts.push_back(
          {"1K Adam F32 step, 1 worker: p50, TLS/plain", c->ratios[0].p50_us, false, 1.3});
      verdicts.push_back(
          {"  the same bytes, gRPC echo: p50, TLS/plain", e->ratios[0].p50_us, false, 1.3});
    }
  }
  PrintVerdicts("TLS", w, run, verdicts);
  return absl::OkStatus();
}

// A second optd, serving TLS with a self-signed certificate.
absl::Status StartTlsOptd(Servers* servers, absl::Duration timeout) {
  absl::StatusOr<SelfSigned> certificate = MakeSelfSignedCertificate();
  if (!certificate.ok()) return certificate.status();
  servers->tls_ca_pem = certificate->cert_pem;
  const std::string& cert = certificate->cert_file;
  const std::string& key = certificate->key_file;
  absl::StatusOr<std::unique_ptr<ChildProcess>> optd = ChildProcess::Start(
      {absl::GetFlag(FLAGS_optd_binary), "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
       "--shutdown_grace=0s", absl::StrCat("--tls_cert=", cert), absl::StrCat("--tls_key=", key)},
      timeout);
  if (!optd.ok()) return optd.status();
  servers->tls_optd = *std::move(optd);
  servers->tls_address = servers->tls_optd->address();
  absl::StatusOr<std::unique_ptr<ChildProcess>> echo =
      ChildProcess::Start({absl::GetFlag(FLAGS_echo_binary), "--listen=127.0.0.1:0",
                           absl::StrCat("--tls_cert=", cert), absl::StrCat("--tls_key=", key)},
                          timeout);
  if (!echo.ok()) return echo.status();
  servers->tls_echo = *std::move(echo);
  servers->tls_echo_address = servers->tls_echo->address();
  std::printf("TLS optd at %s (pid %d), certificate %s\n", servers->tls_address.c_str(),
              static_cast<int>(servers->tls_optd->pid()), cert.c_str());
  return absl::OkStatus();
}

absl::Status StartServers(Servers* servers) {
  const absl::Duration timeout = absl::Seconds(20);
  servers->optd_address = absl::GetFlag(FLAGS_server);
  if (servers->optd_address.empty()) {
    absl::StatusOr<std::unique_ptr<ChildProcess>> optd =
        ChildProcess::Start({absl::GetFlag(FLAGS_optd_binary), "--listen=127.0.0.1:0",
                             "--metrics_listen=127.0.0.1:0", "--shutdown_grace=0s"},
                            timeout);
    if (!optd.ok()) return optd.status();
    servers->optd = *std::move(optd);
    servers->optd_address = servers->optd->address();
  }
  if (absl::GetFlag(FLAGS_compare_tls)) {
    if (absl::Status s = StartTlsOptd(servers, timeout); !s.ok()) return s;
  }
  absl::StatusOr<std::unique_ptr<ChildProcess>> echo =
      ChildProcess::Start({absl::GetFlag(FLAGS_echo_binary), "--listen=127.0.0.1:0"}, timeout);
  if (!echo.ok()) return echo.status();
  servers->echo = *std::move(echo);
  servers->echo_address = servers->echo->address();
  const std::string optd_pid =
      servers->optd ? absl::StrCat(" (pid ", servers->optd->pid(), ")") : " (given)";
  std::printf("optd at %s%s, echo at %s (pid %d)\n", servers->optd_address.c_str(),
              optd_pid.c_str(), servers->echo_address.c_str(),
              static_cast<int>(servers->echo->pid()));
  return absl::OkStatus();
}

absl::Status Main() {
  Workload w;
  w.workers = absl::GetFlag(FLAGS_workers);
  w.params = absl::GetFlag(FLAGS_params);
  w.optimizer = absl::GetFlag(FLAGS_optimizer);
  w.max_staleness = absl::GetFlag(FLAGS_max_staleness);
  w.stream = absl::GetFlag(FLAGS_stream);
  absl::StatusOr<optd::v1::Consistency::Mode> mode = ParseMode(absl::GetFlag(FLAGS_mode));
  if (!mode.ok()) return mode.status();
  w.mode = *mode;
  absl::StatusOr<optd::v1::DType> dtype = ParseDType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) return dtype.status();
  w.dtype = *dtype;
  const std::string ret = absl::GetFlag(FLAGS_return);
  if (ret != "all" && ret != "none") {
    return absl::InvalidArgumentError(absl::StrCat("--return=", ret, " is not all or none"));
  }
  w.return_all = ret == "all";

  const bool suite = absl::GetFlag(FLAGS_suite);
  const bool dtypes = absl::GetFlag(FLAGS_compare_dtypes);
  const bool tls = absl::GetFlag(FLAGS_compare_tls);
  if (suite + dtypes + tls > 1) {
    return absl::InvalidArgumentError(
        "--suite, --compare_dtypes and --compare_tls are separate runs; pick one");
  }
  RunContext run;
  run.rounds = absl::GetFlag(FLAGS_rounds);
  run.verbose = absl::GetFlag(FLAGS_verbose);
  run.bounds.steps = absl::GetFlag(FLAGS_steps);
  run.bounds.warmup = absl::GetFlag(FLAGS_warmup);
  const double seconds = absl::GetFlag(FLAGS_seconds);
  if (run.rounds < 1) return absl::InvalidArgumentError("--rounds must be >= 1");
  if (run.bounds.steps < 1) return absl::InvalidArgumentError("--steps must be >= 1");
  if (run.bounds.warmup < 0) return absl::InvalidArgumentError("--warmup must be >= 0");
  if (!(seconds > 0)) return absl::InvalidArgumentError("--seconds must be > 0");
  const int phases = run.rounds * (suite ? 6 : dtypes ? 3 : tls ? 8 : 2);
  run.bounds.time = absl::Seconds(seconds / phases);

  // Children first: fork before gRPC starts any thread.
  Servers servers;
  if (absl::Status s = StartServers(&servers); !s.ok()) return s;
  run.servers = &servers;

  absl::Status status;
  if (suite) {
    status = RunSuite(w, run);
  } else if (tls) {
    status = CompareTls(w, run);
  } else if (dtypes) {
    status = CompareDtypes(w, {optd::v1::DTYPE_F32, optd::v1::DTYPE_BF16, optd::v1::DTYPE_F16}, run)
                 .status();
  } else {
    status = CompareWithEcho(w, run).status();
  }
  std::fflush(stdout);
  // Stop both servers (in parallel) even after a failure; a server that does not stop cleanly is
  // an error too.
  for (std::unique_ptr<ChildProcess>* child :
       {&servers.optd, &servers.echo, &servers.tls_optd, &servers.tls_echo}) {
    if (*child != nullptr) (*child)->Terminate();
  }
  for (std::unique_ptr<ChildProcess>* child :
       {&servers.optd, &servers.echo, &servers.tls_optd, &servers.tls_echo}) {
    if (*child == nullptr) continue;
    if (absl::Status s = (*child)->Stop(); !s.ok() && status.ok()) status = s;
  }
  return status;
}

}  // namespace
}  // namespace bench
}  // namespace optd

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "load generator for optd, measured against a raw gRPC echo of the same bytes.\n"
      "Usage: optd-bench [--server=HOST:PORT] [--workers=N] [--params=N] [--optimizer=adam]\n"
      "                  [--mode=async|sync|bounded] [--dtype=f32|bf16|f16] [--return=all|none]\n"
      "                  [--stream] [--steps=N] [--seconds=S] [--warmup=N] [--rounds=N]\n"
      "                  [--compare_dtypes | --suite | --compare_tls] [--verbose]\n"
      "Prints one table per comparison: rows optd, echo and optd/echo (the ratios the targets\n"
      "talk about), columns steps/s, params/s, MB/s, p50 and p99 latency in microseconds and\n"
      "server CPU per step. --suite checks the three issue targets; exit status is 0 whatever\n"
      "they say, non-zero only when the benchmark itself fails.");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "bench/optd_bench.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);

  const absl::Status status = optd::bench::Main();
  if (!status.ok()) {
    std::fprintf(stderr, "optd-bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
