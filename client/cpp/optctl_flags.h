// File: optctl_flags.h
//
// optctl's session-configuration flags and their help: one flag per optimizer hyperparameter
// (--lr, --beta1, --amsgrad, --norm, ...; each applies to the optimizers whose message has a field
// of that name), --optimizer, --schedule=NAME[:KEY=VALUE,...], --max_norm / --clip_value and
// --consistency=MODE[:KEY=VALUE,...]. Everything is applied by field name through protobuf
// reflection over proto/optd/v1/optd.proto, so a hyperparameter the proto gains needs only its flag
// (optctl_flags_test checks every field of every optimizer and schedule has one, and a help entry).
//
// Also the command-line plumbing optctl's commands share: usage errors (exit status 2) and the
// raw argv scans absl's parsed values cannot answer (every value of a repeated flag; whether a
// boolean flag was written at all).
//
// Who may call it: optctl (optctl.cc) and its tests.
//
// Thread safety: reads absl flags and argv; call from the main thread after ParseCommandLine.
//
// Errors: UsageError (InvalidArgument with a payload) naming the flag, the value and the valid
// choices or range, e.g. "--momentum does not apply to adam (it takes: --lr, --beta1, ...)" or
// "--schedule=step:gamma=x: gamma needs a number".

#ifndef OPTD_CLIENT_CPP_OPTCTL_FLAGS_H_
#define OPTD_CLIENT_CPP_OPTCTL_FLAGS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"
#include "optd/v1/optd.pb.h"

namespace optd {
namespace client {
namespace optctl {

// An InvalidArgument marked as a usage error (optctl exits 2 for it, 1 for other failures).
absl::Status UsageError(absl::string_view message);
bool IsUsageError(const absl::Status& status);

// The raw command line, for what absl's parsed values cannot tell. Scans argv as absl reads it:
// "--name", "--name=V", "--name V" for flags that take a value, one or two dashes, nothing after
// "--".
struct CommandLine {
  int argc = 0;
  char** argv = nullptr;
};

// Every value of a repeatable flag (absl keeps only the last), each split at commas. Falls back to
// `parsed` when argv has none (e.g. the flag came from --flagfile).
std::vector<std::string> RepeatedFlag(const CommandLine& command_line, absl::string_view name,
                                      const std::vector<std::string>& parsed);

// Whether the boolean flag `name` was written (as --name, --name=V or --noname).
bool BoolFlagGiven(const CommandLine& command_line, absl::string_view name);

// Whether argv asks for help (--help, -h, --helpshort, --helpfull, before any "--").
bool HelpRequested(int argc, char** argv);

// An enum value's short name as flags spell it: NORM_PER_TENSOR -> per_tensor (the type's prefix
// dropped, lowercase); and every value of a type so, "global|per_tensor".
std::string ShortName(const google::protobuf::EnumValueDescriptor& value);
std::string EnumChoices(const google::protobuf::EnumDescriptor& type);

// The names of OptimizerConfig's oneof, in proto order ("sgd, adam, ...").
std::vector<std::string> OptimizerKinds();

// The optimizer message set in `config` (nullptr if none), and its kind's name ("(none)").
google::protobuf::Message* MutableOptimizer(v1::OptimizerConfig* config);
std::string OptimizerKind(const v1::OptimizerConfig& config);

// create: chooses the kind from --optimizer (clearing any message of that kind `config` held, e.g.
// from --config) and sets the hyperparameter flags given. Usage error without a kind, for an
// unknown kind, or for a flag the kind has no field for.
absl::Status ApplyOptimizerFlags(const CommandLine& command_line, v1::OptimizerConfig* config);

// update: sets the hyperparameter flags given on `optimizer` (a message of OptimizerConfig's oneof,
// e.g. an empty Adam); returns how many were set. Usage error for a flag it has no field for.
absl::StatusOr<int> ApplyHyperparameterFlags(const CommandLine& command_line,
                                             google::protobuf::Message* optimizer);

// "NAME[:KEY=VALUE,...]" -> a schedule (NAME one of LrSchedule's oneof: constant, step, ...).
// A repeated field takes several values: "multi_step:milestones=30,60,gamma=0.5".
absl::Status ParseSchedule(absl::string_view spec, v1::LrSchedule* schedule);

// "MODE[:KEY=VALUE,...]" -> a consistency (MODE async | sync | bounded; keys are Consistency's
// other fields: "sync:workers=3,barrier_timeout_seconds=10,worker_ids=a,b,c").
absl::Status ParseConsistency(absl::string_view spec, v1::Consistency* consistency);

// The flag --schedule, if given, parsed into `schedule` (replacing it); returns whether it was.
absl::StatusOr<bool> ApplyScheduleFlag(v1::LrSchedule* schedule);
// The flags --max_norm and --clip_value, if given, set on `clipping` (each replaces only its own
// field; a usage error if negative or not finite); returns whether either was.
absl::StatusOr<bool> ApplyClippingFlags(v1::Clipping* clipping);
// The flag --consistency, if given, parsed into `consistency`; returns whether it was.
absl::StatusOr<bool> ApplyConsistencyFlag(v1::Consistency* consistency);

// "--lr, --beta1, ..." for an optimizer kind ("adam"); "" for an unknown kind.
std::string HyperparameterFlags(absl::string_view kind);

// The fields of `message` that are set (or, without presence, not zero) as "key=value,..." in the
// syntax ParseSchedule reads; enums by their short lowercase names.
std::string FormatFields(const google::protobuf::Message& message);
// A schedule / consistency as the flag's spec ("cosine_annealing:t_max=100,eta_min=0").
std::string FormatSchedule(const v1::LrSchedule& schedule);
std::string FormatConsistency(const v1::Consistency& consistency);

// Whether optctl defines a flag of `field`'s name and type (optimizer fields; a test hook).
bool HasFlagFor(const google::protobuf::FieldDescriptor& field);

// optctl_help.cc: the help's sections on optimizers (each kind with its flags and defaults),
// schedules, clipping and consistency, generated from the descriptors; and what it says of one
// field beside its name (its default, or what to give; "" when the table lacks it).
std::string ConfigHelp();
std::string FieldHelp(const google::protobuf::FieldDescriptor& field);

}  // namespace optctl
}  // namespace client
}  // namespace optd

#endif  // OPTD_CLIENT_CPP_OPTCTL_FLAGS_H_
