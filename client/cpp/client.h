// File: client.h
//
// optd::Client: the C++ client of an optd server (the optd.v1.Optimizer service and
// grpc.health.v1). It creates, reads, lists and deletes sessions, pulls parameters and steps them,
// one call at a time (Step) or over a stream (StepStream), with float32 HostTensors on the caller's
// side whatever the wire dtype.
//
//   absl::StatusOr<std::unique_ptr<optd::Client>> client =
//   optd::Client::Connect("127.0.0.1:50051"); if (!client.ok()) return client.status();
//   absl::StatusOr<optd::StepResult> r = (*client)->Step("my-session", gradients);
//
// Who may call it: any C++ program (workers, optctl, tests).
//
// Thread safety: a Client is thread-safe; any number of threads may call it at once (each call has
// its own gRPC context; the stubs are thread-safe). A StepStream is NOT thread-safe: one thread (or
// one externally serialised worker loop) drives it.
//
// Errors: every method returns the server's gRPC status as an absl::Status with the same code and
// message (the codes are the same canonical set): NOT_FOUND for an unknown session, ALREADY_EXISTS
// for a taken id, INVALID_ARGUMENT for a rejected request (the message names the field),
// UNAVAILABLE when the server cannot be reached, DEADLINE_EXCEEDED when a call outlives
// ClientOptions::timeout. InvalidArgument is also returned, before any RPC, for a HostTensor whose
// values do not match its shape. A reply the client cannot decode is Internal.

#ifndef OPTD_CLIENT_CPP_CLIENT_H_
#define OPTD_CLIENT_CPP_CLIENT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/cpp/host_tensor.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/sync_stream.h"
#include "optd/v1/optd.grpc.pb.h"
#include "optd/v1/optd.pb.h"

namespace optd {

struct ClientOptions {
  // Deadline of each unary call, counted from when the call starts. InfiniteDuration: no deadline.
  absl::Duration timeout = absl::Seconds(30);
  // Largest message sent or received, in bytes (Connect only; a channel passed to the constructor
  // keeps its own limits). Must be in [1, 2^31 - 1]. The default matches the server's.
  int64_t max_message_bytes = 256 << 20;
  // false: a call fails at once with UNAVAILABLE while the server cannot be reached. true: it waits
  // (until its deadline) for the server to come up.
  bool wait_for_ready = false;
};

// What a Step or a StepStream::Step sends besides the gradients.
struct StepOptions {
  // Who sends the gradient (optional today; later keys idempotency and barriers).
  std::string worker_id;
  // The loss observed for this gradient, if any; reported by the server, never used by the math.
  std::optional<double> loss;
  // true: the reply carries every parameter after the step; false: only the version.
  bool return_parameters = true;
  // Wire encoding of the returned parameters (decoded to float32 either way).
  v1::DType return_dtype = v1::DTYPE_F32;
  // Wire encoding of the gradients sent. BF16 and F16 halve the bytes and round the gradient.
  v1::DType gradient_dtype = v1::DTYPE_F32;
};

struct StepResult {
  // The session's version after this step.
  int64_t version = 0;
  // L2 norm, over all tensors, of the gradient as the server received it.
  double gradient_norm = 0;
  // The learning rate the step used.
  double learning_rate = 0;
  // The parameters after the step (empty if StepOptions::return_parameters was false).
  std::vector<HostTensor> parameters;
};

struct PullResult {
  int64_t version = 0;
  std::vector<HostTensor> tensors;
};

class StepStream;

class Client {
 public:
  // Makes a client for the server at `address` ("host:port", or any gRPC target such as
  // "dns:///host:port" or "unix:/path") over an insecure channel. Connecting is lazy: an
  // unreachable server shows up as UNAVAILABLE (or DEADLINE_EXCEEDED with wait_for_ready) on the
  // first call. InvalidArgument for an empty address or options out of range.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(std::string address,
                                                         ClientOptions options = {});

  // A client over an existing channel (e.g. OptdServer::InProcessChannel() in tests).
  // REQUIRES: channel != nullptr.
  explicit Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options = {});

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

  // Every session, sorted by id, following page tokens until the last page. `page_size` is the
  // number asked for per call: 0 takes the server's default (100); at most 1000.
  absl::StatusOr<std::vector<v1::Session>> ListSessions(int32_t page_size = 0);

  absl::Status DeleteSession(absl::string_view session_id);

  // Reads parameters without stepping: `names` (all of them, in creation order, when empty),
  // sent by the server as `dtype` and decoded to float32.
  absl::StatusOr<PullResult> Pull(absl::string_view session_id,
                                  const std::vector<std::string>& names = {},
                                  v1::DType dtype = v1::DTYPE_F32);

  // Applies one gradient per session tensor (by name, any order): all of it or, on error, none.
  absl::StatusOr<StepResult> Step(absl::string_view session_id,
                                  const std::vector<HostTensor>& gradients,
                                  const StepOptions& options = {});

  // Opens a StreamSteps stream. The stream as a whole must finish within `lifetime` (a gRPC stream
  // has a single deadline); the default, ZeroDuration, means ClientOptions::timeout, and
  // InfiniteDuration means no deadline. Never fails here: a stream that cannot start reports its
  // status from the first StepStream::Step or Close.
  std::unique_ptr<StepStream> StreamSteps(absl::Duration lifetime = absl::ZeroDuration());

  // grpc.health.v1 Check of `service` ("" is the server as a whole, "optd.v1.Optimizer" the
  // optimizer service): true if SERVING, false for any other reported status. NOT_FOUND if the
  // server does not know `service`.
  absl::StatusOr<bool> Health(const std::string& service = "");

  const ClientOptions& options() const { return options_; }

 private:
  // Sets the deadline and wait-for-ready of a unary call.
  void Prepare(grpc::ClientContext* context) const;

  const ClientOptions options_;
  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<v1::Optimizer::Stub> stub_;
  // grpc.health.v1.Health stub; a pointer to an opaque type keeps the generated health headers
  // out of this one.
  struct HealthStub;
  const std::unique_ptr<HealthStub> health_;
};

// One StreamSteps stream: each Step writes one request and reads its reply, in order. A step the
// server refuses is returned as its status and the stream goes on; a stream-level failure (the
// connection drops, the deadline passes, the server ends the call) is returned by that Step and by
// every later call, and the stream is then finished.
//
// Not thread-safe. Destroying an open stream cancels it.
class StepStream {
 public:
  StepStream(const StepStream&) = delete;
  StepStream& operator=(const StepStream&) = delete;
  ~StepStream();

  absl::StatusOr<StepResult> Step(absl::string_view session_id,
                                  const std::vector<HostTensor>& gradients,
                                  const StepOptions& options = {});

  // Half-closes the stream and returns the call's final status (OK for a clean end). Idempotent:
  // later calls return the same status.
  absl::Status Close();

 private:
  friend class Client;
  StepStream(v1::Optimizer::Stub* stub, absl::Duration deadline, bool wait_for_ready);

  // Ends the call (after a failed write or read) and records its status.
  absl::Status Finish();

  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::StepRequest, v1::StreamStepsResponse>> stream_;
  bool writes_done_ = false;
  std::optional<absl::Status> final_status_;  // set once the call has finished
};

}  // namespace optd

#endif  // OPTD_CLIENT_CPP_CLIENT_H_
