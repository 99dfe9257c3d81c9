// File: worker.h
//
// optd::client::Worker: one worker's handle on one session (the C++ counterpart of the Python
// client's Session and the Go client's Worker). It holds the worker id, numbers the worker's steps
// with increasing sequence numbers (the idempotency key, so every step is retried safely and
// applied once) and remembers the version of the parameters it last got, which it sends with each
// step: SYNC and BOUNDED sessions require it. A loop of Worker::Step calls therefore works in
// ASYNC, SYNC and BOUNDED sessions alike; WorkerStream does the same over one StreamSteps stream.
//
//   Worker worker(client.get(), "demo");        // generated id, sequences from the clock
//   absl::StatusOr<PullResult> p = worker.Pull();  // the worker's version is now p->version
//   for (...) {
//     absl::StatusOr<StepResult> r = worker.Step({grad(w)});
//     if (CurrentVersion(r.status())) { /* stale (ABORTED): pull, recompute */ }
//     w = r->parameters[0].values;              // at r->parameters_version == worker.version()
//   }
//
// Sequence numbers start from the clock (microseconds since 1970, as the Go client's Worker does),
// so a restarted worker process with the same id keeps numbering above its previous run instead of
// reusing numbers the server remembers (which it would answer as duplicates, unapplied). A sequence
// number is consumed whatever the step's outcome.
//
// Who may call it: worker loops, examples, tests.
//
// Thread safety: not thread-safe; one thread drives a Worker and its WorkerStream. Give each
// thread its own Worker (its own worker id). REQUIRES: the Client outlives the Worker, and the
// Worker its WorkerStreams.
//
// Errors: those of Client::Step / Pull (client.h). A bad worker id is InvalidArgument at the first
// Step. An ABORTED step that carries the session's current version sets the worker's version to it.

#ifndef OPTD_CLIENT_CPP_WORKER_H_
#define OPTD_CLIENT_CPP_WORKER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/cpp/client.h"
#include "client/cpp/host_tensor.h"

namespace optd {
namespace client {

struct WorkerOptions {
  // 1-128 characters of [A-Za-z0-9._:-]. Empty: DefaultWorkerId(). A SYNC session with worker_ids
  // accepts only its listed ids.
  std::string worker_id;
  // The sequence number of the first step (> 0). 0: ClockSequence().
  int64_t first_sequence = 0;
  // The version the worker's parameters are at, if known (e.g. Session::version() right after
  // CreateSession). Unset: none is sent until a Pull or a step reply sets it.
  std::optional<int64_t> version;
};

// "cpp-<host>-<pid>-<8 hex digits>": unique to this process and call.
std::string DefaultWorkerId();

// Microseconds since the Unix epoch: a first sequence number above any a previous run of the same
// worker used (at fewer than a million steps per second).
int64_t ClockSequence();

class WorkerStream;

class Worker {
 public:
  // REQUIRES: client != nullptr and outlives the Worker.
  Worker(Client* client, std::string session_id, WorkerOptions options = {});

  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  const std::string& session_id() const { return session_id_; }
  const std::string& worker_id() const { return worker_id_; }

  // The sequence number the next step will use; set_next_sequence overrides it (it must be above
  // every sequence this worker id used in the session, unless it is meant as a retry).
  int64_t next_sequence() const { return next_sequence_; }
  void set_next_sequence(int64_t sequence) { next_sequence_ = sequence; }

  // The version the worker's parameters are at (from the constructor, a Pull or the last step).
  std::optional<int64_t> version() const { return version_; }
  void set_version(std::optional<int64_t> version) { version_ = version; }

  // Client::Pull of this session; the worker's version becomes the pulled one.
  absl::StatusOr<PullResult> Pull(const PullOptions& options = {});

  // One step with the worker's id and next sequence number, and options.version or else the
  // worker's known version. Retried (options.retry, else the client's policy) on UNAVAILABLE and
  // DEADLINE_EXCEEDED; a retry the server had applied comes back with duplicate = true. The
  // worker's version becomes the reply's (parameters_version when parameters came back).
  // options.worker_id and options.sequence are ignored.
  absl::StatusOr<StepResult> Step(const std::vector<HostTensor>& gradients,
                                  const StepOptions& options = {});

  // The request Step would send, with the next sequence number (consumed).
  absl::StatusOr<v1::StepRequest> NextRequest(const std::vector<HostTensor>& gradients,
                                              const StepOptions& options = {});

  // Updates the worker's version from a step's outcome (done by Step and WorkerStream::Step):
  // a reply's version, or an ABORTED status's current version.
  void Observe(const absl::StatusOr<StepResult>& outcome);

  // A StreamSteps stream for this worker's steps. `lifetime` bounds each stream opened
  // (ZeroDuration or InfiniteDuration: no deadline).
  std::unique_ptr<WorkerStream> OpenStream(absl::Duration lifetime = absl::ZeroDuration());

 private:
  friend class WorkerStream;

  Client* const client_;
  const std::string session_id_;
  const std::string worker_id_;
  int64_t next_sequence_;
  std::optional<int64_t> version_;
};

// A Worker's steps over a StreamSteps stream: the same sequence numbers and versions as
// Worker::Step. A step the server refuses is returned as its status and the stream goes on. When
// the stream itself fails with a code the retry policy retries (the connection dropped, the server
// restarted, the lifetime passed), the step is resent on a new stream with the same sequence number
// (with backoff, up to the policy's attempts), so it is applied once.
//
// Not thread-safe. Destroying it cancels an open stream.
class WorkerStream {
 public:
  WorkerStream(const WorkerStream&) = delete;
  WorkerStream& operator=(const WorkerStream&) = delete;
  ~WorkerStream();

  // Worker::Step over the stream (options.retry, else the client's policy, bounds the reconnects).
  absl::StatusOr<StepResult> Step(const std::vector<HostTensor>& gradients,
                                  const StepOptions& options = {});

  // Half-closes the stream (if one is open) and returns its final status. Later Steps open a new
  // stream.
  absl::Status Close();

  // Streams reopened after a failure, so far.
  int reconnects() const { return reconnects_; }

 private:
  friend class Worker;
  WorkerStream(Worker* worker, absl::Duration lifetime);

  Worker* const worker_;
  const absl::Duration lifetime_;
  std::unique_ptr<StepStream> stream_;  // null until the first step, and after a failure
  int reconnects_ = 0;
};

}  // namespace client
}  // namespace optd

#endif  // OPTD_CLIENT_CPP_WORKER_H_
