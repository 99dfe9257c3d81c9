#include "client/cpp/client_status.h"

#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/types/optional.h"
#include "client/cpp/client.h"
#include "client/cpp/host_tensor.h"

namespace optd {
namespace client {
namespace {

// Where an ABORTED status carries the session's current version (decimal).
constexpr char kCurrentVersionPayload[] = "optd.dev/current_version";
// The unary reply's trailing metadata key the server puts it in.
constexpr char kCurrentVersionTrailer[] = "optd-current-version";
// Where a FAILED_PRECONDITION status says that the worker must join again ("1"), and the unary
// reply's trailing metadata key that carries it.
constexpr char kRejoinPayload[] = "optd.dev/rejoin";
constexpr char kRejoinTrailer[] = "optd-rejoin";
// Where a status carries the answering server's incarnation, and the unary trailer it comes in.
constexpr char kServerIncarnationPayload[] = "optd.dev/server_incarnation";
constexpr char kServerIncarnationTrailer[] = "optd-server-incarnation";
// Set by a Worker on a status from another server process than its previous reply.
constexpr char kServerRestartedPayload[] = "optd.dev/server_restarted";

absl::Status WithCurrentVersion(absl::Status status, int64_t current_version) {
  if (current_version >= 0) {
    status.SetPayload(kCurrentVersionPayload, absl::Cord(absl::StrCat(current_version)));
  }
  return status;
}

// `status` marked as needing a rejoin (see NeedsRejoin) when `rejoin` and it is
// FAILED_PRECONDITION.
absl::Status WithRejoin(absl::Status status, bool rejoin) {
  if (rejoin && status.code() == absl::StatusCode::kFailedPrecondition) {
    status.SetPayload(kRejoinPayload, absl::Cord("1"));
  }
  return status;
}

}  // namespace

absl::StatusOr<std::vector<HostTensor>> DecodeReplyTensors(
    const google::protobuf::RepeatedPtrField<v1::Tensor>& tensors) {
  std::vector<HostTensor> out;
  out.reserve(tensors.size());
  for (const v1::Tensor& t : tensors) {
    absl::StatusOr<HostTensor> decoded = HostTensorFromProto(t);
    if (!decoded.ok()) {
      return absl::InternalError(
          absl::StrCat("malformed reply from the server: ", decoded.status().message()));
    }
    out.push_back(*std::move(decoded));
  }
  return out;
}

absl::StatusOr<StepResult> DecodeStepResponse(const v1::StepResponse& response,
                                              const v1::StepRequest& request, int attempts) {
  StepResult result;
  result.version = response.version();
  result.parameters_version = response.parameters_version();
  result.gradient_norm = response.gradient_norm();
  result.learning_rate = response.learning_rate();
  result.duplicate = response.duplicate();
  result.workers = response.workers();
  result.missing_workers.assign(response.missing_workers().begin(),
                                response.missing_workers().end());
  result.staleness = response.staleness();
  result.sequence = request.sequence();
  result.worker_incarnation = request.worker_incarnation();
  result.attempts = attempts;
  result.server_incarnation = response.server_incarnation();
  result.durable_version = response.durable_version();
  result.point = response.point();
  result.estimates.insert(response.optimizer_estimates().begin(),
                          response.optimizer_estimates().end());
  absl::StatusOr<std::vector<HostTensor>> parameters = DecodeReplyTensors(response.parameters());
  if (!parameters.ok()) return parameters.status();
  result.parameters = *std::move(parameters);
  return result;
}

absl::Status FromGrpcStatus(const grpc::Status& status, const grpc::ClientContext* context) {
  if (status.ok()) return absl::OkStatus();
  absl::Status out(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  if (context != nullptr) {
    const auto& trailers = context->GetServerTrailingMetadata();
    const auto it = trailers.find(kCurrentVersionTrailer);
    int64_t version;
    if (it != trailers.end() &&
        absl::SimpleAtoi(absl::string_view(it->second.data(), it->second.size()), &version)) {
      out = WithCurrentVersion(std::move(out), version);
    }
    const auto incarnation = trailers.find(kServerIncarnationTrailer);
    if (incarnation != trailers.end() && !incarnation->second.empty()) {
      out.SetPayload(
          kServerIncarnationPayload,
          absl::Cord(absl::string_view(incarnation->second.data(), incarnation->second.size())));
    }
    const auto rejoin = trailers.find(kRejoinTrailer);
    if (rejoin != trailers.end()) {
      out = WithRejoin(std::move(out),
                       absl::string_view(rejoin->second.data(), rejoin->second.size()) == "1");
    }
  }
  return out;
}

absl::Status FromStepError(const v1::StepError& error) {
  const int code = error.code();
  if (code <= 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::UnknownError(absl::StrCat("StepError with code ", code, ": ", error.message()));
  }
  absl::Status out = WithRejoin(
      WithCurrentVersion(absl::Status(static_cast<absl::StatusCode>(code), error.message()),
                         error.current_version()),
      error.rejoin());
  if (!error.server_incarnation().empty()) {
    out.SetPayload(kServerIncarnationPayload, absl::Cord(error.server_incarnation()));
  }
  return out;
}

absl::Status Annotate(const absl::Status& status, absl::string_view note) {
  absl::Status out(status.code(), absl::StrCat(status.message(), " [", note, "]"));
  status.ForEachPayload(
      [&out](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}
std::optional<int64_t> CurrentVersion(const absl::Status& status) {
  if (status.code() != absl::StatusCode::kAborted) return std::nullopt;
  // absl::optional: Debian's abseil does not alias it to std::optional.
  const absl::optional<absl::Cord> payload = status.GetPayload(kCurrentVersionPayload);
  int64_t version;
  if (!payload.has_value() || !absl::SimpleAtoi(std::string(*payload), &version)) {
    return std::nullopt;
  }
  return version;
}

std::string ServerIncarnation(const absl::Status& status) {
  const absl::optional<absl::Cord> payload = status.GetPayload(kServerIncarnationPayload);
  return payload.has_value() ? std::string(*payload) : std::string();
}

bool ServerRestarted(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kServerRestartedPayload).has_value();
}

absl::Status WithServerRestarted(absl::Status status, bool restarted) {
  if (status.ok()) return status;
  if (restarted) {
    status.SetPayload(kServerRestartedPayload, absl::Cord("1"));
  } else {
    status.ErasePayload(kServerRestartedPayload);
  }
  return status;
}

bool NeedsRejoin(const absl::Status& status) {
  return status.code() == absl::StatusCode::kFailedPrecondition &&
         status.GetPayload(kRejoinPayload).has_value();
}

}  // namespace client
}  // namespace optd
