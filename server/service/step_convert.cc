#include "server/service/step_convert.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "server/service/proto_convert.h"

namespace optd {

absl::StatusOr<StepInput> StepInputFromProto(const v1::StepRequest& request) {
  absl::StatusOr<WireDType> return_dtype = DTypeFromProto("return_dtype", request.return_dtype());
  if (!return_dtype.ok()) return return_dtype.status();
  if (!v1::ReturnParameters_IsValid(request.return_parameters())) {
    return absl::InvalidArgumentError(
        absl::StrCat("return_parameters = ", request.return_parameters(),
                     " is not a known value; must be RETURN_PARAMETERS_ALL (0), "
                     "RETURN_PARAMETERS_NONE (1) or RETURN_PARAMETERS_TOUCHED (2)"));
  }
  StepInput input;
  input.worker_id = request.worker_id();
  if (request.has_loss()) input.loss = request.loss();
  input.return_mode = static_cast<ReturnMode>(request.return_parameters());
  input.return_dtype = *return_dtype;
  input.sequence = request.sequence();
  if (request.has_version()) input.version = request.version();
  if (request.worker_incarnation() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker_incarnation = ", request.worker_incarnation(),
                     " is out of range: must be >= 0 (0: not joined)"));
  }
  input.worker_incarnation = request.worker_incarnation();
  absl::StatusOr<ParameterPoint> point = PointFromProto("return_point", request.return_point());
  if (!point.ok()) return point.status();
  input.return_point = *point;
  return input;
}

absl::StatusOr<ParameterPoint> PointFromProto(const std::string& field, int point) {
  if (!v1::ParameterPoint_IsValid(point)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " = ", point,
                     " is not a known value; must be PARAMETER_POINT_TRAINING (0) or "
                     "PARAMETER_POINT_EVALUATION (1)"));
  }
  return static_cast<ParameterPoint>(point);
}

void StepOutputToProto(const StepOutput& output, v1::StepResponse* out) {
  out->set_version(output.version);
  out->set_gradient_norm(output.gradient_norm);
  out->set_learning_rate(output.learning_rate);
  out->set_duplicate(output.duplicate);
  out->set_parameters_version(output.parameters_version);
  out->set_workers(output.workers);
  for (const std::string& w : output.missing_workers) out->add_missing_workers(w);
  out->set_staleness(output.staleness);
  out->set_non_finite_parameters(output.non_finite_parameters);
  out->set_server_incarnation(output.server_incarnation);
  out->set_durable_version(output.durable_version);
  for (const std::string& t : output.non_finite_tensors) out->add_non_finite_tensors(t);
  out->set_point(static_cast<v1::ParameterPoint>(output.point));
  for (const auto& [name, value] : output.estimates)
    (*out->mutable_optimizer_estimates())[name] = value;
}

}  // namespace optd
