// optd: the remote optimizer server. Flags and wiring only: parse flags, start OptdServer, wait for
// SIGTERM or SIGINT, shut down gracefully (in-flight calls get --shutdown_grace to finish).

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/malloc_tuning.h"
#include "server/memory_limits.h"
#include "server/service/server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "host:port for the gRPC server; port 0 picks a free port, printed at start-up. Use "
          "0.0.0.0:50051 to accept remote workers (with --tls_cert/--tls_key, or --insecure).");
ABSL_FLAG(int64_t, max_message_bytes, 256 << 20,
          "Largest gRPC request or reply in bytes (default 256 MiB, room for a 64 MiB tensor and "
          "its reply). Larger requests fail with RESOURCE_EXHAUSTED.");
ABSL_FLAG(int, max_sessions, 1024,
          "Most sessions held at once; CreateSession beyond it fails with RESOURCE_EXHAUSTED.");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "host:port of the Prometheus exporter (GET /metrics); port 0 picks a free port, printed "
          "at start-up. Empty: no metrics. Use 0.0.0.0:9464 to be scraped from other hosts.");
ABSL_FLAG(int, metrics_max_sessions, 100,
          "Sessions whose metrics carry their own session label; the metrics of sessions created "
          "beyond it are aggregated under session=\"_other\", so the number of series stays "
          "bounded.");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(10),
          "On SIGTERM/SIGINT, how long in-flight calls may run before they are cancelled. The "
          "process exits at most a few seconds after it, whatever calls remain.");
ABSL_FLAG(int64_t, max_memory_bytes, 0,
          "Memory budget: the most that parameters, optimizer state (reserved whole at "
          "CreateSession), SYNC barrier sums and requests in flight may take; what would exceed "
          "it fails with RESOURCE_EXHAUSTED. 0: 75% of the smallest of the machine's memory, the "
          "cgroup's limit and the address-space limit (ulimit -v) left at start-up.");
ABSL_FLAG(absl::Duration, session_idle_timeout, absl::ZeroDuration(),
          "Unload a session that no worker has stepped, pulled, joined or updated for this long, "
          "e.g. 24h. With --checkpoint_dir it is checkpointed first and loaded again by the next "
          "request naming it; without, its workers then get NOT_FOUND saying so. 0: never.");
ABSL_FLAG(std::string, checkpoint_dir, "",
          "Folder of session checkpoints (durability). Empty: sessions live in memory only. Set: "
          "every session found there is restored before optd serves, each session is "
          "checkpointed when created, every --checkpoint_interval (if it changed), on the "
          "Checkpoint RPC and at shutdown. An unusable folder, or one another optd uses, is an "
          "error at start-up.");
ABSL_FLAG(absl::Duration, checkpoint_interval, absl::Minutes(5),
          "How often sessions that moved are checkpointed; 0: only on request and at shutdown. "
          "What a SIGKILL loses: the steps after the last checkpoint.");
ABSL_FLAG(int, checkpoint_keep, 3, "Checkpoints kept per session (the newest), >= 1.");
ABSL_FLAG(int64_t, max_session_parameters, 0,
          "Most parameters (elements of all tensors) one session may hold; CreateSession beyond "
          "it fails with RESOURCE_EXHAUSTED. 0: no limit but the memory budget.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain of the server: with --tls_key, optd serves TLS only. Re-read when "
          "the file changes (see --tls_reload_interval); open streams keep their connection.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert (without a passphrase).");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA certificates for mutual TLS: a client must present a certificate they signed, "
          "valid now, or its connection is refused before any call. Re-read when it changes.");
ABSL_FLAG(absl::Duration, tls_reload_interval, absl::Seconds(10),
          "How often the TLS files are checked for changes (>= 1s).");
ABSL_FLAG(bool, insecure, false,
          "Allow plaintext on a --listen address that is not loopback (without it optd refuses to "
          "start there without TLS).");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "Access file: bearer tokens (their SHA-256), client-certificate identities, tenants, "
          "roles and quotas (README, Security). Re-read when it changes and on SIGHUP. Empty: no "
          "authentication, one anonymous tenant.");
ABSL_FLAG(std::string, audit_log, "-",
          "Where audit lines go (JSON, one per authentication failure, permission refusal, "
          "session create, delete and checkpoint): '-' standard error, a file path (appended), "
          "or empty for none.");
ABSL_FLAG(std::string, metrics_auth_file, "",
          "Users allowed to read /metrics (HTTP basic auth), one '<user> <sha256 hex of the "
          "password>' per line. Empty: /metrics is open to whoever reaches --metrics_listen.");

#ifndef OPTD_VERSION
#define OPTD_VERSION "unknown"
#endif
#ifndef OPTD_BUILD_TYPE
#define OPTD_BUILD_TYPE "unknown build type"
#endif

// How long after --shutdown_grace the process exits even if gRPC's shutdown has not finished.
constexpr absl::Duration kShutdownMargin = absl::Seconds(5);

int main(int argc, char** argv) {
  optd::TuneMallocForLargeMessages();
  // Debian builds abseil without NDEBUG, so every absl::Mutex lock would also update a global
  // lock-order graph (about 30 ns per lock here). The tests keep that check; the server skips it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::SetProgramUsageMessage(
      "remote optimizer server (gRPC service optd.v1.Optimizer).\n"
      "Usage: optd [--listen=127.0.0.1:50051] [--max_message_bytes=N] [--max_sessions=N]\n"
      "            [--metrics_listen=127.0.0.1:9464] [--metrics_max_sessions=N]\n"
      "            [--max_memory_bytes=N] [--max_session_parameters=N]\n"
      "            [--session_idle_timeout=0] [--checkpoint_dir=DIR]\n"
      "            [--checkpoint_interval=5m] [--checkpoint_keep=3]\n"
      "            [--shutdown_grace=10s]\n"
      "            [--tls_cert=PEM --tls_key=PEM [--tls_client_ca=PEM]] [--insecure]\n"
      "            [--auth_tokens_file=FILE] [--audit_log=-] [--metrics_auth_file=FILE]\n"
      "       optd --version");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "server/main.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  // --version: the project's version and build type (CMake's), not abseil's own build mode.
  usage.version_string = [] {
    return std::string("optd " OPTD_VERSION " (" OPTD_BUILD_TYPE ")\n");
  };
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);

  // A file-size limit (ulimit -f) reached by a checkpoint must fail that checkpoint (EFBIG: logged,
  // counted, older checkpoints kept), not kill the server with SIGXFSZ.
  std::signal(SIGXFSZ, SIG_IGN);
  // Block the shutdown signals in every thread (gRPC's included); one thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);  // re-read the access file
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  optd::StartIdleTrimmer();  // after the mask: its thread must not take the signals

  optd::ServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.store.max_sessions = absl::GetFlag(FLAGS_max_sessions);
  options.store.max_session_parameters = absl::GetFlag(FLAGS_max_session_parameters);
  options.store.idle_timeout = absl::GetFlag(FLAGS_session_idle_timeout);
  std::string budget_source = "--max_memory_bytes";
  options.max_memory_bytes = absl::GetFlag(FLAGS_max_memory_bytes);
  const bool default_budget = options.max_memory_bytes == 0;
  if (default_budget) {
    // A first estimate, for the sessions restored at start-up; measured again below, once gRPC's
    // threads and buffers are mapped (they count against an address-space limit).
    options.max_memory_bytes = optd::DefaultMemoryBudget(&budget_source);
  } else if (options.max_memory_bytes < 0) {
    std::fprintf(stderr, "optd: --max_memory_bytes = %lld is out of range: must be >= 0\n",
                 static_cast<long long>(options.max_memory_bytes));
    return 2;
  }
  if (const std::string dir = absl::GetFlag(FLAGS_checkpoint_dir); !dir.empty()) {
    options.checkpoints.emplace();
    options.checkpoints->dir = dir;
    options.checkpoints->interval = absl::GetFlag(FLAGS_checkpoint_interval);
    options.checkpoints->keep = absl::GetFlag(FLAGS_checkpoint_keep);
  }
  options.tls.cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls.key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls.client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.tls.reload_interval = absl::GetFlag(FLAGS_tls_reload_interval);
  options.insecure = absl::GetFlag(FLAGS_insecure);
  options.access.tokens_file = absl::GetFlag(FLAGS_auth_tokens_file);
  options.audit_log = absl::GetFlag(FLAGS_audit_log);
  const std::string metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  if (!metrics_listen.empty()) {
    options.metrics.emplace();
    options.metrics->listen = metrics_listen;
    options.metrics->max_sessions = absl::GetFlag(FLAGS_metrics_max_sessions);
    if (const std::string file = absl::GetFlag(FLAGS_metrics_auth_file); !file.empty()) {
      absl::StatusOr<optd::BasicAuthUsers> users = optd::BasicAuthUsers::Read(file);
      if (!users.ok()) {
        std::fprintf(stderr, "optd: --metrics_auth_file: %s\n",
                     std::string(users.status().message()).c_str());
        return 1;
      }
      options.metrics->users = *std::move(users);
    }
  }
  absl::StatusOr<std::unique_ptr<optd::OptdServer>> server = optd::OptdServer::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "optd: %s\n", server.status().ToString().c_str());
    return 1;
  }
  if (optd::Metrics* metrics = (*server)->metrics(); metrics != nullptr) {
    // Scripts and tests read the exporter's port from this line.
    const std::string metrics_host = metrics_listen.substr(0, metrics_listen.rfind(':'));
    std::printf("optd metrics on %s:%d\n", metrics_host.c_str(), metrics->port());
  }
  const std::string host = options.listen.substr(0, options.listen.rfind(':'));
  // Scripts and tests read the bound port from this line.
  std::printf("optd listening on %s:%d\n", host.c_str(), (*server)->port());
  std::fflush(stdout);
  if (default_budget) {
    // What the running process has mapped now is what the budget must leave room for.
    const int64_t measured = optd::DefaultMemoryBudget(&budget_source);
    (*server)->budget().set_limit(measured);
    options.max_memory_bytes = measured;
  }
  std::fprintf(stderr, "optd: memory budget %lld bytes (%s)\n",
               static_cast<long long>(options.max_memory_bytes), budget_source.c_str());
  if ((*server)->checkpointer() != nullptr) {
    std::fprintf(stderr, "optd: %d sessions restored from %s\n", (*server)->restored_sessions(),
                 (*server)->checkpointer()->dir().c_str());
  }

  std::thread waiter([&] {
    int signal = 0;
    while (sigwait(&signals, &signal) == 0 && signal == SIGHUP) {
      const absl::Status reloaded = (*server)->ReloadAccess();
      std::fprintf(stderr, "optd: SIGHUP: %s\n",
                   reloaded.ok() ? "access file re-read"
                                 : absl::StrCat(reloaded.message(),
                                                "; the previous access file stays in force")
                                       .c_str());
    }
    std::fprintf(stderr, "optd: signal %d, shutting down\n", signal);
    const absl::Time deadline = absl::Now() + absl::GetFlag(FLAGS_shutdown_grace);
    // A last resort: whatever holds the calls up (a call that never ends), the process exits
    // soon after the grace period. Not once the calls have ended: the shutdown checkpoints that
    // follow (the last steps' durability) take as long as they take.
    static std::atomic<bool> calls_ended{false};
    std::thread([deadline] {
      absl::SleepFor(deadline + kShutdownMargin - absl::Now());
      if (calls_ended.load()) return;
      std::fprintf(stderr, "optd: calls did not end within --shutdown_grace + %s; exiting\n",
                   absl::FormatDuration(kShutdownMargin).c_str());
      std::_Exit(1);
    }).detach();
    (*server)->Shutdown(deadline, [] { calls_ended.store(true); });
  });
  (*server)->Wait();
  waiter.join();
  std::fprintf(stderr, "optd: stopped\n");
  std::fflush(nullptr);
  // Every call has ended and every checkpoint is written: exit now, rather than wait in gRPC's
  // own teardown (it can sit seconds in an idle executor thread after a large message).
  std::_Exit(0);
}
