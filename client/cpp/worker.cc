#include "client/cpp/worker.h"

#include <unistd.h>

#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace optd {
namespace client {
namespace {

// How many times one step is resent after its worker joined again (each resend is a first attempt
// under the new incarnation; a server that keeps refusing it is not waited on forever).
constexpr int kMaxRejoinsPerStep = 3;

// Marks a status as the step-outcome-unknown error.
constexpr char kOutcomeUnknownPayload[] = "optd.dev/step_outcome_unknown";

// The outcome of a step resent after a restarted server refused it keeps that news.
void MarkRestarted(bool restarted, absl::StatusOr<StepResult>& outcome) {
  if (!restarted) return;
  if (outcome.ok()) {
    outcome->server_restarted = true;
  } else {
    outcome = WithServerRestarted(outcome.status(), true);
  }
}

}  // namespace

bool IsStepOutcomeUnknown(const absl::Status& status) {
  return status.code() == absl::StatusCode::kFailedPrecondition &&
         status.GetPayload(kOutcomeUnknownPayload).has_value();
}

std::string DefaultWorkerId() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  std::string safe_host;
  for (const char* c = host; *c != '\0' && safe_host.size() < 64; ++c) {
    const bool ok = absl::ascii_isalnum(*c) || *c == '.' || *c == '_' || *c == '-';
    safe_host.push_back(ok ? *c : '_');
  }
  if (safe_host.empty()) safe_host = "host";
  absl::BitGen gen;
  return absl::StrFormat("cpp-%s-%d-%08x", safe_host, static_cast<int>(getpid()),
                         absl::Uniform<uint32_t>(gen));
}

int64_t ClockSequence() { return absl::ToUnixMicros(absl::Now()); }

Worker::Worker(Client* client, std::string session_id, WorkerOptions options)
    : client_(client),
      session_id_(std::move(session_id)),
      worker_id_(options.worker_id.empty() ? DefaultWorkerId() : std::move(options.worker_id)),
      unjoined_(options.first_sequence > 0),
      next_sequence_(options.first_sequence > 0 ? options.first_sequence : 1),
      version_(options.version) {}

void Worker::set_next_sequence(int64_t sequence) {
  if (!joined_) unjoined_ = true;
  next_sequence_ = sequence;
}

absl::Status Worker::Join() {
  absl::StatusOr<JoinResult> joined = client_->JoinSession(session_id_, worker_id_);
  if (!joined.ok()) return joined.status();
  joined_ = true;
  unjoined_ = false;
  incarnation_ = joined->worker_incarnation;
  next_sequence_ = joined->next_sequence;
  ObserveIncarnation(joined->server_incarnation);
  return absl::OkStatus();
}

bool Worker::ObserveIncarnation(const std::string& incarnation) {
  if (incarnation.empty()) return false;
  const bool restarted = !server_incarnation_.empty() && server_incarnation_ != incarnation;
  if (restarted) ++server_restarts_;
  server_incarnation_ = incarnation;
  return restarted;
}

absl::Status Worker::EnsureJoined() {
  if (joined_ || unjoined_) return absl::OkStatus();
  return Join();
}

absl::StatusOr<v1::StepRequest> Worker::AfterRejoin(const v1::StepRequest& request,
                                                    const absl::Status& refusal, int attempts,
                                                    int resends) {
  // Refused by another server process than the worker's previous reply: the restarted server
  // restored the session from a checkpoint without this incarnation, so none of its steps are in
  // the session; resend as a first attempt.
  if (ServerRestarted(refusal)) attempts = 1;
  if (attempts <= 1 && resends >= kMaxRejoinsPerStep) return refusal;
  absl::Status join = absl::OkStatus();
  if (!joined_ || incarnation_ == request.worker_incarnation()) {
    joined_ = unjoined_ = false;  // if the join fails, the next step joins
    join = Join();
  }
  if (attempts <= 1) {  // nothing was applied: resend under the new incarnation
    if (!join.ok()) return join;
    v1::StepRequest resend = request;
    resend.set_worker_incarnation(incarnation_);
    resend.set_sequence(next_sequence_++);
    return resend;
  }
  absl::Status unknown = absl::FailedPreconditionError(absl::StrFormat(
      "the outcome of step sequence %d of worker %s (incarnation %d) on session %s is unknown: "
      "the reply of an earlier attempt was lost, and the retry (attempt %d) was refused "
      "because the server can no longer place the worker (%s); the step may have been applied "
      "once or not at all; %s",
      request.sequence(), worker_id_, request.worker_incarnation(), session_id_, attempts,
      refusal.message(),
      join.ok() ? absl::StrCat("it has joined the session again as incarnation ", incarnation_,
                               "; its next step works")
                : absl::StrCat("joining again failed (", join.ToString(),
                               "); its next step joins again")));
  unknown.SetPayload(kOutcomeUnknownPayload, absl::Cord("1"));
  return unknown;
}

absl::StatusOr<PullResult> Worker::Pull(const PullOptions& options) {
  absl::StatusOr<PullResult> pulled = client_->Pull(session_id_, options);
  if (pulled.ok()) {
    version_ = pulled->version;
    durable_version_ = pulled->durable_version;
    ObserveIncarnation(pulled->server_incarnation);
  } else {
    ObserveIncarnation(ServerIncarnation(pulled.status()));
  }
  return pulled;
}

absl::StatusOr<v1::StepRequest> Worker::NextRequest(const std::vector<HostTensor>& gradients,
                                                    const StepOptions& options) {
  if (absl::Status s = EnsureJoined(); !s.ok()) return s;
  if (next_sequence_ <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "worker ", worker_id_, ": next sequence number is ", next_sequence_, "; must be > 0"));
  }
  StepOptions keyed = options;
  keyed.worker_id = worker_id_;
  keyed.sequence = next_sequence_++;
  keyed.worker_incarnation = joined_ ? incarnation_ : 0;
  if (!keyed.version.has_value()) keyed.version = version_;
  return MakeStepRequest(session_id_, gradients, keyed);
}

void Worker::Observe(absl::StatusOr<StepResult>& outcome) {
  if (!outcome.ok()) {
    const bool restarted = ObserveIncarnation(ServerIncarnation(outcome.status()));
    if (restarted) outcome = WithServerRestarted(outcome.status(), true);
    if (const std::optional<int64_t> current = CurrentVersion(outcome.status())) version_ = current;
    return;
  }
  outcome->server_restarted = ObserveIncarnation(outcome->server_incarnation);
  durable_version_ = outcome->durable_version;
  const int64_t seen = outcome->parameters.empty() ? outcome->version : outcome->parameters_version;
  // After a restart the session may be behind the worker's version (it was restored).
  if (!version_.has_value() || seen > *version_ || outcome->server_restarted) version_ = seen;
}

absl::StatusOr<StepResult> Worker::Step(const std::vector<HostTensor>& gradients,
                                        const StepOptions& options) {
  if (options.retry.has_value()) {
    if (absl::Status s = options.retry->Validate(); !s.ok()) return s;
  }
  absl::StatusOr<v1::StepRequest> request = NextRequest(gradients, options);
  if (!request.ok()) return request.status();
  const RetryPolicy& policy = options.retry.value_or(client_->options().retry);
  bool restarted = false;  // a refusal of this step came from a restarted server
  for (int resends = 0;; ++resends) {
    int attempts = 0;
    absl::StatusOr<StepResult> result = client_->SendStep(*request, policy, &attempts);
    Observe(result);
    if (!NeedsRejoin(result.status())) {
      MarkRestarted(restarted, result);
      if (result.ok()) result->rejoins = resends;
      return result;
    }
    restarted = restarted || ServerRestarted(result.status());
    request = AfterRejoin(*request, result.status(), attempts, resends);
    if (!request.ok()) return WithServerRestarted(request.status(), restarted);
  }
}

std::unique_ptr<WorkerStream> Worker::OpenStream(absl::Duration lifetime) {
  return std::unique_ptr<WorkerStream>(new WorkerStream(this, lifetime));
}

// ---------------------------------------------------------------------------------------------------
// WorkerStream

WorkerStream::WorkerStream(Worker* worker, absl::Duration lifetime)
    : worker_(worker), lifetime_(lifetime) {}

WorkerStream::~WorkerStream() = default;  // ~StepStream cancels an open call

absl::StatusOr<StepResult> WorkerStream::Step(const std::vector<HostTensor>& gradients,
                                              const StepOptions& options) {
  const RetryPolicy& policy = options.retry.value_or(worker_->client_->options().retry);
  if (absl::Status s = policy.Validate(); !s.ok()) return s;
  absl::StatusOr<v1::StepRequest> request = worker_->NextRequest(gradients, options);
  if (!request.ok()) return request.status();

  const absl::Time start = absl::Now();
  std::optional<absl::BitGen> gen;
  int resends = 0;
  bool restarted = false;  // a refusal of this step came from a restarted server
  for (int attempt = 1;; ++attempt) {
    if (stream_ == nullptr) stream_ = worker_->client_->StreamSteps(lifetime_);
    absl::StatusOr<StepResult> result = stream_->Send(*request);
    if (!stream_->finished()) worker_->Observe(result);  // a reply or a refusal, not a failure
    if (!result.ok() && !stream_->finished() && NeedsRejoin(result.status())) {
      // Refused because the server cannot place the worker: join again; resend if this was the
      // request's first sending (else the outcome is unknown).
      restarted = restarted || ServerRestarted(result.status());
      request = worker_->AfterRejoin(*request, result.status(), attempt, resends);
      if (!request.ok()) return WithServerRestarted(request.status(), restarted);
      ++resends;
      attempt = 0;  // the resend is a new request
      continue;
    }
    if (result.ok() || !stream_->finished()) {  // a reply, or a step the server refused
      MarkRestarted(restarted, result);
      if (result.ok()) {
        result->attempts = attempt;
        result->rejoins = resends;
      }
      return result;
    }
    // The stream failed: its reply, if the server sent one, is lost. Resend on a new stream.
    stream_.reset();
    const absl::Status failure = result.status();
    // CANCELLED here is the server's doing (the client cancels only in ~StepStream): its graceful
    // shutdown ends open streams; reopen like a dropped one.
    const bool retryable =
        policy.Retries(failure.code()) || failure.code() == absl::StatusCode::kCancelled;
    if (!retryable || attempt >= policy.max_attempts) {
      return absl::Status(
          failure.code(),
          absl::StrFormat("%s [StreamSteps to %s: step %d of worker %s, %d attempt%s in %.2f s]",
                          failure.message(), worker_->client_->target(), request->sequence(),
                          worker_->worker_id(), attempt, attempt == 1 ? "" : "s",
                          absl::ToDoubleSeconds(absl::Now() - start)));
    }
    if (!gen.has_value()) gen.emplace();
    absl::SleepFor(policy.Backoff(attempt, *gen));
    ++reconnects_;
  }
}

absl::Status WorkerStream::Close() {
  if (stream_ == nullptr) return absl::OkStatus();
  absl::Status s = stream_->Close();
  stream_.reset();
  return s;
}

}  // namespace client
}  // namespace optd
