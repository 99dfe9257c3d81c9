// File: client.h
//
// optd::client::Client: the C++ client of an optd server (the optd.v1.Optimizer service and
// grpc.health.v1), a thin layer over the generated stubs of proto/optd/v1/optd.proto. It creates,
// reads, updates, lists and deletes sessions, pulls parameters (all, some tensors, or some rows)
// and steps them, one call at a time (Step) or over a stream (StepStream), with float32
// HostTensors (dense or row-sparse) on the caller's side whatever the wire dtype (F32, BF16, F16).
// A worker loop uses a Worker (worker.h), which joins the session, numbers its steps and tracks the
// version.
//
//   absl::StatusOr<std::unique_ptr<optd::client::Client>> client =
//       optd::client::Client::Connect("127.0.0.1:50051");
//   if (!client.ok()) return client.status();
//   optd::client::Worker worker(client->get(), "my-session");  // worker id, sequence, version
//   absl::StatusOr<optd::client::StepResult> r = worker.Step(gradients);
//
// Who may call it: any C++ program (workers, optctl, tests).
//
// Thread safety: a Client is thread-safe; any number of threads may call it at once (each call has
// its own gRPC context; the stubs are thread-safe). A StepStream is NOT thread-safe: one thread (or
// one externally serialised worker loop) drives it.
//
// Retries (RetryPolicy in retry.h, ClientOptions::retry): reads (GetSession, ListSessions, Pull),
// JoinSession and keyed steps (worker_id and sequence > 0) are retried on UNAVAILABLE,
// DEADLINE_EXCEEDED and CANCELLED (a server shutting down) with jittered exponential backoff, the
// step with the same sequence number, so the server applies it once (a retry of an applied step
// comes back with StepResult::duplicate). CreateSession,
// UpdateSession, DeleteSession and unkeyed steps are never retried. StepStream does not retry; a
// WorkerStream reopens its stream and resends.
//
// Durability (a server run with --checkpoint_dir): Checkpoint writes a session's checkpoint now,
// CreateSessionFromCheckpoint forks a session from one, PullOptions::optimizer_state exports the
// optimizer state. Step and Pull results carry the answering server process
// (server_incarnation, new at each server start) and the session's durable version (the newest
// checkpointed); step errors carry the former too (ServerIncarnation(status)). A Worker
// (worker.h) uses them to notice restarts (server_restarted, ServerRestarted(status)).
//
// Errors: every method returns the server's gRPC status as an absl::Status with the same code and
// message (the codes are the same canonical set): NOT_FOUND for an unknown session, ALREADY_EXISTS
// for a taken id, INVALID_ARGUMENT for a rejected request (the message names the field),
// ABORTED for a stale gradient (CurrentVersion() reads the session's version from it),
// FAILED_PRECONDITION for a reused sequence number (NeedsRejoin() when the server cannot place the
// worker's step and the worker must join again), UNAVAILABLE when the server cannot be reached
// and DEADLINE_EXCEEDED when a call outlives ClientOptions::timeout; those last two, once retries
// are spent, also name the method, the server's address and the attempts made. InvalidArgument is
// also returned, before any RPC, for a request the client can tell is invalid (a HostTensor whose
// values do not match its shape, a bad worker id, a sequence without a worker id, a non-finite
// loss, ...). A reply the client cannot decode is Internal. UNAUTHENTICATED, PERMISSION_DENIED
// and a failed TLS handshake (UNAVAILABLE, not retried) come with messages that name the server,
// the call and the option to check (credentials.h).
//
// Security (README "Security"): ClientOptions::tls_ca / tls_cert / tls_key turn on TLS and mTLS;
// ClientOptions::token (default $OPTD_TOKEN) is sent as a bearer token with every call.

#ifndef OPTD_CLIENT_CPP_CLIENT_H_
#define OPTD_CLIENT_CPP_CLIENT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/cpp/credentials.h"
#include "client/cpp/host_tensor.h"
#include "client/cpp/retry.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/sync_stream.h"
#include "optd/v1/optd.grpc.pb.h"
#include "optd/v1/optd.pb.h"

namespace optd {
namespace client {

struct ClientOptions {
  // Deadline of each unary call (of each attempt, when retried), counted from when it starts.
  // InfiniteDuration: no deadline. > 0.
  absl::Duration timeout = absl::Seconds(30);
  // Largest message sent or received, in bytes (Connect only; a channel passed to the constructor
  // keeps its own limits). Must be in [1, 2^31 - 1]. The default matches the server's.
  int64_t max_message_bytes = 256 << 20;
  // false: a call fails at once with UNAVAILABLE while the server cannot be reached (and is then
  // retried if it may be). true: it waits (until its deadline) for the server to come up.
  bool wait_for_ready = false;
  // How reads and keyed steps are retried (see retry.h for the default budget and why).
  RetryPolicy retry;
  // Connect only: the longest wait of the channel between two connection attempts (gRPC's default
  // grows to 120 s), so that a restarted server is found within the retry budget; the resolver's
  // re-resolution interval is capped at the same value (at most 1 s), since the channel reconnects
  // only after it. In [100 ms, 120 s].
  absl::Duration max_reconnect_backoff = absl::Seconds(1);
  // Metadata sent with every call. Keys are lowercase.
  std::vector<std::pair<std::string, std::string>> metadata;
  // Connect only: TLS and mTLS (credentials.h). tls_ca: PEM file of the CA the server's
  // certificate must chain to (turns TLS on); tls: TLS with the system's roots; tls_cert and
  // tls_key: PEM files of the client certificate and its key, for a server with --tls_client_ca
  // (both or neither; they turn TLS on too); tls_server_name: the name the server's certificate
  // must hold when not the address's host. Read once, by Connect.
  bool tls = false;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_server_name;
  // Bearer token sent as "authorization: Bearer <token>" with every call, streams included (over
  // a plaintext channel only on loopback). Unset: the OPTD_TOKEN environment variable; "": none.
  std::optional<std::string> token;
  // Connect only: the channel's credentials, for callers that build their own (not with the tls
  // fields); null means insecure unless the tls fields are given.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // false: refusals (UNAUTHENTICATED, PERMISSION_DENIED, a failed TLS handshake) come back with
  // gRPC's own message, for a caller that explains them itself (the Python native path: its
  // optd.Client explains them in Python, as its pure path does). A failed handshake is still
  // recognised, and not retried.
  bool explain_refusals = true;

  absl::Status Validate() const;
};

// What a step sends besides the gradients (the fields of v1::StepRequest).
struct StepOptions {
  // Who sends the gradient: 1-128 characters of [A-Za-z0-9._:-]. Required in SYNC sessions and
  // with a sequence. (A Worker fills it in.)
  std::string worker_id;
  // Idempotency key with worker_id: 0 means none; otherwise > 0 and increasing with each new step
  // of the worker (of its incarnation). Only a keyed step is retried. (A Worker fills it in.)
  int64_t sequence = 0;
  // The worker's incarnation from JoinSession (>= 0; only with a sequence). 0: the worker did not
  // join, and its sequences follow the unjoined rules. (A Worker fills it in.)
  int64_t worker_incarnation = 0;
  // The session version the gradient was computed at (>= 0). Required in SYNC and BOUNDED
  // sessions. (A Worker sends its known version when this is unset.)
  std::optional<int64_t> version;
  // The loss observed for this gradient, if any (finite): reported in metrics, and the signal of a
  // reduce_on_plateau schedule.
  std::optional<double> loss;
  // Which parameters the reply carries: ALL, NONE (only the version), or TOUCHED (tensors with a
  // dense gradient whole, those with a row-sparse gradient only the rows it touched, row-sparse).
  v1::ReturnParameters return_parameters = v1::RETURN_PARAMETERS_ALL;
  // Wire encoding of the returned parameters (decoded to float32 either way).
  v1::DType return_dtype = v1::DTYPE_F32;
  // Wire encoding of the gradients sent. BF16 and F16 halve the bytes and round the gradient.
  v1::DType gradient_dtype = v1::DTYPE_F32;
  // Which point the returned parameters are: the training point, or the evaluation point of an
  // optimizer that keeps one (Schedule-Free's x, DoG's average; with ALL or NONE).
  v1::ParameterPoint return_point = v1::PARAMETER_POINT_TRAINING;
  // Overrides ClientOptions::retry for this step (a keyed step only; unkeyed ones never retry).
  std::optional<RetryPolicy> retry;
  // The fingerprint of the placement of a sharded session (v1::Placement::fingerprint) that the
  // step names (StepRequest.placement_fingerprint); 0 for a session that is not sharded. A shard
  // refuses a step naming another placement, or none. (A ShardedWorker fills it in.)
  uint64_t placement_fingerprint = 0;
};

// The outcome of one step (v1::StepResponse, decoded).
struct StepResult {
  // The session's version after this step.
  int64_t version = 0;
  // The version of `parameters`: `version`, or later for a duplicate.
  int64_t parameters_version = 0;
  // The parameters after the step, as StepOptions::return_parameters asked (row-sparse for the
  // touched rows of a row-sparse gradient); empty with RETURN_PARAMETERS_NONE.
  std::vector<HostTensor> parameters;
  // L2 norm, over all tensors, of the gradient as the server received it, before clipping (SYNC:
  // of the combined gradient).
  double gradient_norm = 0;
  // The learning rate the step used.
  double learning_rate = 0;
  // True if this answers a retry: the step had been applied once, earlier, with this outcome.
  bool duplicate = false;
  // SYNC: how many gradients the step combined, and the expected workers that were missing when
  // the barrier proceeded on its quorum.
  int32_t workers = 0;
  std::vector<std::string> missing_workers;
  // Session version at arrival minus the version the gradient was computed at (0 without one).
  int64_t staleness = 0;
  // The sequence number sent (0: none) and the calls the step took (1 unless it was retried; a
  // step resent after its worker joined again counts from 1 again).
  int64_t sequence = 0;
  int attempts = 1;
  // The worker incarnation sent (0: none), and how many times the worker joined again during this
  // step (the server had forgotten it, so the refused step, never applied, was resent).
  int64_t worker_incarnation = 0;
  int rejoins = 0;
  // The server process that answered (an id new at each server start) and the session's newest
  // checkpointed version (-1: none, or the server runs without --checkpoint_dir): steps after it
  // are lost if the server is killed.
  std::string server_incarnation;
  int64_t durable_version = -1;
  // Set by a Worker (Client::Step leaves it false): the reply came from another server process
  // than the worker's previous reply, so the server restarted in between and this step applied to
  // the session as restored from its checkpoint.
  bool server_restarted = false;
  // The point `parameters` are (StepOptions::return_point).
  v1::ParameterPoint point = v1::PARAMETER_POINT_TRAINING;
  // The optimizer's estimates after the step (Prodigy's and D-Adaptation's "d", DoG's "eta", ...).
  std::map<std::string, double> estimates;
};

// What JoinSession returns.
struct JoinResult {
  // Send with every keyed step of this incarnation (StepOptions::worker_incarnation).
  int64_t worker_incarnation = 0;
  // The first sequence number of the incarnation (1).
  int64_t next_sequence = 1;
  // The session's version at the join.
  int64_t version = 0;
  // The server process that answered (JoinSessionResponse carries no durable version).
  std::string server_incarnation;
};

// Rows of one tensor to pull.
struct TensorRows {
  std::string name;
  std::vector<int64_t> indices;  // each in [0, shape[0]), in the order wanted
};

struct PullOptions {
  // Tensors to return, by name; empty means all of them, in creation order.
  std::vector<std::string> names = {};
  // Wire encoding of the returned values (decoded to float32 either way).
  v1::DType dtype = v1::DTYPE_F32;
  // For the tensors named here, only these rows (returned row-sparse, in the order given). Each
  // must also be among `names` when `names` is not empty.
  std::vector<TensorRows> rows = {};
  // Also return the whole optimizer state (PullResult::optimizer_state), at the same version as
  // the parameters. Not with `rows`.
  bool optimizer_state = false;
  // The training point, or the evaluation point of an optimizer that keeps one (Schedule-Free's
  // x, DoG's average; FAILED_PRECONDITION for the others). Not with `rows`.
  v1::ParameterPoint point = v1::PARAMETER_POINT_TRAINING;
};

struct PullResult {
  int64_t version = 0;
  std::vector<HostTensor> tensors;
  // See StepResult.
  std::string server_incarnation;
  int64_t durable_version = -1;
  // With PullOptions::optimizer_state: the optimizer's state as torch.optim names it (per tensor:
  // its step count and F32 arrays such as "exp_avg"; HostTensorFromProto decodes them). It can be
  // given back with UpdateSession (UpdateSessionRequest.optimizer_state).
  std::optional<v1::OptimizerState> optimizer_state;
  // The point `tensors` are (PullOptions::point).
  v1::ParameterPoint point = v1::PARAMETER_POINT_TRAINING;
};

// What Checkpoint returns.
struct CheckpointResult {
  int64_t version = 0;  // the version checkpointed (now the session's durable version)
  std::string path;     // the checkpoint file, on the server (CheckpointSource::path)
  int64_t bytes = 0;
};

// The checkpoint a session starts from (CreateSessionFromCheckpoint): exactly one of `path` (a
// checkpoint file on the server, CheckpointResult::path) and `session_id` (that session's newest
// checkpoint).
struct CheckpointSource {
  std::string path;
  std::string session_id;
};

// The session's version carried by an ABORTED status (a stale gradient or a missed barrier: the
// worker should pull and recompute), read from the unary reply's trailing metadata or the stream's
// StepError; nullopt for any other status.
std::optional<int64_t> CurrentVersion(const absl::Status& status);

// Whether `status` is a FAILED_PRECONDITION refusal of a keyed step that the server cannot place
// (the worker was forgotten, its worker id joined again elsewhere, or the session was restored
// without it), after which the worker must join again (JoinSession): the unary reply's trailing
// metadata "optd-rejoin: 1", or StepError.rejoin on a stream. The refused step was not applied if
// the call was its first attempt; a refused retry may have been (a Worker then returns a
// step-outcome-unknown error: IsStepOutcomeUnknown, worker.h).
bool NeedsRejoin(const absl::Status& status);

// The incarnation of the server process that answered with `status` (unary: the trailing
// metadata "optd-server-incarnation"; streams: StepError.server_incarnation); empty when no server
// answered (e.g. UNAVAILABLE) or for the client's own checks. It changes at each server start.
std::string ServerIncarnation(const absl::Status& status);

// Whether a Worker or WorkerStream saw `status` come from another server process than its
// previous reply: the server restarted and restored its sessions from their checkpoints (steps
// after a session's durable version were lost). An ABORTED step with it is a gradient computed at
// a lost version: pull the restored parameters and recompute. False for statuses a Worker did not
// return.
bool ServerRestarted(const absl::Status& status);

// `status` marked (or unmarked) as ServerRestarted; code, message and other payloads kept. For
// Worker.
absl::Status WithServerRestarted(absl::Status status, bool restarted);

// Builds the v1::StepRequest that Client::Step sends, checking what the client can check cheaply:
// session id and worker id syntax, sequence >= 0 and only with a worker id, version >= 0, a finite
// loss, known enums, and each gradient's values against its shape (and rows). InvalidArgument
// naming the field otherwise.
absl::StatusOr<v1::StepRequest> MakeStepRequest(absl::string_view session_id,
                                                const std::vector<HostTensor>& gradients,
                                                const StepOptions& options);

class StepStream;

class Client {
 public:
  // Makes a client for the server at `address` ("host:port", or any gRPC target such as
  // "dns:///host:port" or "unix:/path"). Connecting is lazy: an unreachable server shows up as
  // UNAVAILABLE (or DEADLINE_EXCEEDED with wait_for_ready) on the first call, after its retries.
  // InvalidArgument for an empty address or options out of range (options.Validate()).
  static absl::StatusOr<std::unique_ptr<Client>> Connect(std::string address,
                                                         ClientOptions options = {});

  // A client over an existing channel (e.g. OptdServer::InProcessChannel() in tests). `target`
  // only names the server in error messages. The tls fields of `options` do not apply (the channel
  // has its credentials); the token does (unset: $OPTD_TOKEN, ignored if unusable).
  // REQUIRES: channel != nullptr and options.Validate() is OK.
  explicit Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options = {},
                  std::string target = "");

  // As above, with the Security that explains refusals and recognises failed TLS handshakes
  // (Security::ForChannel for a channel made with known credentials).
  Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options, std::string target,
         Security security);

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client();

  // Creates a session from a full request and returns it with every default filled in.
  absl::StatusOr<v1::Session> CreateSession(const v1::CreateSessionRequest& request);
  // The same, from parts: `session_id` may be empty (the server then generates one); the tensors
  // are sent as float32.
  absl::StatusOr<v1::Session> CreateSession(std::string session_id, const v1::SessionConfig& config,
                                            const std::vector<HostTensor>& tensors);

  absl::StatusOr<v1::Session> GetSession(absl::string_view session_id);

  // The server's placement of a model over request.shards() shards (PlanPlacement; it holds
  // nothing, so it is retried like a read). INVALID_ARGUMENT for a bad model or shard count;
  // FAILED_PRECONDITION for an optimizer or clipping a sharded session cannot run. Sharded
  // sessions are created by a ShardedClient (sharded_client.h), which calls this.
  absl::StatusOr<v1::Placement> PlanPlacement(const v1::PlanPlacementRequest& request);

  // Every session, sorted by id, following page tokens until the last page. `page_size` is the
  // number asked for per call: 0 takes the server's default (100); at most 1000.
  absl::StatusOr<std::vector<v1::Session>> ListSessions(int32_t page_size = 0);

  // Changes hyperparameters (fields set in an optimizer message of the session's kind), the
  // schedule or the clipping for the next step, keeping the optimizer state; returns the session.
  // INVALID_ARGUMENT for another optimizer kind or a value out of range (nothing changes).
  absl::StatusOr<v1::Session> UpdateSession(const v1::UpdateSessionRequest& request);

  // UpdateSession of the learning rate only, whatever the session's optimizer (read first).
  absl::StatusOr<v1::Session> SetLearningRate(absl::string_view session_id, double lr);

  absl::Status DeleteSession(absl::string_view session_id);

  // Reads parameters without stepping (see PullOptions), decoded to float32.
  absl::StatusOr<PullResult> Pull(absl::string_view session_id, const PullOptions& options = {});

  // Writes a checkpoint of the session now and returns once it is durable. NOT_FOUND;
  // FAILED_PRECONDITION when the server runs without --checkpoint_dir; RESOURCE_EXHAUSTED,
  // PERMISSION_DENIED or INTERNAL when the write fails (older checkpoints stay intact). Not
  // retried.
  absl::StatusOr<CheckpointResult> Checkpoint(absl::string_view session_id);

  // Creates session `session_id` (empty: the server generates one) from a checkpoint: a fork with
  // the checkpoint's parameters, optimizer state, schedule state and version and a new
  // exactly-once table. `config`, if given, replaces the checkpoint's hyperparameters (same
  // optimizer kind), e.g. another learning rate from the same point. FAILED_PRECONDITION without
  // --checkpoint_dir; NOT_FOUND for no such checkpoint; ALREADY_EXISTS; INVALID_ARGUMENT (both or
  // neither of path and session_id in `from`, another optimizer kind).
  absl::StatusOr<v1::Session> CreateSessionFromCheckpoint(
      std::string session_id, const CheckpointSource& from,
      const std::optional<v1::SessionConfig>& config = std::nullopt);

  // Applies one gradient per session tensor (by name, any order; dense or row-sparse): all of it
  // or, on error, none. Retried (options.retry, else ClientOptions::retry) only when keyed.
  absl::StatusOr<StepResult> Step(absl::string_view session_id,
                                  const std::vector<HostTensor>& gradients,
                                  const StepOptions& options = {});

  // Sends a built request (MakeStepRequest, or a Worker's), retried per `retry` if it is keyed.
  // `attempts` (if not null) receives the calls made, also when the step fails.
  absl::StatusOr<StepResult> SendStep(const v1::StepRequest& request, const RetryPolicy& retry,
                                      int* attempts = nullptr);
  absl::StatusOr<StepResult> SendStep(const v1::StepRequest& request) {
    return SendStep(request, options_.retry);
  }

  // SendStep leaving the reply undecoded in `*response` (the Python extension decodes it straight
  // into the caller's arrays), each attempt with deadline `timeout` (InfiniteDuration: none).
  // Same retries and errors as SendStep.
  absl::Status SendStepRaw(const v1::StepRequest& request, const RetryPolicy& retry,
                           absl::Duration timeout, v1::StepResponse* response,
                           int* attempts = nullptr);

  // Starts a new incarnation of `worker_id` on the session (JoinSession): its keyed steps then
  // carry JoinResult::worker_incarnation and sequences from next_sequence, and steps of its earlier
  // incarnations (a previous process with the same id) are refused. A Worker joins by itself; this
  // is for code that builds its own requests. Retried like a read (a retried join only leaves an
  // unused incarnation). NOT_FOUND; INVALID_ARGUMENT for a bad worker id.
  absl::StatusOr<JoinResult> JoinSession(absl::string_view session_id, absl::string_view worker_id);

  // Opens a StreamSteps stream. The stream as a whole must finish within `lifetime` (a gRPC stream
  // has a single deadline); the default, ZeroDuration, means no deadline, and so does
  // InfiniteDuration. Never fails here: a stream that cannot start reports its status from the
  // first StepStream::Step or Close.
  std::unique_ptr<StepStream> StreamSteps(absl::Duration lifetime = absl::ZeroDuration());

  // grpc.health.v1 Check of `service` ("" is the server as a whole, "optd.v1.Optimizer" the
  // optimizer service): true if SERVING, false for any other reported status. NOT_FOUND if the
  // server does not know `service`.
  absl::StatusOr<bool> Health(const std::string& service = "");

  const ClientOptions& options() const { return options_; }
  // The address given to Connect (or the constructor's `target`).
  const std::string& target() const { return target_; }
  // TLS and token in use, and the explanations of refusals (credentials.h).
  const Security& security() const { return security_; }

 private:
  friend class StepStream;

  // Sets the deadline, wait-for-ready and metadata of a call.
  void Prepare(grpc::ClientContext* context, absl::Duration timeout) const;

  // Runs `call` (one attempt, given a fresh prepared context) until it succeeds, fails with a code
  // `retry` does not retry, or attempts run out; names `method` and target_ in a final transport
  // error. *attempts (if not null) receives the attempts made.
  // Each attempt's deadline is `timeout` when given, else ClientOptions::timeout.
  template <typename Call>
  absl::Status Retry(absl::string_view method, const RetryPolicy& retry, Call call,
                     int* attempts = nullptr, std::optional<absl::Duration> timeout = std::nullopt);

  const ClientOptions options_;
  const std::string target_;
  const Security security_;
  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<v1::Optimizer::Stub> stub_;
  // grpc.health.v1.Health stub; a pointer to an opaque type keeps the generated health headers
  // out of this one.
  struct HealthStub;
  const std::unique_ptr<HealthStub> health_;
};

// One StreamSteps stream: each Step writes one request and reads its reply, in order. A step the
// server refuses is returned as its status (with CurrentVersion for ABORTED) and the stream goes
// on; a stream-level failure (the connection drops, the deadline passes, the server ends the call)
// is returned by that Step and by every later call, and the stream is then finished().
//
// Not thread-safe. Destroying an open stream cancels it. REQUIRES: the Client outlives it.
class StepStream {
 public:
  StepStream(const StepStream&) = delete;
  StepStream& operator=(const StepStream&) = delete;
  ~StepStream();

  absl::StatusOr<StepResult> Step(absl::string_view session_id,
                                  const std::vector<HostTensor>& gradients,
                                  const StepOptions& options = {});

  // Sends a built request (MakeStepRequest, or a Worker's) and reads its reply.
  absl::StatusOr<StepResult> Send(const v1::StepRequest& request);

  // Half-closes the stream and returns the call's final status (OK for a clean end). Idempotent:
  // later calls return the same status.
  absl::Status Close();

  // Whether the call is over (after a stream-level failure or Close): every Step then fails.
  bool finished() const { return final_status_.has_value() || writes_done_; }

 private:
  friend class Client;
  StepStream(const Client* client, absl::Duration lifetime);

  // Ends the call (after a failed write or read) and records its status.
  absl::Status Finish();

  const Security* security_;  // the client's, for error messages
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::StepRequest, v1::StreamStepsResponse>> stream_;
  bool writes_done_ = false;
  std::optional<absl::Status> final_status_;  // set once the call has finished
};

}  // namespace client
}  // namespace optd

#endif  // OPTD_CLIENT_CPP_CLIENT_H_
