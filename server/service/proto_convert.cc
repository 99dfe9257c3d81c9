#include "server/service/proto_convert.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace optd {
namespace {

// Copies an optional proto field into an options field when it is set.
#define OPTD_TAKE(msg, options, field) \
  if ((msg).has_##field()) (options).field = (msg).field()

SgdOptions FromProto(const v1::Sgd& m) {
  SgdOptions o;
  OPTD_TAKE(m, o, lr);
  OPTD_TAKE(m, o, momentum);
  OPTD_TAKE(m, o, dampening);
  OPTD_TAKE(m, o, weight_decay);
  OPTD_TAKE(m, o, nesterov);
  OPTD_TAKE(m, o, maximize);
  return o;
}

template <typename Options, typename Message>
Options AdamFromProto(const Message& m) {
  Options o;
  OPTD_TAKE(m, o, lr);
  OPTD_TAKE(m, o, beta1);
  OPTD_TAKE(m, o, beta2);
  OPTD_TAKE(m, o, eps);
  OPTD_TAKE(m, o, weight_decay);
  OPTD_TAKE(m, o, amsgrad);
  OPTD_TAKE(m, o, maximize);
  return o;
}

AdagradOptions FromProto(const v1::Adagrad& m) {
  AdagradOptions o;
  OPTD_TAKE(m, o, lr);
  OPTD_TAKE(m, o, lr_decay);
  OPTD_TAKE(m, o, weight_decay);
  OPTD_TAKE(m, o, initial_accumulator_value);
  OPTD_TAKE(m, o, eps);
  OPTD_TAKE(m, o, maximize);
  return o;
}

#undef OPTD_TAKE

absl::StatusOr<NormalizedGdOptions> FromProto(const v1::NormalizedGd& m) {
  NormalizedGdOptions o;
  if (m.has_lr()) o.lr = m.lr();
  if (m.has_eps()) o.eps = m.eps();
  switch (m.norm()) {
    case v1::NormalizedGd::NORM_GLOBAL:
      o.norm = NormalizedGdOptions::Norm::kGlobal;
      break;
    case v1::NormalizedGd::NORM_PER_TENSOR:
      o.norm = NormalizedGdOptions::Norm::kPerTensor;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("config.optimizer.normalized_gd.norm = ", m.norm(),
                       " is not a known value; must be NORM_GLOBAL (0) or NORM_PER_TENSOR (1)"));
  }
  switch (m.guard()) {
    case v1::NormalizedGd::GUARD_ADD_EPS:
      o.guard = NormalizedGdOptions::Guard::kAddEps;
      break;
    case v1::NormalizedGd::GUARD_MAX_EPS:
      o.guard = NormalizedGdOptions::Guard::kMaxEps;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("config.optimizer.normalized_gd.guard = ", m.guard(),
                       " is not a known value; must be GUARD_ADD_EPS (0) or GUARD_MAX_EPS (1)"));
  }
  return o;
}

// Writes every field of the options into the message (so a reader sees the defaults in force).
void ToProto(const SgdOptions& o, v1::Sgd* m) {
  m->set_lr(o.lr);
  m->set_momentum(o.momentum);
  m->set_dampening(o.dampening);
  m->set_weight_decay(o.weight_decay);
  m->set_nesterov(o.nesterov);
  m->set_maximize(o.maximize);
}

template <typename Options, typename Message>
void AdamToProto(const Options& o, Message* m) {
  m->set_lr(o.lr);
  m->set_beta1(o.beta1);
  m->set_beta2(o.beta2);
  m->set_eps(o.eps);
  m->set_weight_decay(o.weight_decay);
  m->set_amsgrad(o.amsgrad);
  m->set_maximize(o.maximize);
}

void ToProto(const AdagradOptions& o, v1::Adagrad* m) {
  m->set_lr(o.lr);
  m->set_lr_decay(o.lr_decay);
  m->set_weight_decay(o.weight_decay);
  m->set_initial_accumulator_value(o.initial_accumulator_value);
  m->set_eps(o.eps);
  m->set_maximize(o.maximize);
}

void ToProto(const NormalizedGdOptions& o, v1::NormalizedGd* m) {
  m->set_lr(o.lr);
  m->set_eps(o.eps);
  m->set_norm(o.norm == NormalizedGdOptions::Norm::kGlobal ? v1::NormalizedGd::NORM_GLOBAL
                                                          : v1::NormalizedGd::NORM_PER_TENSOR);
  m->set_guard(o.guard == NormalizedGdOptions::Guard::kAddEps ? v1::NormalizedGd::GUARD_ADD_EPS
                                                             : v1::NormalizedGd::GUARD_MAX_EPS);
}

// Prefixes "config.optimizer." to an optimizer's validation message ("adam.lr = ...").
absl::Status InConfig(const absl::Status& s) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat("config.optimizer.", s.message()));
}

}  // namespace

absl::StatusOr<WireDType> DTypeFromProto(const char* field, int dtype) {
  if (!v1::DType_IsValid(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " = ", dtype,
                     " is not a known DType; must be DTYPE_F32 (0), DTYPE_BF16 (1) or DTYPE_F16 (2)"));
  }
  return static_cast<WireDType>(dtype);
}

absl::StatusOr<std::vector<WireTensorView>> ViewsOf(
    const char* field, const google::protobuf::RepeatedPtrField<v1::Tensor>& tensors) {
  std::vector<WireTensorView> views;
  views.reserve(tensors.size());
  for (int i = 0; i < tensors.size(); ++i) {
    const v1::Tensor& t = tensors[i];
    const std::string dtype_field = absl::StrCat(field, "[", i, "].dtype");
    absl::StatusOr<WireDType> dtype = DTypeFromProto(dtype_field.c_str(), t.dtype());
    if (!dtype.ok()) return dtype.status();
    views.push_back({t.name(), absl::MakeConstSpan(t.shape().data(), t.shape().size()), *dtype,
                     t.data()});
  }
  return views;
}

void TensorToProto(WireTensor&& tensor, v1::Tensor* out) {
  out->set_name(std::move(tensor.name));
  out->mutable_shape()->Add(tensor.shape.begin(), tensor.shape.end());
  out->set_dtype(static_cast<v1::DType>(tensor.dtype));
  out->set_data(std::move(tensor.data));
}

absl::StatusOr<SessionConfig> ConfigFromProto(const v1::SessionConfig& config) {
  SessionConfig out;
  const v1::OptimizerConfig& opt = config.optimizer();
  switch (opt.kind_case()) {
    case v1::OptimizerConfig::kSgd:
      if (!opt.sgd().has_lr()) {
        return absl::InvalidArgumentError(
            "config.optimizer.sgd.lr is required (torch.optim.SGD has no default); must be >= 0");
      }
      out.optimizer = FromProto(opt.sgd());
      break;
    case v1::OptimizerConfig::kAdam:
      out.optimizer = AdamFromProto<AdamOptions>(opt.adam());
      break;
    case v1::OptimizerConfig::kAdamw:
      out.optimizer = AdamFromProto<AdamWOptions>(opt.adamw());
      break;
    case v1::OptimizerConfig::kAdagrad:
      out.optimizer = FromProto(opt.adagrad());
      break;
    case v1::OptimizerConfig::kNormalizedGd: {
      absl::StatusOr<NormalizedGdOptions> o = FromProto(opt.normalized_gd());
      if (!o.ok()) return o.status();
      out.optimizer = *o;
      break;
    }
    case v1::OptimizerConfig::KIND_NOT_SET:
      return absl::InvalidArgumentError(
          "config.optimizer is not set; must be one of sgd, adam, adamw, adagrad, normalized_gd");
  }
  if (absl::Status s = InConfig(Validate(out.optimizer)); !s.ok()) return s;
  return out;
}

void ConfigToProto(const SessionConfig& config, v1::SessionConfig* out) {
  v1::OptimizerConfig* opt = out->mutable_optimizer();
  std::visit(
      [opt](const auto& o) {
        using T = std::decay_t<decltype(o)>;
        if constexpr (std::is_same_v<T, SgdOptions>) {
          ToProto(o, opt->mutable_sgd());
        } else if constexpr (std::is_same_v<T, AdamOptions>) {
          AdamToProto(o, opt->mutable_adam());
        } else if constexpr (std::is_same_v<T, AdamWOptions>) {
          AdamToProto(o, opt->mutable_adamw());
        } else if constexpr (std::is_same_v<T, AdagradOptions>) {
          ToProto(o, opt->mutable_adagrad());
        } else {
          static_assert(std::is_same_v<T, NormalizedGdOptions>);
          ToProto(o, opt->mutable_normalized_gd());
        }
      },
      config.optimizer);
}

void SessionInfoToProto(const SessionInfo& info, v1::Session* out) {
  out->set_session_id(info.id);
  ConfigToProto(info.config, out->mutable_config());
  for (const TensorSpec& spec : info.tensors) {
    v1::TensorInfo* t = out->add_tensors();
    t->set_name(spec.name);
    t->mutable_shape()->Add(spec.shape.begin(), spec.shape.end());
    t->set_num_elements(spec.num_elements);
  }
  out->set_version(info.version);
  out->set_num_parameters(info.num_parameters);
  out->set_parameter_bytes(info.parameter_bytes);
  out->set_optimizer_state_bytes(info.optimizer_state_bytes);
  out->set_state_bytes_per_parameter(info.state_bytes_per_parameter);
  out->set_create_time_seconds(absl::ToDoubleSeconds(info.create_time - absl::UnixEpoch()));
}

}  // namespace optd
