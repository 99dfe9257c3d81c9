#include "bench/load.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <random>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/barrier.h"
#include "absl/time/clock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "wire/wire_dtype.h"

namespace optd {
namespace bench {
namespace {

// optd's default message size limit; the echo server uses the same.
constexpr int kMaxMessageBytes = 256 << 20;
// A single call may take this long past the phase's deadline before it is cancelled.
constexpr absl::Duration kCallSlack = absl::Seconds(30);
// SYNC sessions: how long the server's barrier waits for the other workers.
constexpr double kBarrierTimeoutSeconds = 10;
// Columns of the weight matrix; the bias holds the rest.
constexpr int64_t kColumns = 256;

absl::Status FromGrpc(absl::string_view what, const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(what, ": ", s.error_message()));
}

absl::Status Annotate(const absl::Status& s, absl::string_view prefix) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(prefix, s.message()));
}

void SetDeadline(grpc::ClientContext* context, absl::Time deadline) {
  context->set_deadline(absl::ToChronoTime(deadline));
}

// What one call did.
struct CallOutcome {
  int64_t bytes = 0;     // serialized request + reply
  int64_t version = -1;  // optd: the version in the reply
  bool refused = false;  // BOUNDED: the gradient was stale; not a step
};

// One worker's calls during one phase.
class PhaseLoop {
 public:
  virtual ~PhaseLoop() = default;
  // Before the first call (e.g. opens a stream that must end by `deadline`).
  virtual absl::Status Open(absl::Time deadline) { return absl::OkStatus(); }
  virtual absl::Status Call(CallOutcome* out) = 0;
  // After the last call, also after a failed one.
  virtual absl::Status Close() { return absl::OkStatus(); }
};

// Runs `loops` (one thread each) for one phase. `lockstep`: SYNC workers, which must all make the
// same calls: the warm-up ignores the deadline, and once the deadline passes every worker stops
// after the same barrier (version), so no worker is left waiting at a barrier the others never
// reach.
absl::StatusOr<PhaseStats> RunLoops(std::vector<std::unique_ptr<PhaseLoop>> loops,
                                    const PhaseBounds& bounds, bool lockstep, CpuProbe cpu,
                                    const void* cpu_arg) {
  using Clock = std::chrono::steady_clock;
  struct Tally {
    std::vector<double> latency_us;
    int64_t steps = 0;
    int64_t refused = 0;
    int64_t bytes = 0;
    Clock::time_point end;
    absl::Status status;
  };
  const int n = static_cast<int>(loops.size());
  const absl::Time deadline = absl::Now() + bounds.time;
  std::vector<Tally> tallies(n);
  absl::Barrier* warmed_up = new absl::Barrier(n);
  absl::Barrier* go = new absl::Barrier(n);
  Clock::time_point measure_start;
  double cpu_start = -1;
  std::atomic<int64_t> stop_version{0};  // lockstep: stop once a reply has this version

  auto worker = [&](int i) {
    Tally& t = tallies[i];
    PhaseLoop& loop = *loops[i];
    t.latency_us.reserve(std::min<int64_t>(bounds.steps, 1 << 20));
    absl::Status s = loop.Open(deadline + kCallSlack);
    for (int64_t k = 0; s.ok() && k < bounds.warmup; ++k) {
      if (!lockstep && absl::Now() >= deadline) break;
      CallOutcome ignored;
      s = loop.Call(&ignored);
    }
    // Everyone has warmed up (or failed) before anyone measures.
    if (warmed_up->Block()) {
      measure_start = Clock::now();
      if (cpu != nullptr) cpu_start = cpu(cpu_arg);
    }
    go->Block();
    for (int64_t k = 0; s.ok() && k < bounds.steps; ++k) {
      if (!lockstep && absl::Now() >= deadline) break;
      CallOutcome o;
      const Clock::time_point t0 = Clock::now();
      s = loop.Call(&o);
      const Clock::time_point t1 = Clock::now();
      if (!s.ok()) break;
      if (o.refused) {
        ++t.refused;
        continue;
      }
      t.latency_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      ++t.steps;
      t.bytes += o.bytes;
      if (lockstep) {
        int64_t stop = stop_version.load();
        if (stop == 0 && absl::Now() >= deadline) {
          // The first worker past the deadline names the next barrier as the last: every worker
          // is at this version or still receiving it, so all of them reach the next one.
          stop_version.compare_exchange_strong(stop, o.version + 1);
          stop = stop_version.load();
        }
        if (stop != 0 && o.version >= stop) break;
      }
    }
    t.end = Clock::now();
    const absl::Status closed = loop.Close();
    t.status = s.ok() ? closed : s;
  };

  std::vector<std::thread> threads;
  threads.reserve(n);
  for (int i = 0; i < n; ++i) threads.emplace_back(worker, i);
  for (std::thread& th : threads) th.join();
  delete warmed_up;
  delete go;

  PhaseStats stats;
  if (cpu != nullptr && cpu_start >= 0) {
    const double cpu_end = cpu(cpu_arg);
    if (cpu_end >= 0) stats.server_cpu_seconds = cpu_end - cpu_start;
  }
  Clock::time_point end = measure_start;
  for (int i = 0; i < n; ++i) {
    Tally& t = tallies[i];
    if (!t.status.ok()) return Annotate(t.status, absl::StrCat("worker ", i, ": "));
    stats.steps += t.steps;
    stats.refused += t.refused;
    stats.bytes += t.bytes;
    stats.latency_us.insert(stats.latency_us.end(), t.latency_us.begin(), t.latency_us.end());
    end = std::max(end, t.end);
  }
  stats.seconds = std::chrono::duration<double>(end - measure_start).count();
  std::sort(stats.latency_us.begin(), stats.latency_us.end());
  return stats;
}

int VarintLength(uint64_t v) {
  int n = 1;
  while (v >= 128) {
    v >>= 7;
    ++n;
  }
  return n;
}

// Serialized size of a proto3 bytes field numbered < 16 holding n bytes (omitted when empty).
int64_t BytesFieldSize(int64_t n) { return n == 0 ? 0 : 1 + VarintLength(n) + n; }

int64_t EchoRequestSize(int64_t payload, int64_t reply_bytes) {
  return BytesFieldSize(payload) + 1 + VarintLength(reply_bytes);
}

int64_t EchoReplySize(int64_t reply_bytes, int64_t payload) {
  if (reply_bytes <= payload) return BytesFieldSize(reply_bytes);
  return BytesFieldSize(payload) + BytesFieldSize(reply_bytes - payload);
}

// Largest x in [0, hi] with f(x) <= target, for f non-decreasing; 0 if none.
template <typename F>
int64_t LargestAtMost(int64_t hi, int64_t target, F f) {
  int64_t lo = 0;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (f(mid) <= target) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

std::vector<float> RandomFloats(int64_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = uniform(rng);
  return v;
}

// The session's two tensors: {name, shape}.
std::vector<std::pair<std::string, std::vector<int64_t>>> Split(int64_t params) {
  if (params <= kColumns) return {{"w", {1, params - 1}}, {"b", {1}}};
  const int64_t rows = (params - 1) / kColumns;
  return {{"w", {rows, kColumns}}, {"b", {params - rows * kColumns}}};
}

int64_t Elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void FillTensor(const std::string& name, const std::vector<int64_t>& shape, optd::v1::DType dtype,
                absl::Span<const float> values, optd::v1::Tensor* out) {
  out->set_name(name);
  for (int64_t d : shape) out->add_shape(d);
  out->set_dtype(dtype);
  EncodeFloats(static_cast<WireDType>(dtype), values, out->mutable_data());
}

absl::Status SetOptimizer(absl::string_view name, optd::v1::OptimizerConfig* config) {
  if (name == "adam") {
    config->mutable_adam();
  } else if (name == "sgd") {
    config->mutable_sgd()->set_lr(0.01);
  } else if (name == "adagrad") {
    config->mutable_adagrad();
  } else if (name == "normalized_gd") {
    config->mutable_normalized_gd();
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("optimizer \"", name, "\" is not one of adam, sgd, adagrad, normalized_gd"));
  }
  return absl::OkStatus();
}

}  // namespace

double PhaseStats::StepsPerSecond() const { return seconds > 0 ? steps / seconds : 0; }

double PhaseStats::MegabytesPerSecond() const { return seconds > 0 ? bytes / seconds / 1e6 : 0; }

double PhaseStats::LatencyPercentileUs(double q) const {
  if (latency_us.empty()) return 0;
  const double rank = std::ceil(q * static_cast<double>(latency_us.size()));
  const size_t index = static_cast<size_t>(std::max(1.0, rank)) - 1;
  return latency_us[std::min(index, latency_us.size() - 1)];
}

double PhaseStats::ServerCpuUsPerStep() const {
  if (server_cpu_seconds < 0 || steps == 0) return -1;
  return server_cpu_seconds * 1e6 / steps;
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address, int worker,
                                           const std::string& tls_ca_pem) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // Channels with a private subchannel pool never share a connection.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt("optd.bench.worker", worker);
  if (tls_ca_pem.empty()) {
    return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  }
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = tls_ca_pem;
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(tls), args);
}

absl::StatusOr<optd::v1::Consistency::Mode> ParseMode(absl::string_view text) {
  const std::string t = absl::AsciiStrToLower(text);
  if (t == "async") return optd::v1::Consistency::MODE_ASYNC;
  if (t == "sync") return optd::v1::Consistency::MODE_SYNC;
  if (t == "bounded") return optd::v1::Consistency::MODE_BOUNDED;
  return absl::InvalidArgumentError(
      absl::StrCat("mode \"", text, "\" is not one of async, sync, bounded"));
}

absl::StatusOr<optd::v1::DType> ParseDType(absl::string_view text) {
  const std::string t = absl::AsciiStrToLower(text);
  if (t == "f32") return optd::v1::DTYPE_F32;
  if (t == "bf16") return optd::v1::DTYPE_BF16;
  if (t == "f16") return optd::v1::DTYPE_F16;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype \"", text, "\" is not one of f32, bf16, f16"));
}

absl::string_view ModeName(optd::v1::Consistency::Mode mode) {
  switch (mode) {
    case optd::v1::Consistency::MODE_SYNC:
      return "sync";
    case optd::v1::Consistency::MODE_BOUNDED:
      return "bounded";
    default:
      return "async";
  }
}

absl::string_view DTypeName(optd::v1::DType dtype) {
  switch (dtype) {
    case optd::v1::DTYPE_BF16:
      return "bf16";
    case optd::v1::DTYPE_F16:
      return "f16";
    default:
      return "f32";
  }
}

EchoShape FitEcho(int64_t request_bytes, int64_t reply_bytes) {
  EchoShape shape;
  // The payload's length bounds how much of the reply is the same bytes, and the reply's length
  // changes the request's header by a byte or so: three rounds settle both.
  for (int round = 0; round < 3; ++round) {
    const int64_t r = shape.reply_bytes;
    shape.payload = LargestAtMost(request_bytes, request_bytes,
                                  [r](int64_t p) { return EchoRequestSize(p, r); });
    const int64_t p = shape.payload;
    shape.reply_bytes =
        LargestAtMost(reply_bytes, reply_bytes, [p](int64_t b) { return EchoReplySize(b, p); });
  }
  return shape;
}

// ---------------------------------------------------------------------------------------------
// OptdTarget

struct OptdTarget::Worker {
  int index = 0;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<optd::v1::Optimizer::Stub> stub;
  optd::v1::StepRequest request;  // the gradients, built once
  optd::v1::StepResponse reply;
  optd::v1::StreamStepsResponse stream_reply;
  int64_t sequence = 0;  // of the last request sent
  int64_t version = 0;   // of the last reply (the session starts at 0)
  int64_t request_bytes = 0;
  int64_t reply_bytes = 0;
};

class OptdTarget::Loop : public PhaseLoop {
 public:
  Loop(const Workload& workload, Worker* worker) : workload_(workload), w_(*worker) {}

 protected:
  // Sets the idempotency key and, where the mode needs it, the version of the last reply.
  void Prepare() {
    w_.request.set_sequence(++w_.sequence);
    if (workload_.mode != optd::v1::Consistency::MODE_ASYNC) w_.request.set_version(w_.version);
  }

  // Checks the reply against the mode's rules and records its version.
  absl::Status Accept(const optd::v1::StepResponse& reply, int64_t reply_bytes, CallOutcome* out) {
    const std::string who = absl::StrCat("w", w_.index, " sequence ", w_.sequence);
    if (reply.duplicate()) {
      return absl::InternalError(absl::StrCat(who, ": a new step was answered as a duplicate"));
    }
    const int want_tensors = workload_.return_all ? 2 : 0;
    if (reply.parameters_size() != want_tensors) {
      return absl::InternalError(absl::StrCat(who, ": reply has ", reply.parameters_size(),
                                              " parameter tensors; expected ", want_tensors));
    }
    if (workload_.mode == optd::v1::Consistency::MODE_SYNC) {
      if (reply.version() != w_.version + 1) {
        return absl::FailedPreconditionError(absl::StrCat(
            who, ": SYNC gradient sent at version ", w_.version, " got version ", reply.version(),
            "; a barrier of ", workload_.workers, " workers gives version ", w_.version + 1,
            " (is the server holding the barrier?)"));
      }
    } else if (reply.version() <= w_.version) {
      return absl::InternalError(absl::StrCat(who, ": version went from ", w_.version, " to ",
                                              reply.version(), "; it must grow"));
    }
    w_.version = reply.version();
    w_.request_bytes = static_cast<int64_t>(w_.request.ByteSizeLong());
    w_.reply_bytes = reply_bytes;
    out->version = reply.version();
    out->bytes = w_.request_bytes + reply_bytes;
    return absl::OkStatus();
  }

  // BOUNDED: a stale gradient was refused; continue from the session's current version (read
  // with GetSession when the refusal did not carry it).
  absl::Status Refused(int64_t current_version, CallOutcome* out) {
    out->refused = true;
    if (current_version < 0) {
      grpc::ClientContext context;
      SetDeadline(&context, absl::Now() + kCallSlack);
      optd::v1::GetSessionRequest request;
      request.set_session_id(w_.request.session_id());
      optd::v1::Session session;
      const grpc::Status s = w_.stub->GetSession(&context, request, &session);
      if (!s.ok()) return FromGrpc("GetSession after a stale step", s);
      current_version = session.version();
    }
    w_.version = current_version;
    return absl::OkStatus();
  }

  bool Bounded() const { return workload_.mode == optd::v1::Consistency::MODE_BOUNDED; }

  const Workload& workload_;
  Worker& w_;
};

class OptdTarget::UnaryLoop final : public OptdTarget::Loop {
 public:
  using Loop::Loop;

  // The session's version that optd sends with a refused step (trailing metadata
  // "optd-current-version"), or -1.
  static int64_t TrailingVersion(const grpc::ClientContext& context) {
    const auto& trailers = context.GetServerTrailingMetadata();
    const auto it = trailers.find("optd-current-version");
    int64_t version = -1;
    if (it == trailers.end() ||
        !absl::SimpleAtoi(absl::string_view(it->second.data(), it->second.size()), &version)) {
      return -1;
    }
    return version;
  }

  absl::Status Call(CallOutcome* out) override {
    Prepare();
    grpc::ClientContext context;
    SetDeadline(&context, absl::Now() + kCallSlack);
    const grpc::Status s = w_.stub->Step(&context, w_.request, &w_.reply);
    if (!s.ok()) {
      if (Bounded() && s.error_code() == grpc::StatusCode::ABORTED) {
        return Refused(TrailingVersion(context), out);
      }
      return FromGrpc("Step", s);
    }
    return Accept(w_.reply, static_cast<int64_t>(w_.reply.ByteSizeLong()), out);
  }
};

class OptdTarget::StreamLoop final : public OptdTarget::Loop {
 public:
  using Loop::Loop;

  absl::Status Open(absl::Time deadline) override {
    SetDeadline(&context_, deadline);
    stream_ = w_.stub->StreamSteps(&context_);
    return absl::OkStatus();
  }

  absl::Status Call(CallOutcome* out) override {
    Prepare();
    if (!stream_->Write(w_.request) || !stream_->Read(&w_.stream_reply)) return Finish();
    const optd::v1::StreamStepsResponse& r = w_.stream_reply;
    if (r.has_error()) {
      if (Bounded() && r.error().code() == static_cast<int>(grpc::StatusCode::ABORTED)) {
        return Refused(r.error().current_version(), out);
      }
      return absl::Status(static_cast<absl::StatusCode>(r.error().code()),
                          absl::StrCat("StreamSteps step: ", r.error().message()));
    }
    return Accept(r.reply(), static_cast<int64_t>(r.ByteSizeLong()), out);
  }

  absl::Status Close() override {
    if (stream_ == nullptr || finished_) return absl::OkStatus();
    finished_ = true;
    stream_->WritesDone();
    const grpc::Status s = stream_->Finish();
    return s.ok() ? absl::OkStatus() : FromGrpc("StreamSteps", s);
  }

 private:
  // After a failed Write or Read: the call's status, which explains the failure.
  absl::Status Finish() {
    finished_ = true;
    const grpc::Status s = stream_->Finish();
    if (s.ok()) return absl::InternalError("StreamSteps ended early with OK");
    return FromGrpc("StreamSteps", s);
  }

  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<optd::v1::StepRequest, optd::v1::StreamStepsResponse>>
      stream_;
  bool finished_ = false;
};

OptdTarget::OptdTarget(const std::string& address, Workload workload, std::string session_id)
    : workload_(std::move(workload)),
      session_id_(std::move(session_id)),
      control_channel_(MakeChannel(address, -1, workload_.tls_ca_pem)),
      control_(optd::v1::Optimizer::NewStub(control_channel_)) {}

OptdTarget::~OptdTarget() {
  grpc::ClientContext context;
  SetDeadline(&context, absl::Now() + absl::Seconds(5));
  optd::v1::DeleteSessionRequest request;
  request.set_session_id(session_id_);
  optd::v1::DeleteSessionResponse response;
  control_->DeleteSession(&context, request, &response);  // best effort
}

absl::StatusOr<std::unique_ptr<OptdTarget>> OptdTarget::Create(const std::string& address,
                                                               const Workload& workload,
                                                               const std::string& session_id) {
  if (workload.workers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("workers = ", workload.workers, "; must be >= 1"));
  }
  if (workload.params < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("params = ", workload.params, "; must be >= 2 (a matrix and a bias)"));
  }
  if (workload.max_staleness < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_staleness = ", workload.max_staleness, "; must be >= 0"));
  }
  const auto tensors = Split(workload.params);

  optd::v1::CreateSessionRequest create;
  create.set_session_id(session_id);
  optd::v1::SessionConfig* config = create.mutable_config();
  if (absl::Status s = SetOptimizer(workload.optimizer, config->mutable_optimizer()); !s.ok()) {
    return s;
  }
  if (workload.mode != optd::v1::Consistency::MODE_ASYNC) {
    optd::v1::Consistency* c = config->mutable_consistency();
    c->set_mode(workload.mode);
    if (workload.mode == optd::v1::Consistency::MODE_SYNC) {
      c->set_workers(workload.workers);
      c->set_barrier_timeout_seconds(kBarrierTimeoutSeconds);
    } else {
      c->set_max_staleness(workload.max_staleness);
    }
  }
  uint32_t seed = 1;
  for (const auto& [name, shape] : tensors) {
    const std::vector<float> initial = RandomFloats(Elements(shape), 0.1f, seed++);
    FillTensor(name, shape, optd::v1::DTYPE_F32, initial, create.add_tensors());
  }

  std::unique_ptr<OptdTarget> target(new OptdTarget(address, workload, session_id));
  grpc::ClientContext context;
  SetDeadline(&context, absl::Now() + kCallSlack);
  context.set_wait_for_ready(true);
  optd::v1::Session session;
  if (grpc::Status s = target->control_->CreateSession(&context, create, &session); !s.ok()) {
    return FromGrpc(absl::StrCat("CreateSession at ", address), s);
  }
  const optd::v1::Consistency::Mode got = session.config().consistency().mode();
  if (got != workload.mode) {
    return absl::UnimplementedError(absl::StrCat(
        "the server at ", address, " created the session with consistency mode ",
        optd::v1::Consistency::Mode_Name(got), " when asked for ",
        optd::v1::Consistency::Mode_Name(workload.mode), ": it does not implement that mode"));
  }

  for (int i = 0; i < workload.workers; ++i) {
    auto w = std::make_unique<Worker>();
    w->index = i;
    w->channel = MakeChannel(address, i, workload.tls_ca_pem);
    w->stub = optd::v1::Optimizer::NewStub(w->channel);
    optd::v1::StepRequest& r = w->request;
    r.set_session_id(session_id);
    r.set_worker_id(absl::StrCat("w", i));
    for (const auto& [name, shape] : tensors) {
      const std::vector<float> gradient = RandomFloats(Elements(shape), 0.01f, 1000 + seed++);
      FillTensor(name, shape, workload.dtype, gradient, r.add_gradients());
    }
    r.set_return_parameters(workload.return_all ? optd::v1::RETURN_PARAMETERS_ALL
                                                : optd::v1::RETURN_PARAMETERS_NONE);
    r.set_return_dtype(workload.dtype);
    if (!w->channel->WaitForConnected(absl::ToChronoTime(absl::Now() + absl::Seconds(10)))) {
      return absl::UnavailableError(absl::StrCat("worker ", i, " cannot connect to ", address));
    }
    target->workers_.push_back(std::move(w));
  }
  return target;
}

absl::StatusOr<PhaseStats> OptdTarget::RunPhase(const PhaseBounds& bounds, CpuProbe cpu,
                                                const void* cpu_arg) {
  std::vector<std::unique_ptr<PhaseLoop>> loops;
  for (std::unique_ptr<Worker>& w : workers_) {
    if (workload_.stream) {
      loops.push_back(std::make_unique<StreamLoop>(workload_, w.get()));
    } else {
      loops.push_back(std::make_unique<UnaryLoop>(workload_, w.get()));
    }
  }
  const bool lockstep = workload_.mode == optd::v1::Consistency::MODE_SYNC;
  absl::StatusOr<PhaseStats> stats = RunLoops(std::move(loops), bounds, lockstep, cpu, cpu_arg);
  if (stats.ok()) {
    request_bytes_ = workers_[0]->request_bytes;
    reply_bytes_ = workers_[0]->reply_bytes;
  }
  return stats;
}

// ---------------------------------------------------------------------------------------------
// EchoTarget

struct EchoTarget::Worker {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<bench::v1::Echo::Stub> stub;
  bench::v1::EchoRequest request;
  bench::v1::EchoReply reply;
};

class EchoTarget::UnaryLoop final : public PhaseLoop {
 public:
  explicit UnaryLoop(Worker* worker) : w_(*worker) {}

  absl::Status Call(CallOutcome* out) override {
    grpc::ClientContext context;
    SetDeadline(&context, absl::Now() + kCallSlack);
    const grpc::Status s = w_.stub->Echo(&context, w_.request, &w_.reply);
    if (!s.ok()) return FromGrpc("Echo", s);
    out->bytes = w_.request.ByteSizeLong() + w_.reply.ByteSizeLong();
    return absl::OkStatus();
  }

 private:
  Worker& w_;
};

class EchoTarget::StreamLoop final : public PhaseLoop {
 public:
  explicit StreamLoop(Worker* worker) : w_(*worker) {}

  absl::Status Open(absl::Time deadline) override {
    SetDeadline(&context_, deadline);
    stream_ = w_.stub->EchoStream(&context_);
    return absl::OkStatus();
  }

  absl::Status Call(CallOutcome* out) override {
    if (!stream_->Write(w_.request) || !stream_->Read(&w_.reply)) return Finish();
    out->bytes = w_.request.ByteSizeLong() + w_.reply.ByteSizeLong();
    return absl::OkStatus();
  }

  absl::Status Close() override {
    if (stream_ == nullptr || finished_) return absl::OkStatus();
    finished_ = true;
    stream_->WritesDone();
    const grpc::Status s = stream_->Finish();
    return s.ok() ? absl::OkStatus() : FromGrpc("EchoStream", s);
  }

 private:
  // After a failed Write or Read: the call's status, which explains the failure.
  absl::Status Finish() {
    finished_ = true;
    const grpc::Status s = stream_->Finish();
    if (s.ok()) return absl::InternalError("EchoStream ended early with OK");
    return FromGrpc("EchoStream", s);
  }

  Worker& w_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<bench::v1::EchoRequest, bench::v1::EchoReply>> stream_;
  bool finished_ = false;
};

EchoTarget::EchoTarget(bool stream) : stream_(stream) {}

EchoTarget::~EchoTarget() = default;

absl::StatusOr<std::unique_ptr<EchoTarget>> EchoTarget::Create(const std::string& address,
                                                               int workers, bool stream,
                                                               const std::string& tls_ca_pem) {
  if (workers < 1) {
    return absl::InvalidArgumentError(absl::StrCat("workers = ", workers, "; must be >= 1"));
  }
  std::unique_ptr<EchoTarget> target(new EchoTarget(stream));
  for (int i = 0; i < workers; ++i) {
    auto w = std::make_unique<Worker>();
    w->channel = MakeChannel(address, i, tls_ca_pem);
    w->stub = bench::v1::Echo::NewStub(w->channel);
    if (!w->channel->WaitForConnected(absl::ToChronoTime(absl::Now() + absl::Seconds(10)))) {
      return absl::UnavailableError(
          absl::StrCat("echo worker ", i, " cannot connect to ", address));
    }
    target->workers_.push_back(std::move(w));
  }
  return target;
}

void EchoTarget::MatchSizes(int64_t request_bytes, int64_t reply_bytes) {
  const EchoShape shape = FitEcho(request_bytes, reply_bytes);
  uint32_t seed = 7;
  for (std::unique_ptr<Worker>& w : workers_) {
    std::string* payload = w->request.mutable_payload();
    if (payload->empty()) {
      *payload = RandomBytes(shape.payload, seed++);
    } else {
      payload->resize(shape.payload);  // a later match moves a byte or two
    }
    w->request.set_reply_bytes(shape.reply_bytes);
  }
  request_bytes_ = static_cast<int64_t>(workers_[0]->request.ByteSizeLong());
  reply_bytes_ = EchoReplySize(shape.reply_bytes, shape.payload);
}

absl::StatusOr<PhaseStats> EchoTarget::RunPhase(const PhaseBounds& bounds, CpuProbe cpu,
                                                const void* cpu_arg) {
  if (request_bytes_ == 0) {
    return absl::FailedPreconditionError("EchoTarget::RunPhase before MatchSizes");
  }
  std::vector<std::unique_ptr<PhaseLoop>> loops;
  for (std::unique_ptr<Worker>& w : workers_) {
    if (stream_) {
      loops.push_back(std::make_unique<StreamLoop>(w.get()));
    } else {
      loops.push_back(std::make_unique<UnaryLoop>(w.get()));
    }
  }
  return RunLoops(std::move(loops), bounds, /*lockstep=*/false, cpu, cpu_arg);
}

}  // namespace bench
}  // namespace optd
