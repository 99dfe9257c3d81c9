// File: retry.h
//
// RetryPolicy: when and how often the C++ client tries a call again. The Client (client.h) retries
// reads (GetSession, ListSessions, Pull) and keyed steps (a worker id and a sequence number > 0,
// which the server applies at most once); a WorkerStream (worker.h) reopens a failed stream and
// resends its step under the same policy. Nothing else is retried: CreateSession, UpdateSession,
// DeleteSession and steps without a key could be applied twice.
//
// The default budget is chosen to outlast gRPC's reconnect backoff: after a connection drops, gRPC
// waits 1 s, then 1.6x longer each time (20% jitter, up to 120 s) before it dials again, and until
// then every call fails at once with UNAVAILABLE. The Python client's budget (5 attempts, about
// 0.75 s of waiting in all) gives up before gRPC's first redial. Here: 10 attempts, waits of
// 0.1 s doubling to at most 2 s, +-20% jitter: about 11 s of waiting in all (TotalBackoff), and
// Client::Connect also caps the channel's reconnect backoff (ClientOptions::max_reconnect_backoff,
// 1 s), so a server that restarts within ~10 s is reached by the same step, which it applies once.
//
//   RetryPolicy patient;
//   patient.max_attempts = 20;  // ~31 s of waiting
//
// Thread safety: a plain value; its const methods may be called from any thread.
//
// Errors: Validate() returns InvalidArgument naming the field, its value and the valid range.

#ifndef OPTD_CLIENT_CPP_RETRY_H_
#define OPTD_CLIENT_CPP_RETRY_H_

#include <vector>

#include "absl/random/bit_gen_ref.h"
#include "absl/status/status.h"
#include "absl/time/time.h"

namespace optd {
namespace client {

struct RetryPolicy {
  // Attempts in all, the first included; 1 means no retry. >= 1.
  int max_attempts = 10;
  // Wait before the first retry. >= 0.
  absl::Duration initial_backoff = absl::Milliseconds(100);
  // Longest wait between two attempts. >= initial_backoff.
  absl::Duration max_backoff = absl::Seconds(2);
  // Each wait is this many times the previous one (until max_backoff). >= 1.
  double multiplier = 2.0;
  // Each wait is scaled by a random factor in [1 - jitter, 1 + jitter], so that workers that
  // failed together do not retry together. In [0, 1].
  double jitter = 0.2;
  // The codes worth retrying: the transport's (the server is unreachable, restarting, or the reply
  // was lost or late). CANCELLED is among them because the C++ client never cancels a unary call
  // itself: it comes from a server that is shutting down (a graceful restart), and the call's
  // outcome is unknown, which a keyed step's retry resolves. ABORTED (a stale gradient) is not:
  // the worker must pull and recompute, not resend. Not empty.
  std::vector<absl::StatusCode> retry_codes = {absl::StatusCode::kUnavailable,
                                               absl::StatusCode::kDeadlineExceeded,
                                               absl::StatusCode::kCancelled};

  // A policy that never retries.
  static RetryPolicy None();

  absl::Status Validate() const;

  // Whether a failure with `code` is retried (if attempts remain).
  bool Retries(absl::StatusCode code) const;

  // The wait before retry number `retry` (1 = the first retry) without jitter:
  // min(max_backoff, initial_backoff * multiplier^(retry - 1)).
  absl::Duration NominalBackoff(int retry) const;

  // NominalBackoff(retry) scaled by a random factor in [1 - jitter, 1 + jitter] drawn from `gen`.
  absl::Duration Backoff(int retry, absl::BitGenRef gen) const;

  // The sum of the nominal waits of every retry: how long a call that keeps failing at once waits
  // before it gives up (its attempts' own durations come on top).
  absl::Duration TotalBackoff() const;
};

}  // namespace client
}  // namespace optd

#endif  // OPTD_CLIENT_CPP_RETRY_H_
