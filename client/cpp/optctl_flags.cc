#include "client/cpp/optctl_flags.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/descriptor.h"

// The optimizer's kind and hyperparameters: one flag per field name of the optimizer messages.
ABSL_FLAG(std::string, optimizer, "",
          "create: the optimizer (see Optimizers in --help); update: must be the session's");
ABSL_FLAG(std::optional<double>, lr, std::nullopt, "learning rate (every optimizer)");
ABSL_FLAG(std::optional<double>, beta1, std::nullopt, "adam, adamw, nadam, radam, lion, lamb");
ABSL_FLAG(std::optional<double>, beta2, std::nullopt, "adam, adamw, nadam, radam, lion, lamb");
ABSL_FLAG(std::optional<double>, eps, std::nullopt, "epsilon (most optimizers)");
ABSL_FLAG(std::optional<double>, weight_decay, std::nullopt, "weight decay (most optimizers)");
ABSL_FLAG(std::optional<double>, momentum, std::nullopt, "sgd, rmsprop, lars");
ABSL_FLAG(std::optional<double>, dampening, std::nullopt, "sgd");
ABSL_FLAG(std::optional<double>, lr_decay, std::nullopt, "adagrad");
ABSL_FLAG(std::optional<double>, initial_accumulator_value, std::nullopt, "adagrad");
ABSL_FLAG(std::optional<double>, rho, std::nullopt, "adadelta");
ABSL_FLAG(std::optional<double>, alpha, std::nullopt, "rmsprop");
ABSL_FLAG(std::optional<double>, momentum_decay, std::nullopt, "nadam");
ABSL_FLAG(std::optional<double>, trust_coefficient, std::nullopt, "lars");
// Boolean hyperparameters are sent only when written on the command line (--amsgrad,
// --noamsgrad, --amsgrad=false): their defaults below are torch's but are never sent.
ABSL_FLAG(bool, nesterov, false, "sgd, lars: Nesterov momentum");
ABSL_FLAG(bool, amsgrad, false, "adam, adamw: AMSGrad");
ABSL_FLAG(bool, maximize, false, "sgd, adam, adamw, adagrad, adadelta, rmsprop");
ABSL_FLAG(bool, centered, false, "rmsprop");
ABSL_FLAG(std::optional<std::string>, norm, std::nullopt, "normalized_gd: global | per_tensor");
ABSL_FLAG(std::optional<std::string>, guard, std::nullopt, "normalized_gd: add_eps | max_eps");
// The learning-rate-free and recent optimizers' fields.
ABSL_FLAG(std::optional<double>, beta3, std::nullopt, "prodigy");
ABSL_FLAG(std::optional<double>, d0, std::nullopt, "prodigy, dadapt_adam, dadapt_sgd");
ABSL_FLAG(std::optional<double>, d_coef, std::nullopt, "prodigy");
ABSL_FLAG(std::optional<double>, growth_rate, std::nullopt,
          "prodigy, dadapt_adam, dadapt_sgd (inf: unbounded)");
ABSL_FLAG(std::optional<double>, layer_scale, std::nullopt, "dadapt_adam");
ABSL_FLAG(std::optional<double>, reps_rel, std::nullopt, "dog, ldog");
ABSL_FLAG(std::optional<double>, init_eta, std::nullopt, "dog, ldog");
ABSL_FLAG(std::optional<double>, averager_gamma, std::nullopt, "dog, ldog");
ABSL_FLAG(std::optional<double>, r, std::nullopt, "schedulefree_adamw, schedulefree_sgd");
ABSL_FLAG(std::optional<double>, weight_lr_power, std::nullopt,
          "schedulefree_adamw, schedulefree_sgd");
ABSL_FLAG(std::optional<double>, inner_momentum, std::nullopt, "schedulefree_adamw");
ABSL_FLAG(std::optional<double>, beta2_decay, std::nullopt, "adafactor");
ABSL_FLAG(std::optional<double>, eps1, std::nullopt, "adafactor");
ABSL_FLAG(std::optional<double>, eps2, std::nullopt, "adafactor");
ABSL_FLAG(std::optional<double>, d, std::nullopt, "adafactor: update clipping threshold");
ABSL_FLAG(std::optional<double>, adam_lr, std::nullopt, "muon: AdamW lr of the non-matrix tensors");
ABSL_FLAG(std::optional<double>, adam_beta1, std::nullopt, "muon");
ABSL_FLAG(std::optional<double>, adam_beta2, std::nullopt, "muon");
ABSL_FLAG(std::optional<double>, adam_eps, std::nullopt, "muon");
ABSL_FLAG(std::optional<double>, adam_weight_decay, std::nullopt, "muon");
ABSL_FLAG(bool, decouple, false, "prodigy, dadapt_adam: decoupled weight decay");
ABSL_FLAG(bool, use_bias_correction, false, "prodigy, dadapt_adam");
ABSL_FLAG(bool, safeguard_warmup, false, "prodigy");
ABSL_FLAG(bool, averaging, false, "dog, ldog: keep the iterate average");
ABSL_FLAG(std::optional<int64_t>, slice_p, std::nullopt, "prodigy");
ABSL_FLAG(std::optional<int64_t>, warmup_steps, std::nullopt,
          "schedulefree_adamw, schedulefree_sgd");
ABSL_FLAG(std::optional<int64_t>, ns_steps, std::nullopt, "muon");

ABSL_FLAG(std::string, schedule, "", "learning-rate schedule NAME[:KEY=VALUE,...] (see --help)");
ABSL_FLAG(std::optional<double>, max_norm, std::nullopt, "clip the gradient's global L2 norm");
ABSL_FLAG(std::optional<double>, clip_value, std::nullopt, "clamp gradient elements to [-X, X]");
ABSL_FLAG(std::string, consistency, "",
          "create: async | sync | bounded, with KEY=VALUE options (see --help)");

namespace optd {
namespace client {
namespace optctl {
namespace {

namespace pb = ::google::protobuf;

constexpr char kUsagePayload[] = "optctl/usage";

struct DoubleFlag {
  const char* name;
  absl::Flag<std::optional<double>>* flag;
};
struct BoolFlag {
  const char* name;
  absl::Flag<bool>* flag;
};
struct EnumFlag {
  const char* name;
  absl::Flag<std::optional<std::string>>* flag;
};
struct Int64Flag {
  const char* name;
  absl::Flag<std::optional<int64_t>>* flag;
};

const DoubleFlag kDoubleFlags[] = {
    {"lr", &FLAGS_lr},
    {"beta1", &FLAGS_beta1},
    {"beta2", &FLAGS_beta2},
    {"eps", &FLAGS_eps},
    {"weight_decay", &FLAGS_weight_decay},
    {"momentum", &FLAGS_momentum},
    {"dampening", &FLAGS_dampening},
    {"lr_decay", &FLAGS_lr_decay},
    {"initial_accumulator_value", &FLAGS_initial_accumulator_value},
    {"rho", &FLAGS_rho},
    {"alpha", &FLAGS_alpha},
    {"momentum_decay", &FLAGS_momentum_decay},
    {"trust_coefficient", &FLAGS_trust_coefficient},
    {"beta3", &FLAGS_beta3},
    {"d0", &FLAGS_d0},
    {"d_coef", &FLAGS_d_coef},
    {"growth_rate", &FLAGS_growth_rate},
    {"layer_scale", &FLAGS_layer_scale},
    {"reps_rel", &FLAGS_reps_rel},
    {"init_eta", &FLAGS_init_eta},
    {"averager_gamma", &FLAGS_averager_gamma},
    {"r", &FLAGS_r},
    {"weight_lr_power", &FLAGS_weight_lr_power},
    {"inner_momentum", &FLAGS_inner_momentum},
    {"beta2_decay", &FLAGS_beta2_decay},
    {"eps1", &FLAGS_eps1},
    {"eps2", &FLAGS_eps2},
    {"d", &FLAGS_d},
    {"adam_lr", &FLAGS_adam_lr},
    {"adam_beta1", &FLAGS_adam_beta1},
    {"adam_beta2", &FLAGS_adam_beta2},
    {"adam_eps", &FLAGS_adam_eps},
    {"adam_weight_decay", &FLAGS_adam_weight_decay},
};
const BoolFlag kBoolFlags[] = {
    {"nesterov", &FLAGS_nesterov},
    {"amsgrad", &FLAGS_amsgrad},
    {"maximize", &FLAGS_maximize},
    {"centered", &FLAGS_centered},
    {"decouple", &FLAGS_decouple},
    {"use_bias_correction", &FLAGS_use_bias_correction},
    {"safeguard_warmup", &FLAGS_safeguard_warmup},
    {"averaging", &FLAGS_averaging},
};
const Int64Flag kInt64Flags[] = {
    {"slice_p", &FLAGS_slice_p},
    {"warmup_steps", &FLAGS_warmup_steps},
    {"ns_steps", &FLAGS_ns_steps},
};
const EnumFlag kEnumFlags[] = {
    {"norm", &FLAGS_norm},
    {"guard", &FLAGS_guard},
};

const pb::EnumValueDescriptor* FindShortName(const pb::EnumDescriptor& type,
                                             absl::string_view name) {
  for (int i = 0; i < type.value_count(); ++i) {
    if (ShortName(*type.value(i)) == absl::AsciiStrToLower(name)) return type.value(i);
  }
  return nullptr;
}

std::vector<std::string> OneofNames(const pb::OneofDescriptor& oneof) {
  std::vector<std::string> names;
  for (int i = 0; i < oneof.field_count(); ++i) names.push_back(oneof.field(i)->name());
  return names;
}

const pb::OneofDescriptor& OptimizerOneof() {
  return *v1::OptimizerConfig::descriptor()->FindOneofByName("kind");
}

// The kind's name ("adamw") of an optimizer message type ("AdamW").
std::string KindName(const pb::Descriptor& type) {
  const pb::OneofDescriptor& kinds = OptimizerOneof();
  for (int i = 0; i < kinds.field_count(); ++i) {
    if (kinds.field(i)->message_type() == &type) return kinds.field(i)->name();
  }
  return type.name();
}

std::vector<std::string> FlagNames(const pb::Descriptor& type) {
  std::vector<std::string> names;
  for (int i = 0; i < type.field_count(); ++i) names.push_back("--" + type.field(i)->name());
  return names;
}

// Sets (or, for a repeated field, adds) `text` as the value of `field`. `what` prefixes errors.
absl::Status SetFromText(absl::string_view what, const pb::FieldDescriptor& field,
                         absl::string_view text, pb::Message* message) {
  const pb::Reflection* r = message->GetReflection();
  const bool repeated = field.is_repeated();
  auto bad = [&](absl::string_view wanted) {
    return UsageError(
        absl::StrCat(what, ": ", field.name(), " needs ", wanted, "; got '", text, "'"));
  };
  switch (field.cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_DOUBLE: {
      double v;
      if (!absl::SimpleAtod(text, &v) || !std::isfinite(v)) return bad("a finite number");
      repeated ? r->AddDouble(message, &field, v) : r->SetDouble(message, &field, v);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_INT64: {
      int64_t v;
      if (!absl::SimpleAtoi(text, &v)) return bad("an integer");
      repeated ? r->AddInt64(message, &field, v) : r->SetInt64(message, &field, v);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_INT32: {
      int32_t v;
      if (!absl::SimpleAtoi(text, &v)) return bad("a 32-bit integer");
      repeated ? r->AddInt32(message, &field, v) : r->SetInt32(message, &field, v);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_BOOL: {
      bool v;
      if (!absl::SimpleAtob(text, &v)) return bad("true or false");
      repeated ? r->AddBool(message, &field, v) : r->SetBool(message, &field, v);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      const pb::EnumValueDescriptor* v = FindShortName(*field.enum_type(), text);
      if (v == nullptr) {
        return bad(absl::StrCat("one of ", EnumChoices(*field.enum_type())));
      }
      repeated ? r->AddEnum(message, &field, v) : r->SetEnum(message, &field, v);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_STRING:
      repeated ? r->AddString(message, &field, std::string(text))
               : r->SetString(message, &field, std::string(text));
      return absl::OkStatus();
    default:
      return UsageError(
          absl::StrCat(what, ": ", field.name(), " cannot be given on the command line"));
  }
}

// "key=value,key=value2,more" on `message`: `more` continues the repeated field before it.
absl::Status SetFields(absl::string_view what, absl::string_view pairs, absl::string_view kind,
                       const std::set<std::string>& reserved, pb::Message* message) {
  const pb::Descriptor* type = message->GetDescriptor();
  std::vector<std::string> keys;
  for (int i = 0; i < type->field_count(); ++i) {
    if (reserved.count(type->field(i)->name()) == 0) keys.push_back(type->field(i)->name());
  }
  std::set<std::string> seen;
  const pb::FieldDescriptor* repeated = nullptr;
  for (absl::string_view token : absl::StrSplit(pairs, ',')) {
    const size_t eq = token.find('=');
    if (eq == absl::string_view::npos) {
      if (repeated == nullptr || token.empty()) {
        return UsageError(absl::StrCat(what, ": '", token, "' is not KEY=VALUE (", kind,
                                       " takes: ", absl::StrJoin(keys, ", "), ")"));
      }
      if (absl::Status s = SetFromText(what, *repeated, token, message); !s.ok()) return s;
      continue;
    }
    const std::string key(token.substr(0, eq));
    const pb::FieldDescriptor* field = type->FindFieldByName(key);
    if (field == nullptr || reserved.count(key) > 0) {
      return UsageError(absl::StrCat(
          what, ": ", kind, " has no option '", key, "'",
          keys.empty() ? " (it takes none)"
                       : absl::StrCat(" (it takes: ", absl::StrJoin(keys, ", "), ")")));
    }
    if (!seen.insert(key).second) {
      return UsageError(absl::StrCat(what, ": ", key, " is given twice"));
    }
    if (absl::Status s = SetFromText(what, *field, token.substr(eq + 1), message); !s.ok()) {
      return s;
    }
    repeated = field->is_repeated() ? field : nullptr;
  }
  return absl::OkStatus();
}

std::string FormatValue(const pb::Message& m, const pb::FieldDescriptor& f, int index) {
  const pb::Reflection* r = m.GetReflection();
  const bool rep = f.is_repeated();
  switch (f.cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      return absl::StrFormat("%.10g",
                             rep ? r->GetRepeatedDouble(m, &f, index) : r->GetDouble(m, &f));
    case pb::FieldDescriptor::CPPTYPE_INT64:
      return absl::StrCat(rep ? r->GetRepeatedInt64(m, &f, index) : r->GetInt64(m, &f));
    case pb::FieldDescriptor::CPPTYPE_INT32:
      return absl::StrCat(rep ? r->GetRepeatedInt32(m, &f, index) : r->GetInt32(m, &f));
    case pb::FieldDescriptor::CPPTYPE_BOOL:
      return (rep ? r->GetRepeatedBool(m, &f, index) : r->GetBool(m, &f)) ? "true" : "false";
    case pb::FieldDescriptor::CPPTYPE_ENUM:
      return ShortName(rep ? *r->GetRepeatedEnum(m, &f, index) : *r->GetEnum(m, &f));
    case pb::FieldDescriptor::CPPTYPE_STRING:
      return rep ? r->GetRepeatedString(m, &f, index) : r->GetString(m, &f);
    default:
      return "?";
  }
}

}  // namespace

absl::Status UsageError(absl::string_view message) {
  absl::Status status = absl::InvalidArgumentError(message);
  status.SetPayload(kUsagePayload, absl::Cord("1"));
  return status;
}

bool IsUsageError(const absl::Status& status) {
  return status.GetPayload(kUsagePayload).has_value();
}

// An enum value's short name: NORM_PER_TENSOR -> per_tensor (the type's prefix dropped).
std::string ShortName(const pb::EnumValueDescriptor& value) {
  const std::string& name = value.name();
  const size_t underscore = name.find('_');
  return absl::AsciiStrToLower(underscore == std::string::npos ? name
                                                               : name.substr(underscore + 1));
}

std::string EnumChoices(const pb::EnumDescriptor& type) {
  std::vector<std::string> names;
  for (int i = 0; i < type.value_count(); ++i) names.push_back(ShortName(*type.value(i)));
  return absl::StrJoin(names, "|");
}

std::vector<std::string> RepeatedFlag(const CommandLine& command_line, absl::string_view name,
                                      const std::vector<std::string>& parsed) {
  std::vector<std::string> values;
  for (int i = 1; i < command_line.argc; ++i) {
    absl::string_view arg = command_line.argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "--") && !absl::ConsumePrefix(&arg, "-")) continue;
    if (!absl::ConsumePrefix(&arg, name)) continue;
    absl::string_view value;
    if (absl::ConsumePrefix(&arg, "=")) {
      value = arg;
    } else if (arg.empty() && i + 1 < command_line.argc) {
      value = command_line.argv[++i];
    } else {
      continue;  // another flag that starts with `name`
    }
    for (absl::string_view v : absl::StrSplit(value, ',', absl::SkipEmpty())) {
      values.emplace_back(v);
    }
  }
  if (values.empty()) return parsed;
  return values;
}

bool BoolFlagGiven(const CommandLine& command_line, absl::string_view name) {
  for (int i = 1; i < command_line.argc; ++i) {
    absl::string_view arg = command_line.argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "--") && !absl::ConsumePrefix(&arg, "-")) continue;
    arg = arg.substr(0, arg.find('='));
    if (arg == name || (absl::ConsumePrefix(&arg, "no") && arg == name)) return true;
  }
  return false;
}

bool HelpRequested(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg == "-h" || arg == "--help" || arg == "-help" || arg == "--helpshort" ||
        arg == "--helpfull") {
      return true;
    }
  }
  return false;
}

std::vector<std::string> OptimizerKinds() { return OneofNames(OptimizerOneof()); }

pb::Message* MutableOptimizer(v1::OptimizerConfig* config) {
  const pb::Reflection* reflection = config->GetReflection();
  const pb::FieldDescriptor* field =
      reflection->GetOneofFieldDescriptor(*config, &OptimizerOneof());
  return field == nullptr ? nullptr : reflection->MutableMessage(config, field);
}

std::string OptimizerKind(const v1::OptimizerConfig& config) {
  const pb::FieldDescriptor* field =
      config.GetReflection()->GetOneofFieldDescriptor(config, &OptimizerOneof());
  return field == nullptr ? "(none)" : field->name();
}

absl::Status ApplyOptimizerFlags(const CommandLine& command_line, v1::OptimizerConfig* config) {
  const std::string kind = absl::GetFlag(FLAGS_optimizer);
  if (!kind.empty()) {
    const pb::FieldDescriptor* field = config->GetDescriptor()->FindFieldByName(kind);
    if (field == nullptr || field->containing_oneof() != &OptimizerOneof()) {
      return UsageError(absl::StrCat("--optimizer=", kind, ": must be one of ",
                                     absl::StrJoin(OptimizerKinds(), ", ")));
    }
    config->GetReflection()->MutableMessage(config, field)->Clear();
  }
  pb::Message* optimizer = MutableOptimizer(config);
  if (optimizer == nullptr) {
    return UsageError(
        absl::StrCat("no optimizer: give --optimizer=", absl::StrJoin(OptimizerKinds(), "|"),
                     " (or an optimizer in --config)"));
  }
  return ApplyHyperparameterFlags(command_line, optimizer).status();
}

absl::StatusOr<int> ApplyHyperparameterFlags(const CommandLine& command_line,
                                             pb::Message* optimizer) {
  const pb::Descriptor* type = optimizer->GetDescriptor();
  const pb::Reflection* reflection = optimizer->GetReflection();
  auto field_for = [&](const char* flag) -> absl::StatusOr<const pb::FieldDescriptor*> {
    const pb::FieldDescriptor* field = type->FindFieldByName(flag);
    if (field == nullptr) {
      return UsageError(absl::StrCat("--", flag, " does not apply to ", KindName(*type),
                                     " (it takes: ", absl::StrJoin(FlagNames(*type), ", "), ")"));
    }
    return field;
  };
  int given = 0;
  for (const DoubleFlag& f : kDoubleFlags) {
    const std::optional<double> value = absl::GetFlag(*f.flag);
    if (!value.has_value()) continue;
    absl::StatusOr<const pb::FieldDescriptor*> field = field_for(f.name);
    if (!field.ok()) return field.status();
    reflection->SetDouble(optimizer, *field, *value);
    ++given;
  }
  for (const BoolFlag& f : kBoolFlags) {
    if (!BoolFlagGiven(command_line, f.name)) continue;
    absl::StatusOr<const pb::FieldDescriptor*> field = field_for(f.name);
    if (!field.ok()) return field.status();
    reflection->SetBool(optimizer, *field, absl::GetFlag(*f.flag));
    ++given;
  }
  for (const Int64Flag& f : kInt64Flags) {
    const std::optional<int64_t> value = absl::GetFlag(*f.flag);
    if (!value.has_value()) continue;
    absl::StatusOr<const pb::FieldDescriptor*> field = field_for(f.name);
    if (!field.ok()) return field.status();
    reflection->SetInt64(optimizer, *field, *value);
    ++given;
  }
  for (const EnumFlag& f : kEnumFlags) {
    const std::optional<std::string> value = absl::GetFlag(*f.flag);
    if (!value.has_value()) continue;
    absl::StatusOr<const pb::FieldDescriptor*> field = field_for(f.name);
    if (!field.ok()) return field.status();
    absl::Status s =
        SetFromText(absl::StrCat("--", f.name, "=", *value), **field, *value, optimizer);
    if (!s.ok()) return s;
    ++given;
  }
  return given;
}

absl::Status ParseSchedule(absl::string_view spec, v1::LrSchedule* schedule) {
  const std::string what = absl::StrCat("--schedule=", spec);
  const std::pair<absl::string_view, absl::string_view> parts =
      absl::StrSplit(spec, absl::MaxSplits(':', 1));
  const pb::OneofDescriptor* kinds = v1::LrSchedule::descriptor()->FindOneofByName("kind");
  const pb::FieldDescriptor* field =
      v1::LrSchedule::descriptor()->FindFieldByName(std::string(parts.first));
  if (field == nullptr || field->containing_oneof() != kinds) {
    return UsageError(absl::StrCat(what, ": '", parts.first, "' is not a schedule; must be one of ",
                                   absl::StrJoin(OneofNames(*kinds), ", ")));
  }
  schedule->Clear();
  pb::Message* kind = schedule->GetReflection()->MutableMessage(schedule, field);
  if (parts.second.empty()) return absl::OkStatus();
  return SetFields(what, parts.second, field->name(), {}, kind);
}

absl::Status ParseConsistency(absl::string_view spec, v1::Consistency* consistency) {
  const std::string what = absl::StrCat("--consistency=", spec);
  const std::pair<absl::string_view, absl::string_view> parts =
      absl::StrSplit(spec, absl::MaxSplits(':', 1));
  const pb::EnumValueDescriptor* mode =
      FindShortName(*v1::Consistency::Mode_descriptor(), parts.first);
  if (mode == nullptr) {
    return UsageError(absl::StrCat(what, ": '", parts.first, "' is not a mode; must be one of ",
                                   EnumChoices(*v1::Consistency::Mode_descriptor())));
  }
  consistency->Clear();
  consistency->set_mode(static_cast<v1::Consistency::Mode>(mode->number()));
  if (parts.second.empty()) return absl::OkStatus();
  return SetFields(what, parts.second, ShortName(*mode), {"mode"}, consistency);
}

absl::StatusOr<bool> ApplyScheduleFlag(v1::LrSchedule* schedule) {
  const std::string spec = absl::GetFlag(FLAGS_schedule);
  if (spec.empty()) return false;
  if (absl::Status s = ParseSchedule(spec, schedule); !s.ok()) return s;
  return true;
}

absl::StatusOr<bool> ApplyClippingFlags(v1::Clipping* clipping) {
  bool given = false;
  const std::pair<const char*, std::optional<double>> flags[] = {
      {"max_norm", absl::GetFlag(FLAGS_max_norm)}, {"clip_value", absl::GetFlag(FLAGS_clip_value)}};
  for (const auto& [name, value] : flags) {
    if (!value.has_value()) continue;
    if (!std::isfinite(*value) || *value < 0) {
      return UsageError(
          absl::StrCat("--", name, "=", *value, ": must be finite and >= 0 (0 = off)"));
    }
    const pb::FieldDescriptor* field = v1::Clipping::descriptor()->FindFieldByName(name);
    clipping->GetReflection()->SetDouble(clipping, field, *value);
    given = true;
  }
  return given;
}

absl::StatusOr<bool> ApplyConsistencyFlag(v1::Consistency* consistency) {
  const std::string spec = absl::GetFlag(FLAGS_consistency);
  if (spec.empty()) return false;
  if (absl::Status s = ParseConsistency(spec, consistency); !s.ok()) return s;
  return true;
}

std::string HyperparameterFlags(absl::string_view kind) {
  const pb::FieldDescriptor* field =
      v1::OptimizerConfig::descriptor()->FindFieldByName(std::string(kind));
  if (field == nullptr || field->message_type() == nullptr) return "";
  return absl::StrJoin(FlagNames(*field->message_type()), ", ");
}

std::string FormatFields(const pb::Message& message) {
  const pb::Descriptor* type = message.GetDescriptor();
  const pb::Reflection* r = message.GetReflection();
  std::vector<std::string> pairs;
  for (int i = 0; i < type->field_count(); ++i) {
    const pb::FieldDescriptor* f = type->field(i);
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (f->is_repeated()) {
      const int n = r->FieldSize(message, f);
      if (n == 0) continue;
      std::vector<std::string> values;
      for (int j = 0; j < n; ++j) values.push_back(FormatValue(message, *f, j));
      pairs.push_back(absl::StrCat(f->name(), "=", absl::StrJoin(values, ",")));
    } else if (r->HasField(message, f)) {  // without presence: not zero
      pairs.push_back(absl::StrCat(f->name(), "=", FormatValue(message, *f, 0)));
    }
  }
  return absl::StrJoin(pairs, ",");
}

std::string FormatSchedule(const v1::LrSchedule& schedule) {
  const pb::FieldDescriptor* field = schedule.GetReflection()->GetOneofFieldDescriptor(
      schedule, v1::LrSchedule::descriptor()->FindOneofByName("kind"));
  if (field == nullptr) return "constant";
  const std::string fields = FormatFields(schedule.GetReflection()->GetMessage(schedule, field));
  return fields.empty() ? field->name() : absl::StrCat(field->name(), ":", fields);
}

std::string FormatConsistency(const v1::Consistency& consistency) {
  v1::Consistency rest = consistency;
  rest.clear_mode();
  const std::string fields = FormatFields(rest);
  const std::string mode =
      ShortName(*v1::Consistency::Mode_descriptor()->FindValueByNumber(consistency.mode()));
  return fields.empty() ? mode : absl::StrCat(mode, ":", fields);
}

bool HasFlagFor(const pb::FieldDescriptor& field) {
  const std::string& name = field.name();
  switch (field.cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      for (const DoubleFlag& f : kDoubleFlags) {
        if (name == f.name) return true;
      }
      return false;
    case pb::FieldDescriptor::CPPTYPE_BOOL:
      for (const BoolFlag& f : kBoolFlags) {
        if (name == f.name) return true;
      }
      return false;
    case pb::FieldDescriptor::CPPTYPE_INT64:
      for (const Int64Flag& f : kInt64Flags) {
        if (name == f.name) return true;
      }
      return false;
    case pb::FieldDescriptor::CPPTYPE_ENUM:
      for (const EnumFlag& f : kEnumFlags) {
        if (name == f.name) return true;
      }
      return false;
    default:
      return false;
  }
}

}  // namespace optctl
}  // namespace client
}  // namespace optd
