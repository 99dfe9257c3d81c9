// File: load.h
//
// The load optd-bench puts on a server: N worker threads, each with its own channel (its own TCP
// connection), calling in a closed loop (one call in flight per worker) for one *phase*: some
// warm-up calls, then measured calls until a step count or a deadline. Two targets:
//
//   OptdTarget  optd.v1.Optimizer.Step (or StreamSteps) on a session it creates: pre-built random
//               gradients in the chosen dtype, idempotency keys (worker_id "w<i>", sequence 1, 2,
//               3, ...), the version of the previous reply in SYNC and BOUNDED sessions.
//   EchoTarget  optd.bench.v1.Echo (or EchoStream) with requests and replies of the same
//               serialized sizes as the Step calls it is compared with: the transport ceiling.
//
// Both send pre-built request messages (only the sequence and version change between steps) and
// parse each reply into a message, so both pay the same client-side protobuf and gRPC costs.
//
// Thread safety: a target runs one phase at a time (RunPhase is not reentrant); inside a phase each
// worker thread touches only its own state.

#ifndef OPTD_BENCH_LOAD_H_
#define OPTD_BENCH_LOAD_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "bench/echo.grpc.pb.h"
#include "grpcpp/channel.h"
#include "optd/v1/optd.grpc.pb.h"

namespace optd {
namespace bench {

// What the optd side of a comparison runs.
struct Workload {
  // Worker threads, each with its own channel. SYNC sessions combine this many gradients per step.
  int workers = 1;
  // Float parameters of the session, split into a [rows, 256] matrix "w" and a bias "b" of the
  // remaining 1-256 elements (under 257 parameters: [1, params - 1] and [1]). At least 2.
  int64_t params = 1000000;
  // "adam", "sgd" (lr 0.01), "adagrad" or "normalized_gd", torch's defaults otherwise.
  std::string optimizer = "adam";
  optd::v1::Consistency::Mode mode = optd::v1::Consistency::MODE_ASYNC;
  // BOUNDED: the session's max_staleness.
  int64_t max_staleness = 8;
  // Wire encoding of the gradients sent and of the parameters returned.
  optd::v1::DType dtype = optd::v1::DTYPE_F32;
  // true: every reply carries all parameters; false: RETURN_PARAMETERS_NONE.
  bool return_all = true;
  // true: StreamSteps / EchoStream, one stream per worker per phase; false: unary calls.
  bool stream = false;
  // PEM of the CA that signed the server's certificate: the optd channels use TLS. Empty:
  // plaintext.
  std::string tls_ca_pem;
};

// Where a phase stops: each worker makes `warmup` unmeasured calls, then up to `steps` measured
// ones; the phase also ends `time` after it starts (counting the warm-up), whichever comes first.
// In SYNC sessions workers stop together at a barrier boundary, so the last barrier completes.
struct PhaseBounds {
  int64_t steps = 1000;
  int64_t warmup = 20;
  absl::Duration time = absl::Seconds(10);
};

// What a phase measured, over its measured calls only.
struct PhaseStats {
  int64_t steps = 0;  // successful calls
  // BOUNDED only: gradients refused as stale (ABORTED); the worker re-read the version.
  int64_t refused = 0;
  double seconds = 0;              // from the end of the warm-up to the last worker's last call
  int64_t bytes = 0;               // serialized request + reply message bytes
  std::vector<double> latency_us;  // one per successful call, sorted
  double server_cpu_seconds = -1;  // CPU the server used over `seconds`; < 0 if unknown

  double StepsPerSecond() const;
  double MegabytesPerSecond() const;  // 1 MB = 1e6 bytes
  // Nearest-rank percentile of latency_us, q in (0, 1]; 0 without calls.
  double LatencyPercentileUs(double q) const;
  // Server CPU time per step in µs; < 0 if unknown.
  double ServerCpuUsPerStep() const;
};

// Reads a server's cumulative CPU time in seconds (< 0 if unknown). Called at the start and the end
// of each phase's measured part.
using CpuProbe = double (*)(const void* arg);

// A channel to `address` with optd's message size limits and a connection of its own (a local
// subchannel pool), so N workers make N TCP connections.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address, int worker,
                                           const std::string& tls_ca_pem = "");

// Parses "async", "sync", "bounded" / "f32", "bf16", "f16"; InvalidArgument otherwise.
absl::StatusOr<optd::v1::Consistency::Mode> ParseMode(absl::string_view text);
absl::StatusOr<optd::v1::DType> ParseDType(absl::string_view text);
absl::string_view ModeName(optd::v1::Consistency::Mode mode);
absl::string_view DTypeName(optd::v1::DType dtype);

class OptdTarget {
 public:
  // Connects one channel per worker to `address` and creates session `session_id` (random initial
  // values). InvalidArgument for a bad workload; the server's error if CreateSession fails;
  // Unimplemented if the server answers with a consistency mode other than the one asked for (a
  // server without that mode).
  static absl::StatusOr<std::unique_ptr<OptdTarget>> Create(const std::string& address,
                                                            const Workload& workload,
                                                            const std::string& session_id);
  ~OptdTarget();  // deletes the session (best effort)

  // Runs one phase. An error of any worker (other than a stale refusal in BOUNDED mode) ends the
  // phase and is returned; so is a reply that breaks the mode's rules (a duplicate, a version that
  // does not grow, or in SYNC a version that is not the previous one + 1: a server that does not
  // hold the barrier). `cpu(cpu_arg)` is sampled around the measured part if not null.
  absl::StatusOr<PhaseStats> RunPhase(const PhaseBounds& bounds, CpuProbe cpu, const void* cpu_arg);

  // Serialized sizes of worker 0's last request and reply (0 before the first phase).
  int64_t request_bytes() const { return request_bytes_; }
  int64_t reply_bytes() const { return reply_bytes_; }
  const Workload& workload() const { return workload_; }

 private:
  struct Worker;
  class Loop;
  class UnaryLoop;
  class StreamLoop;

  OptdTarget(const std::string& address, Workload workload, std::string session_id);

  const Workload workload_;
  const std::string session_id_;
  std::shared_ptr<grpc::Channel> control_channel_;
  std::unique_ptr<optd::v1::Optimizer::Stub> control_;
  std::vector<std::unique_ptr<Worker>> workers_;
  int64_t request_bytes_ = 0;
  int64_t reply_bytes_ = 0;
};

class EchoTarget {
 public:
  // One channel per worker to the echo server at `address`; `stream` picks EchoStream. Call
  // MatchSizes before the first phase.
  // `tls_ca_pem`: TLS, trusting that CA (empty: plaintext).
  static absl::StatusOr<std::unique_ptr<EchoTarget>> Create(const std::string& address, int workers,
                                                            bool stream,
                                                            const std::string& tls_ca_pem = "");
  ~EchoTarget();

  // Builds each worker's request so that it serializes to `request_bytes` and its reply to
  // `reply_bytes` (within 2 bytes where varint lengths leave a gap). May be called again between
  // phases to follow the Step sizes (varints grow with sequence and version numbers).
  void MatchSizes(int64_t request_bytes, int64_t reply_bytes);

  // Runs one phase (the bounds as for OptdTarget). FailedPrecondition before MatchSizes.
  absl::StatusOr<PhaseStats> RunPhase(const PhaseBounds& bounds, CpuProbe cpu, const void* cpu_arg);

  // The serialized sizes MatchSizes achieved.
  int64_t request_bytes() const { return request_bytes_; }
  int64_t reply_bytes() const { return reply_bytes_; }

 private:
  struct Worker;
  class UnaryLoop;
  class StreamLoop;

  explicit EchoTarget(bool stream);

  const bool stream_;
  std::vector<std::unique_ptr<Worker>> workers_;
  int64_t request_bytes_ = 0;
  int64_t reply_bytes_ = 0;
};

// The payload and reply_bytes of an EchoRequest whose message is `request_bytes` long and whose
// EchoReply is `reply_bytes` long (exposed for the test of the arithmetic).
struct EchoShape {
  int64_t payload = 0;
  int64_t reply_bytes = 0;
};
EchoShape FitEcho(int64_t request_bytes, int64_t reply_bytes);

}  // namespace bench
}  // namespace optd

#endif  // OPTD_BENCH_LOAD_H_
