#include "server/service/proto_convert.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "base/quote.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace optd {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

// One field of an options struct bound to the same-named field of its proto message: how to read
// it (only when the message sets it) and how to write it.
template <typename Options>
struct Binding {
  const char* name;
  std::function<absl::Status(const std::string& path, const Message&, const FieldDescriptor*,
                             Options*)>
      read;
  std::function<void(const Options&, Message*, const FieldDescriptor*)> write;
};

template <typename Options>
Binding<Options> Double(const char* name, double Options::*member) {
  return {name,
          [member](const std::string&, const Message& m, const FieldDescriptor* f, Options* o) {
            o->*member = m.GetReflection()->GetDouble(m, f);
            return absl::OkStatus();
          },
          [member](const Options& o, Message* m, const FieldDescriptor* f) {
            m->GetReflection()->SetDouble(m, f, o.*member);
          }};
}

template <typename Options>
Binding<Options> Bool(const char* name, bool Options::*member) {
  return {name,
          [member](const std::string&, const Message& m, const FieldDescriptor* f, Options* o) {
            o->*member = m.GetReflection()->GetBool(m, f);
            return absl::OkStatus();
          },
          [member](const Options& o, Message* m, const FieldDescriptor* f) {
            m->GetReflection()->SetBool(m, f, o.*member);
          }};
}

template <typename Options>
Binding<Options> Int64(const char* name, int64_t Options::*member) {
  return {name,
          [member](const std::string&, const Message& m, const FieldDescriptor* f, Options* o) {
            o->*member = m.GetReflection()->GetInt64(m, f);
            return absl::OkStatus();
          },
          [member](const Options& o, Message* m, const FieldDescriptor* f) {
            m->GetReflection()->SetInt64(m, f, o.*member);
          }};
}

// An optional double: unset in the message leaves the field as it is; unset in the options
// writes nothing.
template <typename Options>
Binding<Options> OptionalDouble(const char* name, std::optional<double> Options::*member) {
  return {name,
          [member](const std::string&, const Message& m, const FieldDescriptor* f, Options* o) {
            o->*member = m.GetReflection()->GetDouble(m, f);
            return absl::OkStatus();
          },
          [member](const Options& o, Message* m, const FieldDescriptor* f) {
            if ((o.*member).has_value()) m->GetReflection()->SetDouble(m, f, *(o.*member));
          }};
}

template <typename Options>
Binding<Options> Int64List(const char* name, std::vector<int64_t> Options::*member) {
  return {name,
          [member](const std::string&, const Message& m, const FieldDescriptor* f, Options* o) {
            const Reflection* r = m.GetReflection();
            (o->*member).clear();
            for (int i = 0; i < r->FieldSize(m, f); ++i) {
              (o->*member).push_back(r->GetRepeatedInt64(m, f, i));
            }
            return absl::OkStatus();
          },
          [member](const Options& o, Message* m, const FieldDescriptor* f) {
            for (int64_t v : o.*member) m->GetReflection()->AddInt64(m, f, v);
          }};
}

// An enum whose C++ values equal the proto values (0, 1, ...). Unknown values are refused.
template <typename Options, typename Enum>
Binding<Options> EnumField(const char* name, Enum Options::*member) {
  return {
      name,
      [member](const std::string& path, const Message& m, const FieldDescriptor* f, Options* o) {
        const int value = m.GetReflection()->GetEnumValue(m, f);
        if (f->enum_type()->FindValueByNumber(value) == nullptr) {
          std::vector<std::string> known;
          for (int i = 0; i < f->enum_type()->value_count(); ++i) {
            known.push_back(absl::StrCat(f->enum_type()->value(i)->name(), " (",
                                         f->enum_type()->value(i)->number(), ")"));
          }
          return absl::InvalidArgumentError(absl::StrCat(path, ".", f->name(), " = ", value,
                                                         " is not a known value; must be ",
                                                         absl::StrJoin(known, ", ")));
        }
        o->*member = static_cast<Enum>(value);
        return absl::OkStatus();
      },
      [member](const Options& o, Message* m, const FieldDescriptor* f) {
        m->GetReflection()->SetEnumValue(m, f, static_cast<int>(o.*member));
      }};
}

template <typename Options>
std::vector<Binding<Options>> AdamLike() {
  return {Double("lr", &Options::lr),
          Double("beta1", &Options::beta1),
          Double("beta2", &Options::beta2),
          Double("eps", &Options::eps),
          Double("weight_decay", &Options::weight_decay),
          Bool("amsgrad", &Options::amsgrad),
          Bool("maximize", &Options::maximize)};
}

// The bindings of each options struct, in its proto message's field order.
template <typename O>
const std::vector<Binding<O>>& BindingsOf();

#define OPTD_BINDINGS(Type, ...)                                                     \
  template <>                                                                        \
  const std::vector<Binding<Type>>& BindingsOf<Type>() {                             \
    static const auto* const bindings = new std::vector<Binding<Type>>(__VA_ARGS__); \
    return *bindings;                                                                \
  }

using O1 = SgdOptions;
OPTD_BINDINGS(SgdOptions,
              {Double("lr", &O1::lr), Double("momentum", &O1::momentum),
               Double("dampening", &O1::dampening), Double("weight_decay", &O1::weight_decay),
               Bool("nesterov", &O1::nesterov), Bool("maximize", &O1::maximize)})
OPTD_BINDINGS(AdamOptions, AdamLike<AdamOptions>())
OPTD_BINDINGS(AdamWOptions, AdamLike<AdamWOptions>())
using O4 = AdagradOptions;
OPTD_BINDINGS(AdagradOptions, {Double("lr", &O4::lr), Double("lr_decay", &O4::lr_decay),
                               Double("weight_decay", &O4::weight_decay),
                               Double("initial_accumulator_value", &O4::initial_accumulator_value),
                               Double("eps", &O4::eps), Bool("maximize", &O4::maximize)})
using O5 = NormalizedGdOptions;
OPTD_BINDINGS(NormalizedGdOptions, {Double("lr", &O5::lr), Double("eps", &O5::eps),
                                    EnumField("norm", &O5::norm), EnumField("guard", &O5::guard)})
using O6 = AdadeltaOptions;
OPTD_BINDINGS(AdadeltaOptions,
              {Double("lr", &O6::lr), Double("rho", &O6::rho), Double("eps", &O6::eps),
               Double("weight_decay", &O6::weight_decay), Bool("maximize", &O6::maximize)})
using O7 = RmspropOptions;
OPTD_BINDINGS(RmspropOptions,
              {Double("lr", &O7::lr), Double("alpha", &O7::alpha), Double("eps", &O7::eps),
               Double("weight_decay", &O7::weight_decay), Double("momentum", &O7::momentum),
               Bool("centered", &O7::centered), Bool("maximize", &O7::maximize)})
using O8 = NadamOptions;
OPTD_BINDINGS(NadamOptions,
              {Double("lr", &O8::lr), Double("beta1", &O8::beta1), Double("beta2", &O8::beta2),
               Double("eps", &O8::eps), Double("weight_decay", &O8::weight_decay),
               Double("momentum_decay", &O8::momentum_decay)})
using O9 = RadamOptions;
OPTD_BINDINGS(RadamOptions,
              {Double("lr", &O9::lr), Double("beta1", &O9::beta1), Double("beta2", &O9::beta2),
               Double("eps", &O9::eps), Double("weight_decay", &O9::weight_decay)})
using O10 = LionOptions;
OPTD_BINDINGS(LionOptions,
              {Double("lr", &O10::lr), Double("beta1", &O10::beta1), Double("beta2", &O10::beta2),
               Double("weight_decay", &O10::weight_decay)})
using O11 = LambOptions;
OPTD_BINDINGS(LambOptions,
              {Double("lr", &O11::lr), Double("beta1", &O11::beta1), Double("beta2", &O11::beta2),
               Double("eps", &O11::eps), Double("weight_decay", &O11::weight_decay)})
using O12 = LarsOptions;
OPTD_BINDINGS(LarsOptions, {Double("lr", &O12::lr), Double("momentum", &O12::momentum),
                            Double("weight_decay", &O12::weight_decay),
                            Double("trust_coefficient", &O12::trust_coefficient),
                            Double("eps", &O12::eps), Bool("nesterov", &O12::nesterov)})
using O13 = ProdigyOptions;
OPTD_BINDINGS(ProdigyOptions,
              {Double("lr", &O13::lr), Double("beta1", &O13::beta1), Double("beta2", &O13::beta2),
               OptionalDouble("beta3", &O13::beta3), Double("eps", &O13::eps),
               Double("weight_decay", &O13::weight_decay), Bool("decouple", &O13::decouple),
               Bool("use_bias_correction", &O13::use_bias_correction),
               Bool("safeguard_warmup", &O13::safeguard_warmup), Double("d0", &O13::d0),
               Double("d_coef", &O13::d_coef), Double("growth_rate", &O13::growth_rate),
               Int64("slice_p", &O13::slice_p)})
using O14 = DAdaptAdamOptions;
OPTD_BINDINGS(DAdaptAdamOptions,
              {Double("lr", &O14::lr), Double("beta1", &O14::beta1), Double("beta2", &O14::beta2),
               Double("eps", &O14::eps), Double("weight_decay", &O14::weight_decay),
               Bool("decouple", &O14::decouple),
               Bool("use_bias_correction", &O14::use_bias_correction), Double("d0", &O14::d0),
               Double("growth_rate", &O14::growth_rate), Double("layer_scale", &O14::layer_scale)})
using O15 = DAdaptSgdOptions;
OPTD_BINDINGS(DAdaptSgdOptions, {Double("lr", &O15::lr), Double("momentum", &O15::momentum),
                                 Double("weight_decay", &O15::weight_decay), Double("d0", &O15::d0),
                                 Double("growth_rate", &O15::growth_rate)})
template <typename O>
std::vector<Binding<O>> DogLike() {
  return {Double("lr", &O::lr),
          Double("reps_rel", &O::reps_rel),
          Double("weight_decay", &O::weight_decay),
          Double("eps", &O::eps),
          OptionalDouble("init_eta", &O::init_eta),
          Bool("averaging", &O::averaging),
          Double("averager_gamma", &O::averager_gamma)};
}
OPTD_BINDINGS(DogOptions, DogLike<DogOptions>())
OPTD_BINDINGS(LdogOptions, DogLike<LdogOptions>())
using O18 = ScheduleFreeAdamWOptions;
OPTD_BINDINGS(ScheduleFreeAdamWOptions,
              {Double("lr", &O18::lr), Double("beta1", &O18::beta1), Double("beta2", &O18::beta2),
               Double("eps", &O18::eps), Double("weight_decay", &O18::weight_decay),
               Int64("warmup_steps", &O18::warmup_steps), Double("r", &O18::r),
               Double("weight_lr_power", &O18::weight_lr_power),
               Double("inner_momentum", &O18::inner_momentum)})
using O19 = ScheduleFreeSgdOptions;
OPTD_BINDINGS(ScheduleFreeSgdOptions,
              {Double("lr", &O19::lr), Double("momentum", &O19::momentum),
               Double("weight_decay", &O19::weight_decay),
               Int64("warmup_steps", &O19::warmup_steps), Double("r", &O19::r),
               Double("weight_lr_power", &O19::weight_lr_power)})
using O20 = AdafactorOptions;
OPTD_BINDINGS(AdafactorOptions,
              {Double("lr", &O20::lr), Double("beta2_decay", &O20::beta2_decay),
               OptionalDouble("eps1", &O20::eps1), Double("eps2", &O20::eps2), Double("d", &O20::d),
               Double("weight_decay", &O20::weight_decay), Bool("maximize", &O20::maximize)})
using O21 = MuonOptions;
OPTD_BINDINGS(MuonOptions,
              {Double("lr", &O21::lr), Double("momentum", &O21::momentum),
               Double("weight_decay", &O21::weight_decay), Bool("nesterov", &O21::nesterov),
               Int64("ns_steps", &O21::ns_steps), Double("adam_lr", &O21::adam_lr),
               Double("adam_beta1", &O21::adam_beta1), Double("adam_beta2", &O21::adam_beta2),
               Double("adam_eps", &O21::adam_eps),
               Double("adam_weight_decay", &O21::adam_weight_decay)})

OPTD_BINDINGS(ConstantScheduleOptions, {})
using S2 = StepScheduleOptions;
OPTD_BINDINGS(StepScheduleOptions,
              {Int64("step_size", &S2::step_size), Double("gamma", &S2::gamma)})
using S3 = MultiStepScheduleOptions;
OPTD_BINDINGS(MultiStepScheduleOptions,
              {Int64List("milestones", &S3::milestones), Double("gamma", &S3::gamma)})
OPTD_BINDINGS(ExponentialScheduleOptions, {Double("gamma", &ExponentialScheduleOptions::gamma)})
using S5 = CosineAnnealingScheduleOptions;
OPTD_BINDINGS(CosineAnnealingScheduleOptions,
              {Int64("t_max", &S5::t_max), Double("eta_min", &S5::eta_min)})
using S6 = LinearWarmupScheduleOptions;
OPTD_BINDINGS(LinearWarmupScheduleOptions,
              {Double("start_factor", &S6::start_factor), Double("end_factor", &S6::end_factor),
               Int64("total_iters", &S6::total_iters)})
using S7 = WarmupCosineScheduleOptions;
OPTD_BINDINGS(WarmupCosineScheduleOptions,
              {Double("init_factor", &S7::init_factor), Int64("warmup_steps", &S7::warmup_steps),
               Int64("decay_steps", &S7::decay_steps), Double("end_factor", &S7::end_factor),
               Double("exponent", &S7::exponent)})
using S8 = InverseSqrtScheduleOptions;
OPTD_BINDINGS(InverseSqrtScheduleOptions,
              {Int64("warmup_steps", &S8::warmup_steps), Int64("timescale", &S8::timescale)})
using S9 = OneCycleScheduleOptions;
OPTD_BINDINGS(OneCycleScheduleOptions,
              {Double("max_lr", &S9::max_lr), Int64("total_steps", &S9::total_steps),
               Double("pct_start", &S9::pct_start),
               EnumField("anneal_strategy", &S9::anneal_strategy),
               Double("div_factor", &S9::div_factor),
               Double("final_div_factor", &S9::final_div_factor),
               Bool("three_phase", &S9::three_phase)})
using S10 = ReduceOnPlateauScheduleOptions;
OPTD_BINDINGS(ReduceOnPlateauScheduleOptions,
              {EnumField("mode", &S10::mode), Double("factor", &S10::factor),
               Int64("patience", &S10::patience), Double("threshold", &S10::threshold),
               EnumField("threshold_mode", &S10::threshold_mode), Int64("cooldown", &S10::cooldown),
               Double("min_lr", &S10::min_lr), Double("eps", &S10::eps)})
#undef OPTD_BINDINGS

// Reads the fields `m` sets into `*o` (others keep their values). `path` names `m` in messages.
template <typename Options>
absl::Status Merge(const std::string& path, const Message& m, Options* o) {
  for (const Binding<Options>& b : BindingsOf<Options>()) {
    const FieldDescriptor* f = m.GetDescriptor()->FindFieldByName(b.name);
    const bool present = f->is_repeated()    ? m.GetReflection()->FieldSize(m, f) > 0
                         : f->has_presence() ? m.GetReflection()->HasField(m, f)
                                             : true;
    if (!present) continue;
    if (absl::Status s = b.read(path, m, f, o); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// Writes every field of `o` into `*m`.
template <typename Options>
void Write(const Options& o, Message* m) {
  for (const Binding<Options>& b : BindingsOf<Options>()) {
    b.write(o, m, m->GetDescriptor()->FindFieldByName(b.name));
  }
}

template <size_t I, typename Variant>
absl::Status MergeAlternative(const std::string& path, const Message& sub, bool reset,
                              Variant* out) {
  if (reset) *out = std::variant_alternative_t<I, Variant>{};
  return Merge(path, sub, &std::get<I>(*out));
}

template <typename Variant, size_t... I>
absl::Status MergeAlternativeAt(size_t index, const std::string& path, const Message& sub,
                                bool reset, Variant* out, std::index_sequence<I...>) {
  absl::Status status;
  ((I == index ? (void)(status = MergeAlternative<I>(path, sub, reset, out)) : void()), ...);
  return status;
}

// A oneof `kind` whose field numbers are the variant's alternative indices + 1 (OptimizerConfig
// and OptimizerOptions; LrSchedule and ScheduleOptions): reads the alternative the message sets,
// merged over `*out` when `*out` already holds that alternative, else over its defaults.
template <typename Variant>
absl::Status MergeOneof(const std::string& path, const Message& m, Variant* out,
                        bool* kind_changed) {
  const google::protobuf::OneofDescriptor* oneof = m.GetDescriptor()->FindOneofByName("kind");
  const FieldDescriptor* f = m.GetReflection()->GetOneofFieldDescriptor(m, oneof);
  const size_t index = static_cast<size_t>(f->number() - 1);
  *kind_changed = index != out->index();
  return MergeAlternativeAt(index, absl::StrCat(path, ".", f->name()),
                            m.GetReflection()->GetMessage(m, f), *kind_changed, out,
                            std::make_index_sequence<std::variant_size_v<Variant>>());
}

template <typename Variant>
void WriteOneof(const Variant& v, Message* m) {
  const FieldDescriptor* f = m->GetDescriptor()->FindFieldByNumber(static_cast<int>(v.index()) + 1);
  Message* sub = m->GetReflection()->MutableMessage(m, f);
  std::visit([sub](const auto& o) { Write(o, sub); }, v);
}

// Prefixes `prefix` to a validation message ("adam.lr = ..." -> "config.optimizer.adam.lr = ...").
absl::Status Prefixed(const std::string& prefix, const absl::Status& s) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(prefix, s.message()));
}

absl::StatusOr<ConsistencyOptions> ConsistencyFromProto(const v1::Consistency& m) {
  ConsistencyOptions o;
  if (!v1::Consistency::Mode_IsValid(m.mode())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.consistency.mode = ", m.mode(),
        " is not a known value; must be MODE_ASYNC (0), MODE_SYNC (1) or MODE_BOUNDED (2)"));
  }
  if (!v1::Consistency::Reduce_IsValid(m.reduce())) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.consistency.reduce = ", m.reduce(),
                     " is not a known value; must be REDUCE_MEAN (0) or REDUCE_SUM (1)"));
  }
  o.mode = static_cast<ConsistencyOptions::Mode>(m.mode());
  o.reduce = static_cast<ConsistencyOptions::Reduce>(m.reduce());
  o.worker_ids.assign(m.worker_ids().begin(), m.worker_ids().end());
  o.workers = m.workers() == 0 && !o.worker_ids.empty() ? static_cast<int>(o.worker_ids.size())
                                                        : m.workers();
  if (o.mode != ConsistencyOptions::Mode::kSync) o.workers = std::max(o.workers, 1);
  if (m.barrier_timeout_seconds() != 0) {
    // Checked in every mode, though only SYNC uses it, so that every config accepted reads back
    // (ConfigToProto) as one that is accepted again, the same: a value absl::Duration rounds to
    // zero would read back as 0 (which means 30), one beyond its range as inf.
    const double seconds = m.barrier_timeout_seconds();
    if (!(seconds > 0 && seconds <= 86400) || absl::Seconds(seconds) <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.consistency.barrier_timeout_seconds = ", m.barrier_timeout_seconds(),
                       " is out of range: must be in (0, 86400] (0 means 30)"));
    }
    o.barrier_timeout = absl::Seconds(m.barrier_timeout_seconds());
  }
  o.quorum = m.quorum();
  o.max_staleness = m.max_staleness();
  if (absl::Status s = o.Validate(); !s.ok()) return Prefixed("config.", s);
  return o;
}

void ConsistencyToProto(const ConsistencyOptions& o, v1::Consistency* m) {
  m->set_mode(static_cast<v1::Consistency::Mode>(o.mode));
  m->set_workers(o.workers);
  for (const std::string& w : o.worker_ids) m->add_worker_ids(w);
  m->set_reduce(static_cast<v1::Consistency::Reduce>(o.reduce));
  m->set_barrier_timeout_seconds(absl::ToDoubleSeconds(o.barrier_timeout));
  m->set_quorum(o.effective_quorum());
  m->set_max_staleness(o.max_staleness);
}

}  // namespace

absl::StatusOr<WireDType> DTypeFromProto(const char* field, int dtype) {
  if (!v1::DType_IsValid(dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " = ", dtype,
        " is not a known DType; must be DTYPE_F32 (0), DTYPE_BF16 (1) or DTYPE_F16 (2)"));
  }
  return static_cast<WireDType>(dtype);
}

namespace {

// The view of tensor `index` of a request's `field`, whose data is `data`.
absl::StatusOr<WireTensorView> ViewOf(const char* field, int index, const v1::Tensor& t,
                                      TensorBytes data) {
  const std::string dtype_field = absl::StrCat(field, "[", index, "].dtype");
  absl::StatusOr<WireDType> dtype = DTypeFromProto(dtype_field.c_str(), t.dtype());
  if (!dtype.ok()) return dtype.status();
  return WireTensorView{
      t.name(),     absl::MakeConstSpan(t.shape().data(), t.shape().size()),
      *dtype,       std::move(data),
      t.has_rows(), absl::MakeConstSpan(t.rows().indices().data(), t.rows().indices().size())};
}

}  // namespace

absl::StatusOr<std::vector<WireTensorView>> ViewsOf(
    const char* field, const google::protobuf::RepeatedPtrField<v1::Tensor>& tensors) {
  std::vector<WireTensorView> views;
  views.reserve(tensors.size());
  for (int i = 0; i < tensors.size(); ++i) {
    absl::StatusOr<WireTensorView> view =
        ViewOf(field, i, tensors[i], TensorBytes::Borrowed(tensors[i].data()));
    if (!view.ok()) return view.status();
    views.push_back(*std::move(view));
  }
  return views;
}

absl::StatusOr<std::vector<WireTensorView>> ViewsOf(const char* field,
                                                    const std::vector<TensorMessage>& tensors) {
  std::vector<WireTensorView> views;
  views.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    absl::StatusOr<WireTensorView> view =
        ViewOf(field, static_cast<int>(i), tensors[i].fields, tensors[i].data.Borrow());
    if (!view.ok()) return view.status();
    views.push_back(*std::move(view));
  }
  return views;
}

void TensorFieldsToProto(const WireTensor& tensor, v1::Tensor* out) {
  out->set_name(tensor.name);
  out->mutable_shape()->Add(tensor.shape.begin(), tensor.shape.end());
  out->set_dtype(static_cast<v1::DType>(tensor.dtype));
  if (tensor.has_rows) {
    out->mutable_rows()->mutable_indices()->Add(tensor.rows.begin(), tensor.rows.end());
  }
}

void TensorToProto(WireTensor&& tensor, v1::Tensor* out) {
  TensorFieldsToProto(tensor, out);
  if (tensor.data.kind() == TensorBytes::Kind::kOwned) {
    out->set_data(std::move(*tensor.data.mutable_owned()));
  } else {
    *out->mutable_data() = tensor.data.Flatten(tensor.dtype);  // the message owns its bytes
  }
}

absl::Status MergeOptimizerFromProto(const v1::OptimizerConfig& config, bool require_same_kind,
                                     const std::string& prefix, OptimizerOptions* options) {
  if (config.kind_case() == v1::OptimizerConfig::KIND_NOT_SET) {
    // Every optimizer the contract knows, in field order, from the oneof itself.
    const google::protobuf::OneofDescriptor* kinds =
        v1::OptimizerConfig::descriptor()->FindOneofByName("kind");
    std::vector<std::string> names;
    for (int i = 0; i < kinds->field_count(); ++i) names.push_back(kinds->field(i)->name());
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "optimizer is not set; must be one of ", absl::StrJoin(names, ", ")));
  }
  const std::string before(OptimizerName(*options));
  bool kind_changed = false;
  OptimizerOptions merged = *options;
  if (absl::Status s = MergeOneof(prefix + "optimizer", config, &merged, &kind_changed); !s.ok()) {
    return s;
  }
  if (require_same_kind && kind_changed) {
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizer is ", std::string(OptimizerName(merged)), " but the session runs ", before,
        "; the optimizer kind cannot change (its state would be lost): create a new session"));
  }
  if (absl::Status s = Prefixed(prefix + "optimizer.", Validate(merged)); !s.ok()) return s;
  *options = std::move(merged);
  return absl::OkStatus();
}

absl::StatusOr<ScheduleOptions> ScheduleFromProto(const v1::LrSchedule& schedule,
                                                  const std::string& prefix) {
  ScheduleOptions out;  // constant
  if (schedule.kind_case() == v1::LrSchedule::KIND_NOT_SET) return out;
  bool kind_changed = false;
  if (absl::Status s = MergeOneof(prefix + "schedule", schedule, &out, &kind_changed); !s.ok()) {
    return s;
  }
  if (absl::Status s = Prefixed(prefix, Validate(out)); !s.ok()) return s;
  return out;
}

absl::StatusOr<ClipOptions> ClippingFromProto(const v1::Clipping& clipping,
                                              const std::string& prefix) {
  ClipOptions out;
  out.max_norm = clipping.max_norm();
  out.clip_value = clipping.clip_value();
  if (absl::Status s = Prefixed(prefix, out.Validate()); !s.ok()) return s;
  return out;
}

absl::StatusOr<SessionConfig> ConfigFromProto(const v1::SessionConfig& config) {
  SessionConfig out;
  const v1::OptimizerConfig& opt = config.optimizer();
  if (opt.kind_case() == v1::OptimizerConfig::kSgd && !opt.sgd().has_lr()) {
    return absl::InvalidArgumentError(
        "config.optimizer.sgd.lr is required (torch.optim.SGD has no default); must be >= 0");
  }
  if (absl::Status s = MergeOptimizerFromProto(opt, false, "config.", &out.optimizer); !s.ok()) {
    return s;
  }
  absl::StatusOr<ScheduleOptions> schedule = ScheduleFromProto(config.schedule(), "config.");
  if (!schedule.ok()) return schedule.status();
  out.schedule = *std::move(schedule);
  absl::StatusOr<ClipOptions> clipping = ClippingFromProto(config.clipping(), "config.");
  if (!clipping.ok()) return clipping.status();
  out.clipping = *clipping;
  absl::StatusOr<ConsistencyOptions> consistency = ConsistencyFromProto(config.consistency());
  if (!consistency.ok()) return consistency.status();
  out.consistency = *std::move(consistency);
  if (config.has_placement()) {
    absl::StatusOr<Placement> placement = PlacementFromProto(config.placement(), "config.");
    if (!placement.ok()) return placement.status();
    out.placement = *std::move(placement);
  }
  if (absl::Status s = ParamGroupsFromProto(config, &out); !s.ok()) return s;
  return out;
}

void ConfigToProto(const SessionConfig& config, v1::SessionConfig* out) {
  WriteOneof(config.optimizer, out->mutable_optimizer());
  WriteOneof(config.schedule, out->mutable_schedule());
  out->mutable_clipping()->set_max_norm(config.clipping.max_norm);
  out->mutable_clipping()->set_clip_value(config.clipping.clip_value);
  ConsistencyToProto(config.consistency, out->mutable_consistency());
  if (config.placement.has_value()) PlacementToProto(*config.placement, out->mutable_placement());
  for (const ParamGroupConfig& group : config.param_groups) {
    v1::ParamGroup* g = out->add_param_groups();
    for (const std::string& name : group.tensors) g->add_tensors(name);
    WriteOneof(group.optimizer, g->mutable_optimizer());
  }
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
  out->set_learning_rate(info.learning_rate);
  out->set_num_parameters(info.num_parameters);
  out->set_parameter_bytes(info.parameter_bytes);
  out->set_optimizer_state_bytes(info.optimizer_state_bytes);
  out->set_state_bytes_per_parameter(info.state_bytes_per_parameter);
  out->set_create_time_seconds(absl::ToDoubleSeconds(info.create_time - absl::UnixEpoch()));
  v1::MemoryUse* memory = out->mutable_memory();
  memory->set_parameter_bytes(info.memory.parameter_bytes);
  memory->set_optimizer_state_bytes(info.memory.optimizer_state_bytes);
  memory->set_reserved_state_bytes(info.memory.reserved_state_bytes);
  memory->set_reply_bytes(info.memory.reply_bytes);
  memory->set_barrier_bytes(info.memory.barrier_bytes);
  memory->set_exactly_once_bytes(info.memory.exactly_once_bytes);
  memory->set_total_bytes(info.memory.total());
  for (const auto& [name, value] : info.estimates)
    (*out->mutable_optimizer_estimates())[name] = value;
}

}  // namespace optd
