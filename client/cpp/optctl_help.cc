// optctl --help: the sections on optimizers, schedules, clipping and consistency, generated from
// the proto's descriptors (so no field is forgotten) with the defaults of HelpTable beside them.

#include <map>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/cpp/optctl_flags.h"
#include "google/protobuf/descriptor.h"

namespace optd {
namespace client {
namespace optctl {
namespace {

namespace pb = ::google::protobuf;

constexpr size_t kHelpWidth = 100;

// What --help says of each field beside its name: the default (torch 1.13's) or what to give.
// Keyed "Message.field"; enum fields list their values themselves and booleans default to false.
const std::map<std::string, std::string>& HelpTable() {
  // One line (or two) per message.
  // clang-format off
  static const auto* table = new std::map<std::string, std::string>{
      {"Sgd.lr", "X (required)"}, {"Sgd.momentum", "0"}, {"Sgd.dampening", "0"},
          {"Sgd.weight_decay", "0"},
      {"Adam.lr", "1e-3"}, {"Adam.beta1", "0.9"}, {"Adam.beta2", "0.999"}, {"Adam.eps", "1e-8"},
          {"Adam.weight_decay", "0"},
      {"AdamW.lr", "1e-3"}, {"AdamW.beta1", "0.9"}, {"AdamW.beta2", "0.999"}, {"AdamW.eps", "1e-8"},
          {"AdamW.weight_decay", "1e-2"},
      {"Adagrad.lr", "1e-2"}, {"Adagrad.lr_decay", "0"}, {"Adagrad.weight_decay", "0"},
          {"Adagrad.initial_accumulator_value", "0"}, {"Adagrad.eps", "1e-10"},
      {"NormalizedGd.lr", "1e-2"}, {"NormalizedGd.eps", "1e-6"},
      {"Adadelta.lr", "1.0"}, {"Adadelta.rho", "0.9"}, {"Adadelta.eps", "1e-6"},
          {"Adadelta.weight_decay", "0"},
      {"RMSprop.lr", "1e-2"}, {"RMSprop.alpha", "0.99"}, {"RMSprop.eps", "1e-8"},
          {"RMSprop.weight_decay", "0"}, {"RMSprop.momentum", "0"},
      {"NAdam.lr", "2e-3"}, {"NAdam.beta1", "0.9"}, {"NAdam.beta2", "0.999"}, {"NAdam.eps", "1e-8"},
          {"NAdam.weight_decay", "0"}, {"NAdam.momentum_decay", "4e-3"},
      {"RAdam.lr", "1e-3"}, {"RAdam.beta1", "0.9"}, {"RAdam.beta2", "0.999"}, {"RAdam.eps", "1e-8"},
          {"RAdam.weight_decay", "0"},
      {"Lion.lr", "1e-4"}, {"Lion.beta1", "0.9"}, {"Lion.beta2", "0.99"},
          {"Lion.weight_decay", "1e-3"},
      {"Lamb.lr", "1e-3"}, {"Lamb.beta1", "0.9"}, {"Lamb.beta2", "0.999"}, {"Lamb.eps", "1e-6"},
          {"Lamb.weight_decay", "0"},
      {"Lars.lr", "1.0"}, {"Lars.momentum", "0.9"}, {"Lars.weight_decay", "0"},
          {"Lars.trust_coefficient", "1e-3"}, {"Lars.eps", "0"},
      {"Prodigy.lr", "1.0"}, {"Prodigy.beta1", "0.9"}, {"Prodigy.beta2", "0.999"},
          {"Prodigy.beta3", "sqrt(beta2)"}, {"Prodigy.eps", "1e-8"},
          {"Prodigy.weight_decay", "0"}, {"Prodigy.d0", "1e-6"}, {"Prodigy.d_coef", "1.0"},
          {"Prodigy.growth_rate", "inf"}, {"Prodigy.slice_p", "1"},
      {"DAdaptAdam.lr", "1.0"}, {"DAdaptAdam.beta1", "0.9"}, {"DAdaptAdam.beta2", "0.999"},
          {"DAdaptAdam.eps", "1e-8"}, {"DAdaptAdam.weight_decay", "0"}, {"DAdaptAdam.d0", "1e-6"},
          {"DAdaptAdam.growth_rate", "inf"}, {"DAdaptAdam.layer_scale", "1.0"},
      {"DAdaptSgd.lr", "1.0"}, {"DAdaptSgd.momentum", "0"}, {"DAdaptSgd.weight_decay", "0"},
          {"DAdaptSgd.d0", "1e-6"}, {"DAdaptSgd.growth_rate", "inf"},
      {"Dog.lr", "1.0"}, {"Dog.reps_rel", "1e-6"}, {"Dog.weight_decay", "0"}, {"Dog.eps", "1e-8"},
          {"Dog.init_eta", "unset"}, {"Dog.averager_gamma", "8"},
      {"Ldog.lr", "1.0"}, {"Ldog.reps_rel", "1e-6"}, {"Ldog.weight_decay", "0"},
          {"Ldog.eps", "1e-8"}, {"Ldog.init_eta", "unset"}, {"Ldog.averager_gamma", "8"},
      {"ScheduleFreeAdamW.lr", "0.0025"}, {"ScheduleFreeAdamW.beta1", "0.9"},
          {"ScheduleFreeAdamW.beta2", "0.999"}, {"ScheduleFreeAdamW.eps", "1e-8"},
          {"ScheduleFreeAdamW.weight_decay", "0"}, {"ScheduleFreeAdamW.warmup_steps", "0"},
          {"ScheduleFreeAdamW.r", "0"}, {"ScheduleFreeAdamW.weight_lr_power", "2"},
          {"ScheduleFreeAdamW.inner_momentum", "0"},
      {"ScheduleFreeSgd.lr", "1.0"}, {"ScheduleFreeSgd.momentum", "0.9"},
          {"ScheduleFreeSgd.weight_decay", "0"}, {"ScheduleFreeSgd.warmup_steps", "0"},
          {"ScheduleFreeSgd.r", "0"}, {"ScheduleFreeSgd.weight_lr_power", "2"},
      {"Adafactor.lr", "1e-2"}, {"Adafactor.beta2_decay", "-0.8"},
          {"Adafactor.eps1", "float32 eps"}, {"Adafactor.eps2", "1e-3"}, {"Adafactor.d", "1.0"},
          {"Adafactor.weight_decay", "0"},
      {"Muon.lr", "0.02"}, {"Muon.momentum", "0.95"}, {"Muon.weight_decay", "0"},
          {"Muon.ns_steps", "5"}, {"Muon.adam_lr", "3e-4"}, {"Muon.adam_beta1", "0.9"},
          {"Muon.adam_beta2", "0.95"}, {"Muon.adam_eps", "1e-10"},
          {"Muon.adam_weight_decay", "0"},
      // Schedules.
      {"Step.step_size", "N (required, >= 1)"}, {"Step.gamma", "0.1"},
      {"MultiStep.milestones", "M1,M2,..."}, {"MultiStep.gamma", "0.1"},
      {"Exponential.gamma", "G (required, in (0, 1])"},
      {"CosineAnnealing.t_max", "N (required, >= 1)"}, {"CosineAnnealing.eta_min", "0"},
      {"LinearWarmup.start_factor", "1/3"}, {"LinearWarmup.end_factor", "1"},
          {"LinearWarmup.total_iters", "5"},
      {"WarmupCosine.init_factor", "0"}, {"WarmupCosine.warmup_steps", "0"},
          {"WarmupCosine.decay_steps", "N (required, > warmup_steps)"},
          {"WarmupCosine.end_factor", "0"}, {"WarmupCosine.exponent", "1"},
      {"InverseSqrt.warmup_steps", "0"}, {"InverseSqrt.timescale", "0 (= warmup_steps, or 1e4)"},
      {"OneCycle.max_lr", "X (required)"}, {"OneCycle.total_steps", "N (required)"},
          {"OneCycle.pct_start", "0.3"}, {"OneCycle.div_factor", "25"},
          {"OneCycle.final_div_factor", "1e4"}, {"OneCycle.three_phase", "false"},
      {"ReduceOnPlateau.factor", "0.1"}, {"ReduceOnPlateau.patience", "10"},
          {"ReduceOnPlateau.threshold", "1e-4"}, {"ReduceOnPlateau.cooldown", "0"},
          {"ReduceOnPlateau.min_lr", "0"}, {"ReduceOnPlateau.eps", "1e-8"},
      // Consistency (its mode is the spec's NAME).
      {"Consistency.workers", "K (sync: gradients per step)"},
          {"Consistency.worker_ids", "A,B,... (sync: the only workers)"},
          {"Consistency.barrier_timeout_seconds", "30"},
          {"Consistency.quorum", "Q (sync: 0 = workers)"},
          {"Consistency.max_staleness", "S (bounded)"},
  };
  // clang-format on
  return *table;
}

// Appends `words` to `out` after `label` (padded to kIndent), wrapping at kHelpWidth.
void AppendWrapped(absl::string_view label, const std::vector<std::string>& words,
                   std::string* out) {
  constexpr size_t kIndent = 20;
  std::string line = absl::StrFormat("  %-*s", static_cast<int>(kIndent - 2), label);
  if (label.size() + 2 >= kIndent) line += " ";
  bool first = true;
  for (const std::string& word : words) {
    if (!first && line.size() + 1 + word.size() > kHelpWidth) {
      absl::StrAppend(out, line, "\n");
      line = std::string(kIndent, ' ');
      first = true;
    }
    absl::StrAppend(&line, first ? "" : " ", word);
    first = false;
  }
  absl::StrAppend(out, absl::StripTrailingAsciiWhitespace(line), "\n");
}

// "step_size=N (required, >= 1)" / "anneal_strategy=cos|linear" for a field given as KEY=VALUE.
std::string KeyHelp(const pb::FieldDescriptor& field) {
  if (field.cpp_type() == pb::FieldDescriptor::CPPTYPE_ENUM) {
    return absl::StrCat(field.name(), "=", EnumChoices(*field.enum_type()));
  }
  return absl::StrCat(field.name(), "=", FieldHelp(field));
}

}  // namespace

std::string FieldHelp(const pb::FieldDescriptor& field) {
  const auto it =
      HelpTable().find(absl::StrCat(field.containing_type()->name(), ".", field.name()));
  return it == HelpTable().end() ? "" : it->second;
}

std::string ConfigHelp() {
  std::string out =
      "Optimizers (--optimizer=NAME and its flags; a flag not given takes the default shown,\n"
      "torch 1.13's; booleans are false unless given, --amsgrad or --noamsgrad):\n";
  const pb::OneofDescriptor& kinds = *v1::OptimizerConfig::descriptor()->FindOneofByName("kind");
  for (int i = 0; i < kinds.field_count(); ++i) {
    const pb::Descriptor& type = *kinds.field(i)->message_type();
    std::vector<std::string> words;
    for (int j = 0; j < type.field_count(); ++j) {
      const pb::FieldDescriptor& f = *type.field(j);
      if (f.cpp_type() == pb::FieldDescriptor::CPPTYPE_BOOL) {
        words.push_back(absl::StrCat("--[no]", f.name()));
      } else if (f.cpp_type() == pb::FieldDescriptor::CPPTYPE_ENUM) {
        words.push_back(absl::StrCat("--", f.name(), "=", EnumChoices(*f.enum_type())));
      } else {
        words.push_back(absl::StrCat("--", f.name(), "=", FieldHelp(f)));
      }
    }
    AppendWrapped(kinds.field(i)->name(), words, &out);
  }

  out +=
      "\nSchedules (--schedule=NAME[:KEY=VALUE,...]; the lr of the k-th applied step, as\n"
      "torch.optim.lr_scheduler computes it; unset options take the defaults shown):\n";
  const pb::OneofDescriptor& schedules = *v1::LrSchedule::descriptor()->FindOneofByName("kind");
  for (int i = 0; i < schedules.field_count(); ++i) {
    const pb::Descriptor& type = *schedules.field(i)->message_type();
    std::vector<std::string> words;
    for (int j = 0; j < type.field_count(); ++j) {
      words.push_back(KeyHelp(*type.field(j)) + (j + 1 < type.field_count() ? "," : ""));
    }
    AppendWrapped(schedules.field(i)->name(), words, &out);
  }

  out +=
      "\nClipping, before the optimizer (0 = off): --max_norm=X (global L2 norm, torch\n"
      "clip_grad_norm_), then --clip_value=X (each element clamped to [-X, X]).\n"
      "\nConsistency (create only; --consistency=MODE[:KEY=VALUE,...]):\n";
  std::vector<std::string> words;
  const pb::Descriptor& consistency = *v1::Consistency::descriptor();
  for (int j = 0; j < consistency.field_count(); ++j) {
    if (consistency.field(j)->name() == "mode") continue;
    words.push_back(KeyHelp(*consistency.field(j)) +
                    (j + 1 < consistency.field_count() ? "," : ""));
  }
  AppendWrapped(EnumChoices(*v1::Consistency::Mode_descriptor()), words, &out);
  return out;
}

}  // namespace optctl
}  // namespace client
}  // namespace optd
