// optctl: the command-line client of an optd server. Creates (also from checkpoints), lists,
// describes, updates, checkpoints and deletes sessions, pulls parameters into NumPy .npy files,
// steps a session with synthetic gradients and checks health. `optctl --help` lists the commands,
// every optimizer with its hyperparameter flags, every schedule with its options, clipping and
// consistency.
//
// Exit status: 0 on success (and for --help and --version); 1 when an RPC or a file operation
// fails, or health is not SERVING; 2 for a usage error found by optctl (absl's own flag-syntax
// errors, e.g. --lr=abc, exit 1). Every failure prints one line `optctl: <CODE>: <message>` to
// stderr naming what was wrong (the flag, its value, the valid choices or range).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/cpp/client.h"
#include "client/cpp/host_tensor.h"
#include "client/cpp/npy.h"
#include "client/cpp/optctl_flags.h"
#include "client/cpp/optctl_print.h"
#include "client/cpp/optctl_values.h"
#include "client/cpp/security_flags.h"
#include "client/cpp/worker.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "optd/v1/optd.pb.h"

// Global.
ABSL_FLAG(std::string, server, "127.0.0.1:50051", "optd server address, host:port");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(30), "deadline of each RPC, e.g. 30s, 500ms");
ABSL_FLAG(int, attempts, 3,
          "tries of a read or a keyed step while the server is unreachable (0.1 s apart, doubling "
          "to 2 s); 10, the client library's default, waits about 11 s for a restarting server");

// create (the optimizer, schedule, clipping and consistency flags are optctl_flags.cc's).
ABSL_FLAG(std::string, session, "", "create: session id (default: the server generates one)");
ABSL_FLAG(std::vector<std::string>, tensor, {},
          "create: NAME:DIMS[:INIT], repeatable or comma-separated; DIMS is D1xD2x... or scalar");
ABSL_FLAG(std::string, config, "",
          "create: file holding a CreateSessionRequest, as JSON (*.json) or textproto; tensors "
          "given with a shape and no data are initialised with --init");
ABSL_FLAG(std::string, init, "zeros", "create --config: INIT of tensors given without data");
ABSL_FLAG(std::string, from_checkpoint, "",
          "create: start from this checkpoint file on the server (optctl checkpoint prints it)");
ABSL_FLAG(std::string, from_session, "",
          "create: start from this session's newest checkpoint (a fork)");
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
ABSL_FLAG(int64_t, sequence, 0,
          "step: sequence number (idempotency key) of an unjoined worker; resending one that was "
          "applied is answered as a duplicate and not applied again. 0: the worker joins the "
          "session (a new incarnation) and sends sequence 1");

// The optimizer, hyperparameter, schedule, clipping and consistency flags: optctl_flags.cc.
ABSL_DECLARE_FLAG(std::string, optimizer);

// health.
ABSL_FLAG(std::string, service, "", "health: service to check (\"\": the whole server)");

#ifndef OPTD_VERSION
#define OPTD_VERSION "unknown"
#endif
#ifndef OPTD_BUILD_TYPE
#define OPTD_BUILD_TYPE "unknown build type"
#endif

namespace optd {
namespace client {
namespace optctl {
namespace {

constexpr char kUsage[] = R"(command-line client of an optd server.

Usage: optctl [--server=HOST:PORT] [--timeout=30s] [--attempts=3] [--tls_ca=PEM]
              [--tls_cert=PEM --tls_key=PEM] [--token=TOKEN] COMMAND [ARGS] [FLAGS]

Commands:
  create    --optimizer=NAME [hyperparameter flags] --tensor=NAME:DIMS[:INIT] ... [--session=ID]
            [--schedule=SPEC] [--max_norm=X] [--clip_value=X] [--consistency=SPEC]
            create --config=FILE [--init=INIT] [--session=ID] [any flag above]
            Creates a session and prints it. Only the hyperparameters given are sent; the rest
            take torch 1.13's defaults. FILE is a CreateSessionRequest in JSON (*.json) or
            textproto; its tensors may omit data.
            create (--from_checkpoint=PATH | --from_session=ID) [--session=ID]
            [--optimizer=NAME hyperparameter flags] [--schedule=SPEC] [--max_norm=X] ...
            Creates a session from a checkpoint (a fork): its parameters, optimizer state,
            schedule state and version. PATH is a checkpoint file on the server; ID names the
            session whose newest checkpoint to use. --optimizer (the checkpoint's kind) with
            hyperparameter flags replaces its hyperparameters, e.g. another --lr. Needs a server
            run with --checkpoint_dir.
  update    ID [hyperparameter flags] [--schedule=SPEC] [--max_norm=X] [--clip_value=X]
            Changes the session's hyperparameters (of its own optimizer), schedule (it continues
            at the current step) or clipping for the next step, keeping the optimizer state and
            the version, and prints the session.
  list      Lists every session.
  describe  ID: prints one session (with its durable version: the newest checkpointed).
  checkpoint ID: writes a checkpoint of the session now; prints its version, path and bytes.
            Needs a server run with --checkpoint_dir.
  delete    ID: deletes a session.
  pull      ID [--out=DIR] [--names=a,b] [--dtype=f32|bf16|f16]
            Writes one NumPy .npy file (float32, C order) per tensor into DIR.
  step      ID [--grad=NAME:INIT ...] [--grad=*:INIT] [--loss=X] [--worker=W] [--sequence=N]
            Applies one step with synthetic gradients (unnamed tensors: zeros), keyed by the
            worker id and a sequence number (so it is retried safely) and computed at the
            session's current version.
  health    [--service=NAME]: prints the health status; exit 0 only if SERVING.
  help      This text (also --help, -h).

DIMS is D1xD2x... (e.g. 784x10) or 'scalar'. INIT is zeros | ones | const=V | uniform=A
(U(-A, A)) | normal=S (N(0, S^2)), seeded by --seed.

)";

constexpr char kUsageEnd[] = R"(
Exit status: 0 success; 1 RPC or file failure, or health not SERVING; 2 usage error.
Examples:
  optctl create --session=demo --optimizer=adam --lr=0.01 --tensor=w:784x10:normal=0.01,b:10
  optctl create --session=cos --optimizer=sgd --lr=0.1 --momentum=0.9 --tensor=w:8 \
      --schedule=cosine_annealing:t_max=1000 --max_norm=1
  optctl update demo --lr=0.001 --beta2=0.99 --schedule=step:step_size=100,gamma=0.5
  optctl pull demo --out=/tmp/demo
  optctl checkpoint demo
  OPTD_TOKEN=... optctl --server=optd.example:50051 --tls_ca=ca.pem list
  optctl create --session=demo-slow --from_session=demo --optimizer=adam --lr=0.001
)";

std::string Help() {
  return absl::StrCat(kUsage, ConfigHelp(), "\n", kSecurityFlagsHelp, kUsageEnd);
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

// create --from_checkpoint=PATH | --from_session=ID: a session forked from a checkpoint.
absl::Status CreateFromCheckpoint(Client& client, const CommandLine& command_line) {
  CheckpointSource from{absl::GetFlag(FLAGS_from_checkpoint), absl::GetFlag(FLAGS_from_session)};
  if (!from.path.empty() && !from.session_id.empty()) {
    return UsageError("give one of --from_checkpoint and --from_session, not both");
  }
  if (!absl::GetFlag(FLAGS_tensor).empty() || !absl::GetFlag(FLAGS_config).empty()) {
    return UsageError(
        "--tensor and --config do not go with --from_checkpoint / --from_session: the "
        "checkpoint holds the tensors");
  }
  v1::SessionConfig config;
  bool given = false;
  if (!absl::GetFlag(FLAGS_optimizer).empty()) {
    if (absl::Status s = ApplyOptimizerFlags(command_line, config.mutable_optimizer()); !s.ok()) {
      return s;
    }
    given = true;
  } else {
    // Hyperparameter flags need the optimizer kind: any of them given (counted, or refused as not
    // applying to this probe's kind) without --optimizer is an error, not silently dropped.
    v1::Sgd probe;
    absl::StatusOr<int> count = ApplyHyperparameterFlags(command_line, &probe);
    if (!count.ok() || *count > 0) {
      return UsageError(
          "hyperparameter flags with --from_checkpoint / --from_session need --optimizer=NAME "
          "(the checkpoint's optimizer)");
    }
  }
  absl::StatusOr<bool> schedule = ApplyScheduleFlag(config.mutable_schedule());
  if (!schedule.ok()) return schedule.status();
  absl::StatusOr<bool> clipping = ApplyClippingFlags(config.mutable_clipping());
  if (!clipping.ok()) return clipping.status();
  absl::StatusOr<bool> consistency = ApplyConsistencyFlag(config.mutable_consistency());
  if (!consistency.ok()) return consistency.status();
  given = given || *schedule || *clipping || *consistency;
  absl::StatusOr<v1::Session> session = client.CreateSessionFromCheckpoint(
      absl::GetFlag(FLAGS_session), from,
      given ? std::optional<v1::SessionConfig>(config) : std::nullopt);
  if (!session.ok()) return session.status();
  PrintSession(*session);
  return absl::OkStatus();
}

absl::Status Create(Client& client, const CommandLine& command_line,
                    const std::vector<std::string>& args) {
  absl::Status s = ExpectArgs("create", args, 0, "");
  if (!s.ok()) return s;
  if (!absl::GetFlag(FLAGS_from_checkpoint).empty() || !absl::GetFlag(FLAGS_from_session).empty()) {
    return CreateFromCheckpoint(client, command_line);
  }
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
  v1::SessionConfig* config = request.mutable_config();
  s = ApplyOptimizerFlags(command_line, config->mutable_optimizer());
  if (!s.ok()) return s;
  if (absl::StatusOr<bool> given = ApplyScheduleFlag(config->mutable_schedule()); !given.ok()) {
    return given.status();
  }
  if (absl::StatusOr<bool> given = ApplyClippingFlags(config->mutable_clipping()); !given.ok()) {
    return given.status();
  }
  if (absl::StatusOr<bool> given = ApplyConsistencyFlag(config->mutable_consistency());
      !given.ok()) {
    return given.status();
  }
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
  PrintSessionList(*sessions);
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

absl::Status CheckpointNow(Client& client, const std::vector<std::string>& args) {
  absl::Status s = ExpectArgs("checkpoint", args, 1, "ID");
  if (!s.ok()) return s;
  absl::StatusOr<CheckpointResult> checkpoint = client.Checkpoint(args[0]);
  if (!checkpoint.ok()) return checkpoint.status();
  std::cout << "checkpoint:   " << args[0] << "\n";
  std::cout << "version:      " << checkpoint->version << "\n";
  std::cout << "path:         " << checkpoint->path << "\n";
  std::cout << "bytes:        " << checkpoint->bytes << "\n";
  return absl::OkStatus();
}

absl::Status Update(Client& client, const CommandLine& command_line,
                    const std::vector<std::string>& args) {
  absl::Status s = ExpectArgs("update", args, 1,
                              "ID [--lr=X ...] [--schedule=SPEC] [--max_norm=X] [--clip_value=X]");
  if (!s.ok()) return s;
  v1::Consistency unused;
  if (absl::StatusOr<bool> given = ApplyConsistencyFlag(&unused); !given.ok() || *given) {
    return UsageError(
        "--consistency: a session's consistency is fixed when it is created; update changes "
        "hyperparameters, --schedule, --max_norm and --clip_value");
  }
  absl::StatusOr<v1::Session> session = client.GetSession(args[0]);
  if (!session.ok()) return session.status();
  const std::string kind = OptimizerKind(session->config().optimizer());
  const std::string asked = absl::GetFlag(FLAGS_optimizer);
  if (!asked.empty() && asked != kind) {
    return UsageError(absl::StrCat("--optimizer=", asked, ": session ", args[0], " runs ", kind,
                                   "; update keeps the optimizer (create a new session to change "
                                   "it), so give ",
                                   kind, "'s flags or no --optimizer"));
  }

  // An empty message of the session's kind, then the flags given: only they change.
  v1::UpdateSessionRequest request;
  request.set_session_id(args[0]);
  *request.mutable_optimizer() = session->config().optimizer();
  google::protobuf::Message* optimizer = MutableOptimizer(request.mutable_optimizer());
  if (optimizer == nullptr) {
    return absl::InternalError(absl::StrCat("session ", args[0], " reports no optimizer"));
  }
  optimizer->Clear();
  absl::StatusOr<int> hyperparameters = ApplyHyperparameterFlags(command_line, optimizer);
  if (!hyperparameters.ok()) return hyperparameters.status();
  if (*hyperparameters == 0) request.clear_optimizer();
  absl::StatusOr<bool> schedule = ApplyScheduleFlag(request.mutable_schedule());
  if (!schedule.ok()) return schedule.status();
  if (!*schedule) request.clear_schedule();
  // The session's clipping with the flags given replacing their own field.
  *request.mutable_clipping() = session->config().clipping();
  absl::StatusOr<bool> clipping = ApplyClippingFlags(request.mutable_clipping());
  if (!clipping.ok()) return clipping.status();
  if (!*clipping) request.clear_clipping();
  if (*hyperparameters == 0 && !*schedule && !*clipping) {
    return UsageError(absl::StrCat("update ", args[0], ": nothing to change; give ", kind,
                                   "'s hyperparameters (", HyperparameterFlags(kind),
                                   "), --schedule=SPEC, --max_norm=X or --clip_value=X"));
  }
  absl::StatusOr<v1::Session> updated = client.UpdateSession(request);
  if (!updated.ok()) return updated.status();
  PrintSession(*updated);
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
  absl::StatusOr<v1::DType> dtype = ParseDType(absl::GetFlag(FLAGS_dtype), "--dtype");
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
  // A keyed step at the session's version: retried safely, and accepted by SYNC and BOUNDED
  // sessions. Without --sequence the worker joins (each optctl run is a new incarnation).
  if (absl::GetFlag(FLAGS_sequence) < 0) {
    return UsageError(absl::StrCat("--sequence=", absl::GetFlag(FLAGS_sequence),
                                   ": must be >= 0 (0: join the session and send sequence 1)"));
  }
  WorkerOptions worker;
  worker.worker_id = absl::GetFlag(FLAGS_worker);
  worker.first_sequence = absl::GetFlag(FLAGS_sequence);
  worker.version = session->version();
  Worker stepper(&client, args[0], worker);
  StepOptions options;
  options.loss = absl::GetFlag(FLAGS_loss);
  options.return_parameters = v1::RETURN_PARAMETERS_NONE;
  absl::StatusOr<StepResult> result = stepper.Step(gradients, options);
  if (!result.ok()) return result.status();
  std::cout << "version:        " << result->version << "\n";
  std::cout << "duplicate:      " << (result->duplicate ? "true" : "false") << "\n";
  std::cout << "staleness:      " << result->staleness << "\n";
  std::cout << "worker:         " << stepper.worker_id();
  if (result->worker_incarnation > 0) std::cout << " incarnation " << result->worker_incarnation;
  std::cout << " sequence " << result->sequence << "\n";
  std::cout << "gradient norm:  " << absl::StrFormat("%.9g", result->gradient_norm) << "\n";
  std::cout << "learning rate:  " << absl::StrFormat("%.9g", result->learning_rate) << "\n";
  if (!result->estimates.empty()) {
    std::vector<std::string> pairs;
    for (const auto& [name, value] : result->estimates) {
      pairs.push_back(absl::StrFormat("%s=%.9g", name, value));
    }
    std::cout << "estimates:      " << absl::StrJoin(pairs, " ") << "\n";
  }
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
  absl::SetProgramUsageMessage("command-line client of an optd server; run optctl --help");
  absl::FlagsUsageConfig usage;
  usage.version_string = [] {
    return std::string("optctl " OPTD_VERSION " (" OPTD_BUILD_TYPE ")\n");
  };
  absl::SetFlagsUsageConfig(usage);
  // Our own help (every optimizer and schedule), on stdout with status 0, before absl's.
  if (HelpRequested(argc, argv)) {
    std::cout << "optctl: " << Help();
    return 0;
  }
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() < 2) return Fail(UsageError("missing COMMAND (run optctl --help)"));
  const std::string command = positional[1];
  const std::vector<std::string> args(positional.begin() + 2, positional.end());
  if (command == "help") {
    std::cout << "optctl: " << Help();
    return 0;
  }

  ClientOptions options;
  options.timeout = absl::GetFlag(FLAGS_timeout);
  if (options.timeout <= absl::ZeroDuration()) {
    return Fail(UsageError(absl::StrCat("--timeout=", absl::FormatDuration(options.timeout),
                                        ": must be > 0, e.g. 30s or 500ms")));
  }
  options.retry.max_attempts = absl::GetFlag(FLAGS_attempts);
  if (options.retry.max_attempts < 1) {
    return Fail(UsageError(
        absl::StrCat("--attempts=", options.retry.max_attempts, ": must be >= 1 (1: no retry)")));
  }
  ApplySecurityFlags(&options);
  if (absl::GetFlag(FLAGS_server).empty()) {
    return Fail(UsageError("--server is empty; want HOST:PORT, e.g. 127.0.0.1:50051"));
  }
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(absl::GetFlag(FLAGS_server), options);
  if (!client.ok()) return Fail(UsageError(client.status().message()));

  absl::Status status;
  bool serving = true;
  const CommandLine command_line{argc, argv};
  if (command == "create") {
    status = Create(**client, command_line, args);
  } else if (command == "update") {
    status = Update(**client, command_line, args);
  } else if (command == "list") {
    status = List(**client, args);
  } else if (command == "describe") {
    status = Describe(**client, args);
  } else if (command == "checkpoint") {
    status = CheckpointNow(**client, args);
  } else if (command == "delete") {
    status = Delete(**client, args);
  } else if (command == "pull") {
    status = Pull(**client, args);
  } else if (command == "step") {
    status = StepOnce(**client, command_line, args);
  } else if (command == "health") {
    status = Health(**client, args, &serving);
  } else {
    status = UsageError(absl::StrCat(
        "unknown command '", command,
        "'; commands: create, update, list, describe, checkpoint, delete, pull, step, health, "
        "help"));
  }
  if (!status.ok()) return Fail(status);
  return serving ? 0 : 1;
}

}  // namespace
}  // namespace optctl
}  // namespace client
}  // namespace optd

int main(int argc, char** argv) { return optd::client::optctl::Main(argc, argv); }
