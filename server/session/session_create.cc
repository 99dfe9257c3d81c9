// Session::Create and Session::Restore: the two ways a session comes to be, from a client's
// initial tensors or from a SessionState (session_state.h). Both validate everything before
// anything is built.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/quote.h"
#include "server/optim/grouped_optimizer.h"
#include "server/session/session.h"

namespace optd {
namespace {

// The session's optimizer: `config.optimizer` over every tensor, or with parameter groups one
// optimizer per group (GroupedOptimizer), the tensors named by `names` (in the session's order).
absl::StatusOr<std::unique_ptr<Optimizer>> MakeOptimizer(const SessionConfig& config,
                                                         const std::vector<std::string>& names,
                                                         const TensorShapes& shapes) {
  if (config.param_groups.empty()) return CreateOptimizerForShapes(config.optimizer, shapes);
  absl::flat_hash_map<absl::string_view, size_t> index;
  for (size_t i = 0; i < names.size(); ++i) index[names[i]] = i;
  std::vector<int> owner(names.size(), -1);
  std::vector<ParamGroupSpec> groups(config.param_groups.size() + 1);
  groups[0].options = config.optimizer;
  for (size_t g = 0; g < config.param_groups.size(); ++g) {
    const ParamGroupConfig& group = config.param_groups[g];
    const std::string field = absl::StrCat("config.param_groups[", g, "]");
    if (group.tensors.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".tensors is empty: a parameter group needs at least one tensor"));
    }
    groups[g + 1].options = group.optimizer;
    for (size_t k = 0; k < group.tensors.size(); ++k) {
      const std::string& name = group.tensors[k];
      auto it = index.find(name);
      if (it == index.end()) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".tensors[", k, "] ", Quote(name),
                                                       " is not one of the session's tensors"));
      }
      if (owner[it->second] >= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ".tensors[", k, "] ", Quote(name), " is already in ",
                         owner[it->second] == static_cast<int>(g)
                             ? std::string("this group")
                             : absl::StrCat("config.param_groups[", owner[it->second], "]"),
                         "; a tensor is in one group only"));
      }
      owner[it->second] = static_cast<int>(g);
      groups[g + 1].tensors.push_back(it->second);
    }
  }
  for (size_t t = 0; t < names.size(); ++t) {
    if (owner[t] < 0) groups[0].tensors.push_back(t);
  }
  absl::StatusOr<std::unique_ptr<Optimizer>> optimizer =
      CreateGroupedOptimizer(std::move(groups), shapes);
  if (!optimizer.ok() && absl::StartsWith(optimizer.status().message(), "param_groups")) {
    return absl::InvalidArgumentError(absl::StrCat("config.", optimizer.status().message()));
  }
  return optimizer;
}

}  // namespace

absl::StatusOr<std::shared_ptr<Session>> Session::Create(std::string id, SessionConfig config,
                                                         absl::Span<const WireTensorView> tensors,
                                                         const SessionEnv& env) {
  if (absl::Status s = ValidateSessionId(id); !s.ok()) return s;
  if (absl::Status s = config.consistency.Validate(); !s.ok()) return s;
  if (config.consistency.mode == ConsistencyOptions::Mode::kSync && env.scheduler == nullptr) {
    return absl::InternalError("a SYNC session needs a DeadlineScheduler");
  }
  if (tensors.empty() || tensors.size() > kMaxTensorsPerSession) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensors has ", tensors.size(), " entries; must be 1 to ", kMaxTensorsPerSession));
  }
  // First the names and shapes (nothing is decoded before the memory is reserved).
  std::vector<TensorSpec> specs;
  TensorShapes shapes;  // Muon and Adafactor treat matrices apart
  absl::flat_hash_set<absl::string_view> names;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const WireTensorView& t = tensors[i];
    const std::string field = absl::StrCat("tensors[", i, "]");
    if (absl::Status s = ValidateTensorName(field, t.name); !s.ok()) return s;
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".name ", Quote(t.name), " is repeated; names must be unique"));
    }
    absl::StatusOr<int64_t> n = ValidateShape(field, t.shape);
    if (!n.ok()) return n.status();
    if (t.has_rows) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, " ", Quote(t.name), " has rows; initial values must be dense"));
    }
    if (absl::Status s = CheckEncodedSize(field, t.dtype, t.data.size(t.dtype), *n); !s.ok()) {
      return s;
    }
    specs.push_back(
        {std::string(t.name), std::vector<int64_t>(t.shape.begin(), t.shape.end()), *n});
    shapes.emplace_back(t.shape.begin(), t.shape.end());
  }
  std::vector<std::string> tensor_names;
  for (const TensorSpec& spec : specs) tensor_names.push_back(spec.name);
  absl::StatusOr<std::unique_ptr<Optimizer>> optimizer =
      MakeOptimizer(config, tensor_names, shapes);
  if (!optimizer.ok()) return optimizer.status();
  absl::StatusOr<LrSchedule> schedule =
      LrSchedule::Create(config.schedule, BaseLearningRate(config.optimizer));
  if (!schedule.ok()) return schedule.status();
  if (absl::Status s = config.clipping.Validate(); !s.ok()) return s;
  TensorSpecs table(std::move(specs));
  if (config.placement.has_value()) {
    if (!config.param_groups.empty()) {
      return absl::FailedPreconditionError(
          "config.param_groups: a shard of a sharded session (config.placement) has no parameter "
          "groups yet; give each group its own session, or use one server");
    }
    if (absl::Status s = CheckShard(*config.placement, config.optimizer, config.clipping, table);
        !s.ok()) {
      return s;
    }
  }
  int64_t parameter_bytes = 0;
  absl::StatusOr<MemoryReservation> memory =
      ReserveMemory(id, table, **optimizer, env, &parameter_bytes);
  if (!memory.ok()) return memory.status();

  // Then the values.
  std::vector<std::vector<float>> values(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const WireTensorView& t = tensors[i];
    const std::string field = absl::StrCat("tensors[", i, "]");
    std::string scratch;
    if (absl::Status s =
            DecodeFloats(field, t.dtype, t.data.View(0, t.data.size(t.dtype), &scratch),
                         table[i].num_elements, &values[i]);
        !s.ok()) {
      return s;
    }
    if (int64_t bad = FirstNonFinite(values[i]); bad >= 0) {
      return NonFiniteError(field, t.name, bad, values[i][bad]);
    }
  }
  ParameterBuffers parameters(std::move(values), memory->Split(parameter_bytes), env.budget);
  return std::shared_ptr<Session>(new Session(
      std::move(id), std::move(table), std::move(parameters), *std::move(memory),
      *std::move(optimizer), *std::move(schedule), std::move(config), env.clock->Now(), env));
}

absl::StatusOr<MemoryReservation> Session::ReserveMemory(const std::string& id,
                                                         const TensorSpecs& specs,
                                                         const Optimizer& optimizer,
                                                         const SessionEnv& env,
                                                         int64_t* parameter_bytes) {
  const int64_t n = specs.num_elements();
  if (env.max_parameters > 0 && n > env.max_parameters) {
    return absl::ResourceExhaustedError(
        absl::StrCat("session ", id, " would hold ", n, " parameters; a session may hold at most ",
                     env.max_parameters, " (--max_session_parameters)"));
  }
  *parameter_bytes = n * static_cast<int64_t>(sizeof(float));
  return env.budget->Reserve(
      *parameter_bytes + n * optimizer.StateBytesPerElement(),
      absl::StrCat("session ", id, " (", n, " parameters and ", optimizer.StateBytesPerElement(),
                   " bytes of optimizer state per parameter)"));
}

absl::StatusOr<std::shared_ptr<Session>> Session::Restore(SessionState state,
                                                          const SessionEnv& env) {
  if (absl::Status s = ValidateSessionId(state.id); !s.ok()) return s;
  const SessionConfig& config = state.config;
  if (absl::Status s = config.consistency.Validate(); !s.ok()) return s;
  if (config.consistency.mode == ConsistencyOptions::Mode::kSync && env.scheduler == nullptr) {
    return absl::InternalError("a SYNC session needs a DeadlineScheduler");
  }
  if (absl::Status s = config.clipping.Validate(); !s.ok()) return s;
  if (state.tensors.empty() || state.tensors.size() > kMaxTensorsPerSession) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensors has ", state.tensors.size(), " entries; must be 1 to ", kMaxTensorsPerSession));
  }
  if (state.parameters.size() != state.tensors.size()) {
    return absl::InvalidArgumentError(absl::StrCat("parameters has ", state.parameters.size(),
                                                   " tensors; the session has ",
                                                   state.tensors.size()));
  }
  TensorShapes shapes;  // Muon and Adafactor treat matrices apart
  absl::flat_hash_set<absl::string_view> names;
  for (size_t i = 0; i < state.tensors.size(); ++i) {
    const TensorSpec& t = state.tensors[i];
    const std::string field = absl::StrCat("tensors[", i, "]");
    if (absl::Status s = ValidateTensorName(field, t.name); !s.ok()) return s;
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".name ", Quote(t.name), " is repeated; names must be unique"));
    }
    absl::StatusOr<int64_t> n = ValidateShape(field, t.shape);
    if (!n.ok()) return n.status();
    if (*n != t.num_elements || state.parameters[i] == nullptr ||
        static_cast<int64_t>(state.parameters[i]->size()) != *n) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameters of ", field, " ", Quote(t.name), " have ",
                       state.parameters[i] == nullptr ? 0 : state.parameters[i]->size(),
                       " values; its shape ", ShapeString(t.shape), " has ", *n));
    }
    shapes.emplace_back(t.shape.begin(), t.shape.end());
  }
  if (state.version < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("version = ", state.version, " is out of range: must be >= 0"));
  }
  std::vector<std::string> tensor_names;
  for (const TensorSpec& spec : state.tensors) tensor_names.push_back(spec.name);
  absl::StatusOr<std::unique_ptr<Optimizer>> optimizer =
      MakeOptimizer(config, tensor_names, shapes);
  if (!optimizer.ok()) return optimizer.status();
  absl::StatusOr<LrSchedule> schedule =
      LrSchedule::Create(config.schedule, BaseLearningRate(config.optimizer));
  if (!schedule.ok()) return schedule.status();
  if (absl::Status s = schedule->RestoreState(state.schedule); !s.ok()) return s;
  TensorSpecs table(std::move(state.tensors));
  if (config.placement.has_value()) {
    if (!config.param_groups.empty()) {
      return absl::FailedPreconditionError(
          "config.param_groups: a shard of a sharded session (config.placement) has no parameter "
          "groups yet; give each group its own session, or use one server");
    }
    if (absl::Status s = CheckShard(*config.placement, config.optimizer, config.clipping, table);
        !s.ok()) {
      return s;
    }
  }
  int64_t parameter_bytes = 0;
  absl::StatusOr<MemoryReservation> memory =
      ReserveMemory(state.id, table, **optimizer, env, &parameter_bytes);
  if (!memory.ok()) return memory.status();
  if (absl::Status s = (*optimizer)->ImportState(state.optimizer); !s.ok()) return s;
  // The session's own copy of the parameters: the state's may be shared with others.
  std::vector<std::vector<float>> values;
  values.reserve(state.parameters.size());
  for (const SharedFloats& p : state.parameters) values.emplace_back(p->begin(), p->end());
  ParameterBuffers parameters(std::move(values), memory->Split(parameter_bytes), env.budget);
  std::shared_ptr<Session> session(
      new Session(std::move(state.id), std::move(table), std::move(parameters), *std::move(memory),
                  *std::move(optimizer), *std::move(schedule), config, state.create_time, env));
  {
    absl::MutexLock lock(&session->mu_);
    session->version_ = state.version;
    session->restored_ = true;
    session->exactly_once_ =
        ExactlyOnceTable::Import(std::move(state.exactly_once), env.exactly_once);
    session->exactly_once_.SkipIncarnationsTo(ExactlyOnceTable::IncarnationFloor(env.clock->Now()));
    session->barrier_.set_known_workers(std::move(state.sync_workers_seen));
  }
  return session;
}

}  // namespace optd
