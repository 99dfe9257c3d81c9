// optctl: the command-line client of an optd server. Creates, lists, describes and deletes
// sessions, pulls parameters into NumPy .npy files, steps a session with synthetic gradients and
// checks health. Run `optctl --help` for the commands and flags.
//
// Exit status: 0 on success; 1 when an RPC or a file operation fails, or health is not SERVING;
// 2 for a usage error found by optctl (absl's own flag-syntax errors exit 1). Every failure prints
// one line `optctl: <CODE>: <message>` to stderr.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/cpp/client.h"
#include "client/cpp/host_tensor.h"
#include "client/cpp/npy.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/message.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/json_util.h"
#include "optd/v1/optd.pb.h"

// Global.
ABSL_FLAG(std::string, server, "127.0.0.1:50051", "optd server address, host:port");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(30), "deadline of each RPC, e.g. 30s, 500ms");

// create.
ABSL_FLAG(std::string, session, "", "create: session id (default: the server generates one)");
ABSL_FLAG(std::string, optimizer, "",
          "create: sgd | adam | adamw | adagrad | normalized_gd (required without --config)");
ABSL_FLAG(std::optional<double>, lr, std::nullopt, "create: learning rate (sgd: required)");
ABSL_FLAG(std::optional<double>, beta1, std::nullopt, "create (adam, adamw): beta1");
ABSL_FLAG(std::optional<double>, beta2, std::nullopt, "create (adam, adamw): beta2");
ABSL_FLAG(std::optional<double>, eps, std::nullopt,
          "create (adam, adamw, adagrad, normalized_gd): epsilon");
ABSL_FLAG(std::optional<double>, weight_decay, std::nullopt,
          "create (sgd, adam, adamw, adagrad): weight decay");
ABSL_FLAG(std::optional<double>, momentum, std::nullopt, "create (sgd): momentum");
ABSL_FLAG(std::optional<double>, dampening, std::nullopt, "create (sgd): dampening");
ABSL_FLAG(std::optional<double>, lr_decay, std::nullopt, "create (adagrad): learning-rate decay");
ABSL_FLAG(std::optional<double>, initial_accumulator_value, std::nullopt,
          "create (adagrad): initial accumulator value");
// Boolean hyperparameters are sent only when written on the command line (--amsgrad,
// --noamsgrad, --amsgrad=false): their defaults below are torch's but are never sent.
ABSL_FLAG(bool, nesterov, false, "create (sgd): Nesterov momentum");
ABSL_FLAG(bool, amsgrad, false, "create (adam, adamw): AMSGrad");
ABSL_FLAG(bool, maximize, false, "create (sgd, adam, adamw, adagrad): maximize the objective");
ABSL_FLAG(std::optional<std::string>, norm, std::nullopt,
          "create (normalized_gd): global | per_tensor");
ABSL_FLAG(std::optional<std::string>, guard, std::nullopt,
          "create (normalized_gd): add_eps | max_eps");
ABSL_FLAG(std::vector<std::string>, tensor, {},
          "create: NAME:DIMS[:INIT], repeatable or comma-separated; DIMS is D1xD2x... or scalar");
ABSL_FLAG(std::string, config, "",
          "create: file holding a CreateSessionRequest, as JSON (*.json) or textproto; tensors "
          "given with a shape and no data are initialised with --init");
ABSL_FLAG(std::string, init, "zeros", "create --config: INIT of tensors given without data");
ABSL_FLAG(uint64_t, seed, 1, "create, step: seed of uniform= and normal= initialisation");

// pull.
ABSL_FLAG(std::string, out, ".", "pull: directory for the .npy files (created if missing)");
ABSL_FLAG(std::vector<std::string>, names, {}, "pull: tensors to pull, comma-separated (all)");
ABSL_FLAG(std::string, dtype, "f32", "pull: wire encoding f32 | bf16 | f16 (files are float32)");

// step.
ABSL_FLAG(std::vector<std::string>, grad, {},
          "step: NAME:INIT, repeatable; *:INIT for every tensor not named (default zeros)");
ABSL_FLAG(std::optional<double>, loss, std::nullopt, "step: loss to report with the gradient");
ABSL_FLAG(std::string, worker, "optctl", "step: worker id");

// health.
ABSL_FLAG(std::string, service, "", "health: service to check (\"\": the whole server)");

namespace optd {
namespace client {
namespace {

constexpr char kUsage[] = R"(command-line client of an optd server.

Usage: optctl [--server=HOST:PORT] [--timeout=30s] COMMAND [ARGS] [FLAGS]

Commands:
  create    --optimizer=NAME [--lr=X ...] --tensor=NAME:DIMS[:INIT] ... [--session=ID]
            create --config=FILE [--init=INIT] [--session=ID]
            Creates a session and prints it. Only the hyperparameters given are sent
            (booleans as --amsgrad or --noamsgrad); the rest take torch 1.13's defaults. FILE is
            a CreateSessionRequest in JSON (*.json) or textproto; its tensors may omit data.
  list      Lists every session.
  describe  ID: prints one session.
  delete    ID: deletes a session.
  pull      ID [--out=DIR] [--names=a,b] [--dtype=f32|bf16|f16]
            Writes one NumPy .npy file (float32, C order) per tensor into DIR.
  step      ID [--grad=NAME:INIT ...] [--grad=*:INIT] [--loss=X] [--worker=W]
            Applies one step with synthetic gradients (unnamed tensors: zeros).
  health    [--service=NAME]: prints the health status; exit 0 only if SERVING.

DIMS is D1xD2x... (e.g. 784x10) or 'scalar'. INIT is zeros | ones | const=V | uniform=A
(U(-A, A)) | normal=S (N(0, S^2)), seeded by --seed.

Exit status: 0 success; 1 RPC or file failure, or health not SERVING; 2 usage error.
Example:
  optctl create --session=demo --optimizer=adam --lr=0.01 --tensor=w:784x10:normal=0.01,b:10
  optctl pull demo --out=/tmp/demo)";

// Tensors larger than this are refused before anything is allocated: the server's default
// message limit (256 MiB) could not carry them anyway.
constexpr int64_t kMaxElements = (int64_t{256} << 20) / 4;

// ---------------------------------------------------------------------------------------------------
// Errors. A usage error is an InvalidArgument carrying a payload, so that main can exit with 2.

constexpr char kUsagePayload[] = "optctl/usage";

absl::Status UsageError(absl::string_view message) {
  absl::Status status = absl::InvalidArgumentError(message);
  status.SetPayload(kUsagePayload, absl::Cord("1"));
  return status;
}

bool IsUsageError(const absl::Status& status) {
  return status.GetPayload(kUsagePayload).has_value();
}

// ---------------------------------------------------------------------------------------------------
// Command-line helpers.

// The raw command line, for the two things absl's parsed values cannot tell: every occurrence of a
// repeated flag, and whether a flag was written at all. Both scan argv as absl reads it: "--name",
// "--name=V", "--name V" for flags that take a value, one or two dashes, nothing after "--".
struct CommandLine {
  int argc;
  char** argv;
};

// Every value of a repeatable flag (absl keeps only the last), each split at commas. Falls back to
// absl's value when argv has none (e.g. the flag came from --flagfile).
std::vector<std::string> RepeatedFlag(const CommandLine& command_line, absl::string_view name,
                                      const std::vector<std::string>& parsed) {
  const int argc = command_line.argc;
  char** const argv = command_line.argv;
  std::vector<std::string> values;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "--")) {
      if (!absl::ConsumePrefix(&arg, "-")) continue;
    }
    if (!absl::ConsumePrefix(&arg, name)) continue;
    absl::string_view value;
    if (absl::ConsumePrefix(&arg, "=")) {
      value = arg;
    } else if (arg.empty() && i + 1 < argc) {
      value = argv[++i];
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

// Whether the boolean flag `name` was written (as --name, --name=V or --noname).
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

// "784x10" -> {784, 10}; "scalar" -> {}.
absl::StatusOr<std::vector<int64_t>> ParseDims(absl::string_view text, absl::string_view what) {
  std::vector<int64_t> dims;
  if (text == "scalar") return dims;
  for (absl::string_view d : absl::StrSplit(text, 'x')) {
    int64_t v;
    if (!absl::SimpleAtoi(d, &v) || v < 0) {
      return UsageError(absl::StrCat(what, ": dimensions '", text,
                                     "' must be D1xD2x... of integers >= 0, or 'scalar'"));
    }
    dims.push_back(v);
  }
  return dims;
}

struct Init {
  enum Kind { kConst, kUniform, kNormal } kind = kConst;
  double value = 0;  // the constant, A of U(-A, A) or S of N(0, S^2)
};

bool LooksLikeInit(absl::string_view text) {
  return text == "zeros" || text == "ones" || absl::StartsWith(text, "const=") ||
         absl::StartsWith(text, "uniform=") || absl::StartsWith(text, "normal=");
}

absl::StatusOr<Init> ParseInit(absl::string_view text, absl::string_view what) {
  if (text == "zeros") return Init{Init::kConst, 0};
  if (text == "ones") return Init{Init::kConst, 1};
  Init init;
  absl::string_view number = text;
  if (absl::ConsumePrefix(&number, "const=")) {
    init.kind = Init::kConst;
  } else if (absl::ConsumePrefix(&number, "uniform=")) {
    init.kind = Init::kUniform;
  } else if (absl::ConsumePrefix(&number, "normal=")) {
    init.kind = Init::kNormal;
  } else {
    return UsageError(absl::StrCat(what, ": INIT '", text,
                                   "' must be zeros, ones, const=V, uniform=A or normal=S"));
  }
  if (!absl::SimpleAtod(number, &init.value) || !std::isfinite(init.value) ||
      (init.kind != Init::kConst && init.value < 0)) {
    return UsageError(absl::StrCat(what, ": '", text, "' needs a finite number",
                                   init.kind == Init::kConst ? "" : " >= 0"));
  }
  return init;
}

absl::StatusOr<std::vector<float>> MakeValues(const Init& init, const std::vector<int64_t>& shape,
                                              absl::string_view what, std::mt19937_64* rng) {
  int64_t n = 1;
  for (const int64_t d : shape) {
    if (d != 0 && n > kMaxElements / d) {
      n = kMaxElements + 1;
      break;
    }
    n *= d;
  }
  if (n > kMaxElements) {
    return UsageError(absl::StrCat(what, ": shape [", absl::StrJoin(shape, ", "),
                                   "] has more than ", kMaxElements, " elements"));
  }
  std::vector<float> values(static_cast<size_t>(n), static_cast<float>(init.value));
  if (init.kind == Init::kUniform && init.value > 0) {
    std::uniform_real_distribution<float> dist(static_cast<float>(-init.value),
                                               static_cast<float>(init.value));
    for (float& v : values) v = dist(*rng);
  } else if (init.kind == Init::kNormal && init.value > 0) {
    std::normal_distribution<float> dist(0.0f, static_cast<float>(init.value));
    for (float& v : values) v = dist(*rng);
  } else if (init.kind != Init::kConst) {
    std::fill(values.begin(), values.end(), 0.0f);  // U(0, 0) and N(0, 0)
  }
  return values;
}

// NAME:DIMS[:INIT]. NAME may itself contain ':', so the spec is read from the right.
absl::StatusOr<HostTensor> ParseTensorSpec(absl::string_view spec, std::mt19937_64* rng) {
  const std::string what = absl::StrCat("--tensor=", spec);
  std::vector<absl::string_view> parts = absl::StrSplit(spec, ':');
  absl::string_view init_text = "zeros";
  if (parts.size() >= 3 && LooksLikeInit(parts.back())) {
    init_text = parts.back();
    parts.pop_back();
  }
  if (parts.size() < 2) {
    return UsageError(absl::StrCat(what, ": must be NAME:DIMS[:INIT], e.g. w:784x10:normal=0.01"));
  }
  HostTensor tensor;
  absl::StatusOr<std::vector<int64_t>> dims = ParseDims(parts.back(), what);
  if (!dims.ok()) return dims.status();
  tensor.shape = *std::move(dims);
  parts.pop_back();
  tensor.name = absl::StrJoin(parts, ":");
  absl::StatusOr<Init> init = ParseInit(init_text, what);
  if (!init.ok()) return init.status();
  absl::StatusOr<std::vector<float>> values = MakeValues(*init, tensor.shape, what, rng);
  if (!values.ok()) return values.status();
  tensor.values = *std::move(values);
  return tensor;
}

absl::StatusOr<v1::DType> ParseDType(absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "f32") return v1::DTYPE_F32;
  if (lower == "bf16") return v1::DTYPE_BF16;
  if (lower == "f16") return v1::DTYPE_F16;
  return UsageError(absl::StrCat("--dtype=", text, ": must be f32, bf16 or f16"));
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return contents.str();
}

// Collects TextFormat's errors as "FILE:LINE:COLUMN: message".
class TextErrors : public google::protobuf::io::ErrorCollector {
 public:
  explicit TextErrors(std::string file) : file_(std::move(file)) {}
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (!errors_.empty()) errors_ += "; ";
    absl::StrAppend(&errors_, file_, ":", line + 1, ":", column + 1, ": ", message);
  }
  const std::string& errors() const { return errors_; }

 private:
  const std::string file_;
  std::string errors_;
};

absl::StatusOr<v1::CreateSessionRequest> ReadCreateRequest(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  v1::CreateSessionRequest request;
  if (absl::EndsWith(path, ".json")) {
    const auto status = google::protobuf::util::JsonStringToMessage(*text, &request);
    if (!status.ok()) {
      return UsageError(absl::StrCat("--config=", path, ": not a CreateSessionRequest in JSON: ",
                                     status.message().ToString()));
    }
    return request;
  }
  google::protobuf::TextFormat::Parser parser;
  TextErrors errors(path);
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(*text, &request)) {
    return UsageError(
        absl::StrCat("--config: not a CreateSessionRequest in text format: ", errors.errors()));
  }
  return request;
}

// ---------------------------------------------------------------------------------------------------
// Optimizer flags, applied by name to whichever optimizer message the request holds. Only the flags
// given are set, so the server fills in torch's defaults for the rest.

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
  const char* prefix;  // of the enum value names: "NORM_" + upper(value)
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
};
const BoolFlag kBoolFlags[] = {
    {"nesterov", &FLAGS_nesterov},
    {"amsgrad", &FLAGS_amsgrad},
    {"maximize", &FLAGS_maximize},
};
const EnumFlag kEnumFlags[] = {
    {"norm", &FLAGS_norm, "NORM_"},
    {"guard", &FLAGS_guard, "GUARD_"},
};

std::string FieldNames(const google::protobuf::Descriptor& descriptor) {
  std::vector<std::string> names;
  for (int i = 0; i < descriptor.field_count(); ++i) names.push_back(descriptor.field(i)->name());
  return absl::StrJoin(names, ", ");
}

std::string OneofNames(const google::protobuf::OneofDescriptor& oneof) {
  std::vector<std::string> names;
  for (int i = 0; i < oneof.field_count(); ++i) names.push_back(oneof.field(i)->name());
  return absl::StrJoin(names, ", ");
}

// The optimizer message set in `config` (nullptr if none).
google::protobuf::Message* MutableOptimizer(v1::OptimizerConfig* config) {
  const google::protobuf::Reflection* reflection = config->GetReflection();
  const google::protobuf::OneofDescriptor* kind = config->GetDescriptor()->FindOneofByName("kind");
  const google::protobuf::FieldDescriptor* field =
      reflection->GetOneofFieldDescriptor(*config, kind);
  return field == nullptr ? nullptr : reflection->MutableMessage(config, field);
}

absl::Status ApplyOptimizerFlags(const CommandLine& command_line, v1::OptimizerConfig* config) {
  const std::string kind_name = absl::GetFlag(FLAGS_optimizer);
  const google::protobuf::OneofDescriptor* kind = config->GetDescriptor()->FindOneofByName("kind");
  if (!kind_name.empty()) {
    const google::protobuf::FieldDescriptor* field =
        config->GetDescriptor()->FindFieldByName(kind_name);
    if (field == nullptr || field->containing_oneof() != kind) {
      return UsageError(
          absl::StrCat("--optimizer=", kind_name, ": must be one of ", OneofNames(*kind)));
    }
    config->GetReflection()->MutableMessage(config, field)->Clear();
  }
  google::protobuf::Message* optimizer = MutableOptimizer(config);
  if (optimizer == nullptr) {
    return UsageError(absl::StrCat("no optimizer: give --optimizer=", OneofNames(*kind),
                                   " (or an optimizer in --config)"));
  }
  const google::protobuf::Descriptor* descriptor = optimizer->GetDescriptor();
  const google::protobuf::Reflection* reflection = optimizer->GetReflection();
  auto field_for =
      [&](const char* flag) -> absl::StatusOr<const google::protobuf::FieldDescriptor*> {
    const google::protobuf::FieldDescriptor* field = descriptor->FindFieldByName(flag);
    if (field == nullptr) {
      return UsageError(absl::StrCat("--", flag, " does not apply to ", descriptor->name(),
                                     " (it takes: ", FieldNames(*descriptor), ")"));
    }
    return field;
  };
  for (const DoubleFlag& f : kDoubleFlags) {
    const std::optional<double> value = absl::GetFlag(*f.flag);
    if (!value.has_value()) continue;
    absl::StatusOr<const google::protobuf::FieldDescriptor*> field = field_for(f.name);
    if (!field.ok()) return field.status();
    reflection->SetDouble(optimizer, *field, *value);
  }
  for (const BoolFlag& f : kBoolFlags) {
    if (!BoolFlagGiven(command_line, f.name)) continue;
    absl::StatusOr<const google::protobuf::FieldDescriptor*> field = field_for(f.name);
    if (!field.ok()) return field.status();
    reflection->SetBool(optimizer, *field, absl::GetFlag(*f.flag));
  }
  for (const EnumFlag& f : kEnumFlags) {
    const std::optional<std::string> value = absl::GetFlag(*f.flag);
    if (!value.has_value()) continue;
    absl::StatusOr<const google::protobuf::FieldDescriptor*> field = field_for(f.name);
    if (!field.ok()) return field.status();
    const google::protobuf::EnumDescriptor* type = (*field)->enum_type();
    const google::protobuf::EnumValueDescriptor* enum_value =
        type->FindValueByName(absl::StrCat(f.prefix, absl::AsciiStrToUpper(*value)));
    if (enum_value == nullptr) {
      std::vector<std::string> valid;
      for (int i = 0; i < type->value_count(); ++i) {
        valid.push_back(absl::AsciiStrToLower(type->value(i)->name().substr(strlen(f.prefix))));
      }
      return UsageError(
          absl::StrCat("--", f.name, "=", *value, ": must be one of ", absl::StrJoin(valid, ", ")));
    }
    reflection->SetEnum(optimizer, *field, enum_value);
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// Printing.

std::string Shape(const google::protobuf::RepeatedField<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string OptimizerName(const v1::OptimizerConfig& config) {
  const google::protobuf::FieldDescriptor* field = config.GetReflection()->GetOneofFieldDescriptor(
      config, config.GetDescriptor()->FindOneofByName("kind"));
  return field == nullptr ? "(none)" : field->name();
}

std::string FormatTime(double unix_seconds) {
  if (unix_seconds <= 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(std::llround(unix_seconds)),
                          absl::UTCTimeZone());
}

void PrintSession(const v1::Session& session) {
  std::cout << "session:      " << session.session_id() << "\n";
  std::cout << "optimizer:    " << OptimizerName(session.config().optimizer()) << "\n";
  v1::OptimizerConfig config = session.config().optimizer();
  if (const google::protobuf::Message* optimizer = MutableOptimizer(&config)) {
    const google::protobuf::Descriptor* descriptor = optimizer->GetDescriptor();
    const google::protobuf::Reflection* reflection = optimizer->GetReflection();
    for (int i = 0; i < descriptor->field_count(); ++i) {
      const google::protobuf::FieldDescriptor* field = descriptor->field(i);
      std::string value;
      if (field->has_presence() && !reflection->HasField(*optimizer, field)) {
        value = "(unset)";
      } else if (field->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_DOUBLE) {
        value = absl::StrFormat("%.10g", reflection->GetDouble(*optimizer, field));
      } else if (field->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_BOOL) {
        value = reflection->GetBool(*optimizer, field) ? "true" : "false";
      } else if (field->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_ENUM) {
        // NORM_PER_TENSOR -> per_tensor, the spelling of the flag.
        std::string name = reflection->GetEnum(*optimizer, field)->name();
        const size_t underscore = name.find('_');
        value = absl::AsciiStrToLower(
            underscore == std::string::npos ? name : name.substr(underscore + 1));
      } else {
        value = "?";
      }
      std::cout << absl::StrFormat("  %-26s %s\n", field->name(), value);
    }
  }
  std::cout << "tensors:      " << session.tensors_size() << " (" << session.num_parameters()
            << " parameters)\n";
  size_t width = 0;
  for (const v1::TensorInfo& t : session.tensors()) width = std::max(width, t.name().size());
  for (const v1::TensorInfo& t : session.tensors()) {
    std::cout << absl::StrFormat("  %-*s  %-16s %d\n", static_cast<int>(width), t.name(),
                                 Shape(t.shape()), t.num_elements());
  }
  std::cout << "version:      " << session.version() << "\n";
  std::cout << "parameter bytes:        " << session.parameter_bytes() << "\n";
  std::cout << "optimizer state bytes:  " << session.optimizer_state_bytes() << " ("
            << session.state_bytes_per_parameter()
            << " per parameter once every tensor has stepped)\n";
  std::cout << "created:      " << FormatTime(session.create_time_seconds()) << "\n";
}

// A tensor name as a file name: [A-Za-z0-9_.-] kept, anything else (and a leading '.') as %XX, so
// that "layer1/w" cannot leave --out and two names never share a file.
std::string FileNameFor(absl::string_view tensor_name) {
  std::string out;
  for (size_t i = 0; i < tensor_name.size(); ++i) {
    const char c = tensor_name[i];
    if (absl::ascii_isalnum(c) || c == '_' || c == '-' || (c == '.' && i > 0)) {
      out.push_back(c);
    } else {
      absl::StrAppendFormat(&out, "%%%02X", static_cast<unsigned char>(c));
    }
  }
  return out + ".npy";
}

// ---------------------------------------------------------------------------------------------------
// Commands. Each returns the process's status; `args` are the positional arguments after the
// command's name.

absl::Status ExpectArgs(absl::string_view command, const std::vector<std::string>& args,
                        size_t count, absl::string_view what) {
  if (args.size() == count) return absl::OkStatus();
  if (count == 0) {
    return UsageError(
        absl::StrCat(command, " takes no arguments; got '", absl::StrJoin(args, " "), "'"));
  }
  return UsageError(absl::StrCat("usage: optctl ", command, " ", what));
}

absl::Status Create(Client& client, const CommandLine& command_line,
                    const std::vector<std::string>& args) {
  absl::Status s = ExpectArgs("create", args, 0, "");
  if (!s.ok()) return s;
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
  v1::CreateSessionRequest request;
  const std::string config_path = absl::GetFlag(FLAGS_config);
  if (!config_path.empty()) {
    absl::StatusOr<v1::CreateSessionRequest> from_file = ReadCreateRequest(config_path);
    if (!from_file.ok()) return from_file.status();
    request = *std::move(from_file);
    absl::StatusOr<Init> init =
        ParseInit(absl::GetFlag(FLAGS_init), absl::StrCat("--init=", absl::GetFlag(FLAGS_init)));
    if (!init.ok()) return init.status();
    for (v1::Tensor& t : *request.mutable_tensors()) {
      if (!t.data().empty()) continue;
      const std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
      for (const int64_t d : shape) {
        if (d < 0) {
          return UsageError(absl::StrCat("--config: tensor '", t.name(), "' has shape ",
                                         Shape(t.shape()), "; dimensions must be >= 0"));
        }
      }
      absl::StatusOr<std::vector<float>> values =
          MakeValues(*init, shape, absl::StrCat("--config tensor '", t.name(), "'"), &rng);
      if (!values.ok()) return values.status();
      absl::StatusOr<v1::Tensor> encoded =
          HostTensorToProto(HostTensor{t.name(), shape, *std::move(values)}, t.dtype());
      if (!encoded.ok()) return UsageError(encoded.status().message());
      t = *std::move(encoded);
    }
  }
  if (!absl::GetFlag(FLAGS_session).empty()) request.set_session_id(absl::GetFlag(FLAGS_session));
  s = ApplyOptimizerFlags(command_line, request.mutable_config()->mutable_optimizer());
  if (!s.ok()) return s;
  for (const std::string& spec :
       RepeatedFlag(command_line, "tensor", absl::GetFlag(FLAGS_tensor))) {
    absl::StatusOr<HostTensor> tensor = ParseTensorSpec(spec, &rng);
    if (!tensor.ok()) return tensor.status();
    absl::StatusOr<v1::Tensor> encoded = HostTensorToProto(*tensor);
    if (!encoded.ok()) return UsageError(encoded.status().message());
    *request.add_tensors() = *std::move(encoded);
  }
  if (request.tensors().empty()) {
    return UsageError("no tensors: give --tensor=NAME:DIMS[:INIT] (or tensors in --config)");
  }
  absl::StatusOr<v1::Session> session = client.CreateSession(request);
  if (!session.ok()) return session.status();
  PrintSession(*session);
  return absl::OkStatus();
}

absl::Status List(Client& client, const std::vector<std::string>& args) {
  absl::Status s = ExpectArgs("list", args, 0, "");
  if (!s.ok()) return s;
  absl::StatusOr<std::vector<v1::Session>> sessions = client.ListSessions(1000);
  if (!sessions.ok()) return sessions.status();
  size_t width = 2;
  for (const v1::Session& session : *sessions) {
    width = std::max(width, session.session_id().size());
  }
  std::cout << absl::StrFormat("%-*s  %-13s %8s %8s %12s  %s\n", static_cast<int>(width), "ID",
                               "OPTIMIZER", "VERSION", "TENSORS", "PARAMETERS", "CREATED");
  for (const v1::Session& session : *sessions) {
    std::cout << absl::StrFormat(
        "%-*s  %-13s %8d %8d %12d  %s\n", static_cast<int>(width), session.session_id(),
        OptimizerName(session.config().optimizer()), session.version(), session.tensors_size(),
        session.num_parameters(), FormatTime(session.create_time_seconds()));
  }
  return absl::OkStatus();
}

absl::Status Describe(Client& client, const std::vector<std::string>& args) {
  absl::Status s = ExpectArgs("describe", args, 1, "ID");
  if (!s.ok()) return s;
  absl::StatusOr<v1::Session> session = client.GetSession(args[0]);
  if (!session.ok()) return session.status();
  PrintSession(*session);
  return absl::OkStatus();
}

absl::Status Delete(Client& client, const std::vector<std::string>& args) {
  absl::Status s = ExpectArgs("delete", args, 1, "ID");
  if (!s.ok()) return s;
  s = client.DeleteSession(args[0]);
  if (!s.ok()) return s;
  std::cout << "deleted " << args[0] << "\n";
  return absl::OkStatus();
}

absl::Status Pull(Client& client, const std::vector<std::string>& args) {
  absl::Status s = ExpectArgs("pull", args, 1, "ID [--out=DIR] [--names=a,b] [--dtype=f32]");
  if (!s.ok()) return s;
  absl::StatusOr<v1::DType> dtype = ParseDType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) return dtype.status();
  absl::StatusOr<PullResult> pulled = client.Pull(args[0], {absl::GetFlag(FLAGS_names), *dtype});
  if (!pulled.ok()) return pulled.status();

  const std::filesystem::path dir = absl::GetFlag(FLAGS_out);
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    return absl::Status(
        absl::ErrnoToStatusCode(error.value()),
        absl::StrCat("cannot create directory ", dir.string(), ": ", error.message()));
  }
  std::cout << "version: " << pulled->version << "\n";
  for (const HostTensor& tensor : pulled->tensors) {
    const std::string path = (dir / FileNameFor(tensor.name)).string();
    s = WriteNpy(path, tensor);
    if (!s.ok()) return s;
    std::cout << absl::StrFormat("%s [%s] -> %s\n", tensor.name, absl::StrJoin(tensor.shape, ", "),
                                 path);
  }
  return absl::OkStatus();
}

absl::Status StepOnce(Client& client, const CommandLine& command_line,
                      const std::vector<std::string>& args) {
  absl::Status s = ExpectArgs("step", args, 1, "ID [--grad=NAME:INIT ...] [--loss=X]");
  if (!s.ok()) return s;
  absl::StatusOr<v1::Session> session = client.GetSession(args[0]);
  if (!session.ok()) return session.status();

  // NAME:INIT, read from the right (names may contain ':').
  std::optional<Init> default_init;
  std::vector<std::pair<std::string, Init>> named;
  for (const std::string& spec : RepeatedFlag(command_line, "grad", absl::GetFlag(FLAGS_grad))) {
    const std::string what = absl::StrCat("--grad=", spec);
    const size_t colon = spec.rfind(':');
    if (colon == std::string::npos || colon == 0) {
      return UsageError(absl::StrCat(what, ": must be NAME:INIT or *:INIT, e.g. w:const=0.1"));
    }
    absl::StatusOr<Init> init = ParseInit(spec.substr(colon + 1), what);
    if (!init.ok()) return init.status();
    const std::string name = spec.substr(0, colon);
    if (name == "*") {
      default_init = *init;
      continue;
    }
    bool known = false;
    for (const v1::TensorInfo& t : session->tensors()) known = known || t.name() == name;
    if (!known) {
      std::vector<std::string> names;
      for (const v1::TensorInfo& t : session->tensors()) names.push_back(t.name());
      return UsageError(absl::StrCat(what, ": session ", args[0], " has no tensor '", name,
                                     "' (it has: ", absl::StrJoin(names, ", "), ")"));
    }
    named.emplace_back(name, *init);
  }
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
  std::vector<HostTensor> gradients;
  for (const v1::TensorInfo& t : session->tensors()) {
    Init init = default_init.value_or(Init{});
    for (const auto& [name, named_init] : named) {
      if (name == t.name()) init = named_init;
    }
    HostTensor g{t.name(), std::vector<int64_t>(t.shape().begin(), t.shape().end()), {}};
    absl::StatusOr<std::vector<float>> values =
        MakeValues(init, g.shape, absl::StrCat("gradient of '", t.name(), "'"), &rng);
    if (!values.ok()) return values.status();
    g.values = *std::move(values);
    gradients.push_back(std::move(g));
  }
  StepOptions options;
  options.worker_id = absl::GetFlag(FLAGS_worker);
  options.loss = absl::GetFlag(FLAGS_loss);
  options.return_parameters = v1::RETURN_PARAMETERS_NONE;
  absl::StatusOr<StepResult> result = client.Step(args[0], gradients, options);
  if (!result.ok()) return result.status();
  std::cout << "version:        " << result->version << "\n";
  std::cout << "gradient norm:  " << absl::StrFormat("%.9g", result->gradient_norm) << "\n";
  std::cout << "learning rate:  " << absl::StrFormat("%.9g", result->learning_rate) << "\n";
  return absl::OkStatus();
}

// Prints SERVING or NOT_SERVING and sets *serving; an RPC failure (e.g. NOT_FOUND for a service the
// server does not know) is returned instead.
absl::Status Health(Client& client, const std::vector<std::string>& args, bool* serving) {
  absl::Status s = ExpectArgs("health", args, 0, "");
  if (!s.ok()) return s;
  absl::StatusOr<bool> result = client.Health(absl::GetFlag(FLAGS_service));
  if (!result.ok()) return result.status();
  *serving = *result;
  std::cout << (*serving ? "SERVING" : "NOT_SERVING") << "\n";
  return absl::OkStatus();
}

int Fail(const absl::Status& status) {
  std::cerr << "optctl: " << absl::StatusCodeToString(status.code()) << ": " << status.message()
            << "\n";
  if (IsUsageError(status)) {
    std::cerr << "optctl: run 'optctl --help' for usage\n";
    return 2;
  }
  return 1;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() < 2) return Fail(UsageError("missing COMMAND"));
  const std::string command = positional[1];
  const std::vector<std::string> args(positional.begin() + 2, positional.end());
  if (command == "help") {
    std::cout << "optctl: " << absl::ProgramUsageMessage() << "\n";
    return 0;
  }

  ClientOptions options;
  options.timeout = absl::GetFlag(FLAGS_timeout);
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(absl::GetFlag(FLAGS_server), options);
  if (!client.ok()) return Fail(UsageError(client.status().message()));

  absl::Status status;
  bool serving = true;
  if (command == "create") {
    status = Create(**client, CommandLine{argc, argv}, args);
  } else if (command == "list") {
    status = List(**client, args);
  } else if (command == "describe") {
    status = Describe(**client, args);
  } else if (command == "delete") {
    status = Delete(**client, args);
  } else if (command == "pull") {
    status = Pull(**client, args);
  } else if (command == "step") {
    status = StepOnce(**client, CommandLine{argc, argv}, args);
  } else if (command == "health") {
    status = Health(**client, args, &serving);
  } else {
    status = UsageError(
        absl::StrCat("unknown command '", command,
                     "'; commands: create, list, describe, delete, pull, step, health, help"));
  }
  if (!status.ok()) return Fail(status);
  return serving ? 0 : 1;
}

}  // namespace
}  // namespace client
}  // namespace optd

int main(int argc, char** argv) { return optd::client::Main(argc, argv); }
