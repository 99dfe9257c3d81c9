// File: server.h
//
// OptdServer: the optd gRPC server assembled and started: the Optimizer service over a
// SessionStore, behind TLS or mTLS when configured (tls_credentials.h) and the access control of
// server/auth (tokens, tenants, quotas, an audit log), the grpc.health.v1 service (overall "" and
// "optd.v1.Optimizer") and server reflection, and, when ServerOptions::metrics is set, the
// Prometheus metrics (server/metrics: a gRPC interceptor, the store's SessionObserver and the
// /metrics exporter). main.cc and the tests use it; nothing else does.
//
// Thread safety: Start, port, InProcessChannel and store are safe from any thread. Shutdown may be
// called once, from any thread that is not a gRPC callback; Wait blocks until Shutdown completes.

#ifndef OPTD_SERVER_SERVICE_SERVER_H_
#define OPTD_SERVER_SERVICE_SERVER_H_

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/channel.h"
#include "grpcpp/server.h"
#include "server/auth/access_control.h"
#include "server/auth/audit_log.h"
#include "server/metrics/metrics.h"
#include "server/persist/checkpointer.h"
#include "server/service/call_tracker.h"
#include "server/service/tls_credentials.h"
#include "server/session/memory_budget.h"
#include "server/session/session_store.h"

namespace optd {

// The gRPC type of a method from its descriptor's client_streaming() and server_streaming(), for
// the gRPC server metrics.
GrpcType GrpcTypeOf(const google::protobuf::MethodDescriptor& method);

// Whether a --listen address is reachable only from this machine (127.0.0.0/8, ::1, localhost,
// a unix socket).
bool IsLoopbackAddress(absl::string_view listen);

class OptimizerServiceImpl;

// Streams (calls) one client connection may have open at once.
inline constexpr int kMaxConcurrentStreams = 1024;

struct ServerOptions {
  // host:port to listen on; port 0 picks a free port (read it back with port()).
  std::string listen = "127.0.0.1:50051";
  // Largest request or reply, in bytes. A larger request fails with RESOURCE_EXHAUSTED.
  // The default leaves room for a 64 MiB tensor plus its reply.
  int64_t max_message_bytes = 256 << 20;
  // What requests may make the server hold in all (memory_budget.h): parameters, optimizer
  // state, barrier sums, requests and decoded gradients in flight. main.cc's default is most of
  // the machine's (or the cgroup's, or the address-space limit's) memory.
  int64_t max_memory_bytes = std::numeric_limits<int64_t>::max();
  // Sessions: their count, size per session, exactly-once table (max_reply_bytes is set from
  // max_message_bytes).
  SessionStoreOptions store;
  // Durability (--checkpoint_dir): unset, sessions live in memory only. Set, every session found
  // in the folder is restored before the server serves, checkpoints are written every interval
  // and on request, deleted sessions' checkpoints are removed, idle sessions are checkpointed
  // before they are unloaded (and loaded again when asked for), and Shutdown checkpoints every
  // session that moved.
  std::optional<CheckpointerOptions> checkpoints;
  // Transport security (--tls_cert, --tls_key, --tls_client_ca). Without TLS, `listen` must be a
  // loopback address unless `insecure` (--insecure) says that plaintext elsewhere is meant.
  TlsOptions tls;
  bool insecure = false;
  // Authentication, tenants and quotas (--auth_tokens_file); empty: every caller is the
  // anonymous admin, as before tokens.
  AccessControlOptions access;
  // --audit_log: "-" standard error (main.cc's default), a path, or empty for none (the default
  // here, for tests and embedders).
  std::string audit_log;
  // Prometheus metrics. Unset (the default, for tests and embedders): none are kept and no port is
  // opened. Set: every RPC and session event is recorded, and served on `metrics->listen` when
  // that is not empty (main.cc's --metrics_listen).
  std::optional<MetricsOptions> metrics;
};

class OptdServer {
 public:
  // Builds and starts the server (restoring checkpointed sessions first). Returns Unavailable if
  // the address cannot be bound (another process listens on it: optd never shares a port),
  // FailedPrecondition for a checkpoint folder it cannot use, and InvalidArgument for bad
  // options (TLS files that do not read or match, an access file that does not parse, plaintext
  // on a non-loopback address without `insecure`).
  static absl::StatusOr<std::unique_ptr<OptdServer>> Start(const ServerOptions& options);

  // The gRPC service name, as the health service reports it.
  static constexpr char kServiceName[] = "optd.v1.Optimizer";

  ~OptdServer();  // Shuts down (if not yet) with a zero deadline.

  // The port actually bound.
  int port() const { return port_; }

  // A channel to this server that does not go through a socket (for tests).
  std::shared_ptr<grpc::Channel> InProcessChannel();

  SessionStore& store() { return *store_; }

  MemoryBudget& budget() { return *budget_; }

  // The metrics, or null when ServerOptions::metrics was unset.
  Metrics* metrics() { return metrics_.get(); }

  // Marks the services NOT_SERVING, stops accepting calls, lets in-flight calls finish until
  // `deadline`, then cancels the rest; closes client connections as soon as no call is open (it
  // does not wait for idle clients to answer gRPC's GOAWAY); calls `calls_ended` (if set) once
  // no call runs any more; then checkpoints every session that moved (durability).
  void Shutdown(absl::Time deadline, const std::function<void()>& calls_ended = {});

  // Re-reads the access file now (main.cc calls it on SIGHUP); an error keeps the previous one.
  absl::Status ReloadAccess() { return access_->Reload(); }

  AuditLog* audit() { return audit_.get(); }

  // This process's incarnation: random, new at every start, in every reply.
  const std::string& incarnation() const { return incarnation_; }

  // The checkpointer, or null without ServerOptions::checkpoints.
  Checkpointer* checkpointer() { return checkpointer_.get(); }

  // Sessions restored from checkpoints at start-up.
  int restored_sessions() const { return restored_; }

  // Blocks until the server has shut down.
  void Wait();

 private:
  OptdServer() = default;

  // First: replies in flight hold reservations of the budget until gRPC has sent them.
  std::unique_ptr<MemoryBudget> budget_;
  std::unique_ptr<Metrics> metrics_;  // outlives the store and the server that report to it
  CallTracker calls_;                 // outlives the server: its interceptors report to it
  std::unique_ptr<SessionStore> store_;
  std::unique_ptr<ConfigCodec> codec_;
  std::unique_ptr<AccessControl> access_;
  std::unique_ptr<AuditLog> audit_;
  std::unique_ptr<Checkpointer> checkpointer_;  // after the store: stops before it
  std::unique_ptr<OptimizerServiceImpl> service_;
  std::string incarnation_;
  int restored_ = 0;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  int64_t max_message_bytes_ = 0;
  bool shut_down_ = false;  // only touched by Shutdown and the destructor (one thread)
};

}  // namespace optd

#endif  // OPTD_SERVER_SERVICE_SERVER_H_
