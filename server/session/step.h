// File: step.h
//
// One step in domain types: what a worker sends (StepInput), what it gets back (StepOutput), and
// how an Aborted refusal carries the session's current version. No protobuf: server/service
// converts the messages to and from these.
//
// Plain data, thread-compatible. StepInput borrows its gradients' bytes (wire_tensor.h).

#ifndef OPTD_SERVER_SESSION_STEP_H_
#define OPTD_SERVER_SESSION_STEP_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/session/memory_budget.h"
#include "wire/wire_dtype.h"
#include "wire/wire_tensor.h"

namespace optd {

// Which parameters a step's reply carries.
enum class ReturnMode {
  kAll,      // every tensor
  kNone,     // none
  kTouched,  // tensors with a dense gradient whole; with a row-sparse one, the touched rows
};

// Which point of the model a reply carries: the parameters the optimizer steps, or the
// evaluation point of an optimizer that keeps one apart (Optimizer::EvaluationPoint:
// Schedule-Free's x, DoG's iterate average), computed when the reply is built.
enum class ParameterPoint {
  kTraining,
  kEvaluation,
};

// One worker's request. Borrows the gradients' bytes: they must stay valid until Session::Step
// returns (a SYNC barrier copies what it keeps).
struct StepInput {
  std::string worker_id;
  // One per session tensor, any order.
  absl::Span<const WireTensorView> gradients;
  std::optional<double> loss;
  ReturnMode return_mode = ReturnMode::kAll;
  WireDType return_dtype = WireDType::kF32;
  // kEvaluation: only with kAll or kNone, and an optimizer that keeps an evaluation point.
  ParameterPoint return_point = ParameterPoint::kTraining;
  // Idempotency key with worker_id; 0 means none.
  int64_t sequence = 0;
  // The version the gradient was computed at.
  std::optional<int64_t> version;
  // The worker's incarnation from Session::Join; 0 if it did not join.
  int64_t worker_incarnation = 0;

  // Tensor payload bytes in the request.
  int64_t bytes() const {
    int64_t n = 0;
    for (const WireTensorView& g : gradients) n += g.data.size(g.dtype);
    return n;
  }
};

struct StepOutput {
  int64_t version = 0;
  double gradient_norm = 0;
  double learning_rate = 0;
  bool duplicate = false;
  // The version of `parameters` (later than `version` for a duplicate answered after more steps).
  int64_t parameters_version = 0;
  int workers = 1;
  std::vector<std::string> missing_workers;
  int64_t staleness = 0;
  // Parameters the step left NaN or infinite, and the tensors holding them (creation order).
  int64_t non_finite_parameters = 0;
  std::vector<std::string> non_finite_tensors;
  // In creation order, as StepInput::return_mode asked, at `point`.
  std::vector<WireTensor> parameters;
  ParameterPoint point = ParameterPoint::kTraining;
  // The optimizer's estimates after the step (Optimizer::Estimates), e.g. {"d", ...}.
  std::vector<std::pair<std::string, double>> estimates;
  // Filled in by the service: the server process that answered, and the session's newest durable
  // (checkpointed) version, -1 if none.
  std::string server_incarnation;
  int64_t durable_version = -1;
  // The memory budget's reservation for the reply's encoded bytes (BF16/F16 tensors, gathered
  // rows): whoever writes the reply keeps it until those bytes are freed. May be null.
  std::shared_ptr<MemoryReservation> encoding;
};

using StepCallback = absl::AnyInvocable<void(absl::StatusOr<StepOutput>)>;

// `status` carrying the session's current `version`, for the worker to re-pull (Aborted refusals).
absl::Status WithCurrentVersion(absl::Status status, int64_t version);

// The session version carried by a status from WithCurrentVersion, or -1.
int64_t CurrentVersionOf(const absl::Status& status);

// `status` (FailedPrecondition) marked: the worker must join the session again (JoinSession)
// before its next keyed step.
absl::Status WithRejoin(absl::Status status);
bool NeedsRejoin(const absl::Status& status);

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_STEP_H_
