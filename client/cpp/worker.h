// File: worker.h
//
// optd::client::Worker: one worker's handle on one session (the C++ counterpart of the Python
// client's Session and the Go client's Worker). It holds the worker id, joins the session as that
// worker, numbers the worker's steps with increasing sequence numbers (the idempotency key, so
// every step is retried safely and applied once) and remembers the version of the parameters it
// last got, which it sends with each step: SYNC and BOUNDED sessions require it. A loop of
// Worker::Step calls therefore works in ASYNC, SYNC and BOUNDED sessions alike; WorkerStream does
// the same over one StreamSteps stream.
//
//   Worker worker(client.get(), "demo");        // generated id; joins at the first step
//   absl::StatusOr<PullResult> p = worker.Pull();  // the worker's version is now p->version
//   for (...) {
//     absl::StatusOr<StepResult> r = worker.Step({grad(w)});
//     if (CurrentVersion(r.status())) { /* stale (ABORTED): pull, recompute */ }
//     if (IsStepOutcomeUnknown(r.status())) { /* applied once or not at all; go on */ }
//     w = r->parameters[0].values;              // at r->parameters_version == worker.version()
//   }
//
// Joins: before its first step a Worker joins the session (Client::JoinSession). Each join starts a
// new incarnation of the worker id, whose steps carry the incarnation and sequences 1, 2, 3, ... So
// a restarted process may reuse its worker id: its steps are applied (never mistaken for duplicates
// of the old process's), and the old process's late retries are refused. A sequence number is
// consumed whatever the step's outcome.
//
// When the server can no longer place the worker (NeedsRejoin, client.h: a session remembers at
// most 1024 workers and forgets the least recently active first; or another process joined with
// the same id), the Worker joins again and resends the step under the new incarnation if the
// refused call was the step's first attempt (nothing was applied; StepResult::rejoins counts it).
// If it was a retry of an attempt whose reply was lost, the step may or may not have been applied:
// Step returns the step-outcome-unknown error (FAILED_PRECONDITION; IsStepOutcomeUnknown), the
// worker has joined again, and its next step works.
//
// Unjoined mode: WorkerOptions::first_sequence > 0 (or set_next_sequence before the first join)
// skips the join: steps carry no incarnation and number from that sequence, as before joins
// existed (a restarted process must then number above its previous run, e.g. from
// ClockSequence()). If the server asks such a worker to join, it does.
//
// Server restarts: a server started with --checkpoint_dir that is killed (or shut down) and
// started again on the same address restores its sessions at their checkpoints' versions; the
// steps after were lost. A step in flight is retried until the server is back (RetryPolicy, and
// the channel's reconnect backoff capped at ClientOptions::max_reconnect_backoff); its gradient,
// computed at a version the session no longer has, is refused as stale (ABORTED with
// CurrentVersion, and ServerRestarted(status) true): the loop above pulls the restored parameters
// and recomputes, as for any stale gradient. If the restored session does not know the worker's
// incarnation (it joined after the checkpoint), the worker joins again and resends, since nothing
// of that incarnation is in the session. WorkerStream also reopens a stream the server cancelled
// (at its graceful shutdown). server_restarts() counts the restarts seen.
//
// Who may call it: worker loops, examples, tests.
//
// Thread safety: not thread-safe; one thread drives a Worker and its WorkerStream. Give each
// thread its own Worker (its own worker id). REQUIRES: the Client outlives the Worker, and the
// Worker its WorkerStreams.
//
// Errors: those of Client::Step / Pull / JoinSession (client.h), and the step-outcome-unknown
// error above. A bad worker id is InvalidArgument at the first Step. An ABORTED step that carries
// the session's current version sets the worker's version to it.

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
  // 0: join the session before the first step (sequences from 1 in each incarnation). > 0: unjoined
  // mode, the sequence number of the first step (see the file comment).
  int64_t first_sequence = 0;
  // The version the worker's parameters are at, if known (e.g. Session::version() right after
  // CreateSession). Unset: none is sent until a Pull or a step reply sets it.
  std::optional<int64_t> version;
};

// "cpp-<host>-<pid>-<8 hex digits>": unique to this process and call.
std::string DefaultWorkerId();

// Microseconds since the Unix epoch: for unjoined mode, a first sequence number above any a
// previous run of the same worker used (at fewer than a million steps per second).
int64_t ClockSequence();

// Whether `status` is the step-outcome-unknown error of a Worker or WorkerStream step:
// FAILED_PRECONDITION for a retried step that the server refused with rejoin (an earlier attempt's
// reply was lost, so the step may have been applied once, or not at all; never twice). The worker
// has joined again by then (or, if that join failed, joins at its next step).
bool IsStepOutcomeUnknown(const absl::Status& status);

class WorkerStream;

class Worker {
 public:
  // REQUIRES: client != nullptr and outlives the Worker.
  Worker(Client* client, std::string session_id, WorkerOptions options = {});

  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  const std::string& session_id() const { return session_id_; }
  const std::string& worker_id() const { return worker_id_; }

  // The sequence number the next step will use (in the current incarnation: a join restarts it at
  // 1). set_next_sequence overrides it: before the first join it puts the worker in unjoined mode;
  // after, it sets the next sequence of the current incarnation (it must be above every sequence
  // used in it, unless it is meant as a retry).
  int64_t next_sequence() const { return next_sequence_; }
  void set_next_sequence(int64_t sequence);

  // The incarnation of the worker's last join; 0 before it joined (and in unjoined mode).
  int64_t incarnation() const { return incarnation_; }
  bool joined() const { return joined_; }

  // Starts a new incarnation of the worker (Client::JoinSession): the previous incarnation's steps
  // are refused from now on and the next step sends sequence 1. Steps join by themselves when
  // needed; call Join to join early (to fail fast) or to start afresh.
  absl::Status Join();

  // The version the worker's parameters are at (from the constructor, a Pull or the last step).
  std::optional<int64_t> version() const { return version_; }
  void set_version(std::optional<int64_t> version) { version_ = version; }

  // Client::Pull of this session; the worker's version becomes the pulled one.
  absl::StatusOr<PullResult> Pull(const PullOptions& options = {});

  // One step with the worker's id, incarnation and next sequence number, and options.version or
  // else the worker's known version; joins first if the worker has not. Retried (options.retry,
  // else the client's policy) on UNAVAILABLE, DEADLINE_EXCEEDED and CANCELLED; a retry the server
  // had applied comes back with duplicate = true. Refused with rejoin: see the file comment. The
  // worker's version becomes the reply's (parameters_version when parameters came back).
  // options.worker_id, options.sequence and options.worker_incarnation are ignored.
  absl::StatusOr<StepResult> Step(const std::vector<HostTensor>& gradients,
                                  const StepOptions& options = {});

  // The request Step would send, with the worker's incarnation and next sequence number (consumed);
  // joins first if the worker has not.
  absl::StatusOr<v1::StepRequest> NextRequest(const std::vector<HostTensor>& gradients,
                                              const StepOptions& options = {});

  // Updates the worker's version from a step's outcome (done by Step and WorkerStream::Step):
  // a reply's version, or an ABORTED status's current version; notes the answering server process
  // and sets StepResult::server_restarted (or ServerRestarted on the status) when it changed.
  void Observe(absl::StatusOr<StepResult>& outcome);

  // The server process of the worker's last reply ("" before any), how many times it changed (the
  // server restarts the worker lived through), and the session's newest checkpointed version in
  // the last step or pull reply (-1 before any, or when none is durable).
  const std::string& server_incarnation() const { return server_incarnation_; }
  int server_restarts() const { return server_restarts_; }
  int64_t durable_version() const { return durable_version_; }

  // A StreamSteps stream for this worker's steps. `lifetime` bounds each stream opened
  // (ZeroDuration or InfiniteDuration: no deadline).
  std::unique_ptr<WorkerStream> OpenStream(absl::Duration lifetime = absl::ZeroDuration());

 private:
  friend class WorkerStream;

  // Joins unless the worker has (or is in unjoined mode).
  absl::Status EnsureJoined();

  // After `request` was refused with rejoin (`refusal`) at its `attempts`-th call: joins again
  // (unless an earlier refusal of the same incarnation already did) and returns the request to
  // resend (a first attempt: nothing was applied), or the step-outcome-unknown error (a retry), or
  // `refusal` itself once the step was resent kMaxRejoinsPerStep times.
  absl::StatusOr<v1::StepRequest> AfterRejoin(const v1::StepRequest& request,
                                              const absl::Status& refusal, int attempts,
                                              int resends);

  Client* const client_;
  const std::string session_id_;
  const std::string worker_id_;
  bool joined_ = false;    // incarnation_ is from a join
  bool unjoined_ = false;  // unjoined mode: steps carry no incarnation
  int64_t incarnation_ = 0;
  int64_t next_sequence_;
  std::optional<int64_t> version_;
  std::string server_incarnation_;
  int server_restarts_ = 0;
  int64_t durable_version_ = -1;

  // Records the incarnation of a reply ("" ignored); true if it differs from the previous one.
  bool ObserveIncarnation(const std::string& incarnation);
};

// A Worker's steps over a StreamSteps stream: the same joins, sequence numbers and versions as
// Worker::Step. A step the server refuses is returned as its status and the stream goes on. When
// the stream itself fails with a code the retry policy retries (the connection dropped, the server
// restarted, the lifetime passed), or is CANCELLED by the server (its graceful shutdown), the step
// is resent on a new stream with the same sequence number (with backoff, up to the policy's
// attempts), so it is applied once. A step refused with rejoin is resent after the worker joins
// again if it was its first sending; if it was such a resend, the result is the
// step-outcome-unknown error (see Worker).
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
