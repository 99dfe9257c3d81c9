#include "client/cpp/worker.h"

#include <unistd.h>

#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace optd {
namespace client {

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
      next_sequence_(options.first_sequence > 0 ? options.first_sequence : ClockSequence()),
      version_(options.version) {}

absl::StatusOr<PullResult> Worker::Pull(const PullOptions& options) {
  absl::StatusOr<PullResult> pulled = client_->Pull(session_id_, options);
  if (pulled.ok()) version_ = pulled->version;
  return pulled;
}

absl::StatusOr<v1::StepRequest> Worker::NextRequest(const std::vector<HostTensor>& gradients,
                                                    const StepOptions& options) {
  if (next_sequence_ <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "worker ", worker_id_, ": next sequence number is ", next_sequence_, "; must be > 0"));
  }
  StepOptions keyed = options;
  keyed.worker_id = worker_id_;
  keyed.sequence = next_sequence_++;
  if (!keyed.version.has_value()) keyed.version = version_;
  return MakeStepRequest(session_id_, gradients, keyed);
}

void Worker::Observe(const absl::StatusOr<StepResult>& outcome) {
  if (!outcome.ok()) {
    if (const std::optional<int64_t> current = CurrentVersion(outcome.status())) version_ = current;
    return;
  }
  const int64_t seen = outcome->parameters.empty() ? outcome->version : outcome->parameters_version;
  if (!version_.has_value() || seen > *version_) version_ = seen;
}

absl::StatusOr<StepResult> Worker::Step(const std::vector<HostTensor>& gradients,
                                        const StepOptions& options) {
  if (options.retry.has_value()) {
    if (absl::Status s = options.retry->Validate(); !s.ok()) return s;
  }
  absl::StatusOr<v1::StepRequest> request = NextRequest(gradients, options);
  if (!request.ok()) return request.status();
  absl::StatusOr<StepResult> result =
      client_->SendStep(*request, options.retry.value_or(client_->options().retry));
  Observe(result);
  return result;
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
  for (int attempt = 1;; ++attempt) {
    if (stream_ == nullptr) stream_ = worker_->client_->StreamSteps(lifetime_);
    absl::StatusOr<StepResult> result = stream_->Send(*request);
    if (result.ok() || !stream_->finished()) {  // a reply, or a step the server refused
      if (result.ok()) result->attempts = attempt;
      worker_->Observe(result);
      return result;
    }
    // The stream failed: its reply, if the server sent one, is lost. Resend on a new stream.
    stream_.reset();
    const absl::Status failure = result.status();
    if (!policy.Retries(failure.code()) || attempt >= policy.max_attempts) {
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
