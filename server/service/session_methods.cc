// The unary session methods of OptimizerServiceImpl (optimizer_service.h): create (and fork),
// get, list, update, delete, pull, join and checkpoint, each for the caller's tenant; the reactors,
// Step and StreamSteps are in optimizer_service.cc.

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/service/optimizer_service.h"
#include "server/service/proto_convert.h"

namespace optd {
namespace {

// Saturating (at 2^62) arithmetic for the size of a session not yet validated.
constexpr int64_t kHuge = int64_t{1} << 62;
int64_t SaturatedAdd(int64_t a, int64_t b) { return a > kHuge - b ? kHuge : a + b; }

int64_t ElementsOf(absl::Span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n = (d <= 0) ? 0 : (n > kHuge / d ? kHuge : n * d);
  return n;
}

// What a session of `elements` parameters holds with `optimizer`: parameters and optimizer state.
absl::StatusOr<int64_t> SessionBytes(const OptimizerOptions& optimizer, int64_t elements) {
  absl::StatusOr<std::unique_ptr<Optimizer>> probe = CreateOptimizer(optimizer, {1});
  if (!probe.ok()) return probe.status();
  const int64_t per_element = 4 + (*probe)->StateBytesPerElement();
  return elements > kHuge / per_element ? kHuge : elements * per_element;
}

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;

}  // namespace

absl::Status OptimizerServiceImpl::DoCreateSession(const Caller& caller,
                                                   const v1::CreateSessionRequest& request,
                                                   v1::Session* response) {
  const absl::Status status = Create(caller, request, response);
  AuditCall(options_.audit, "session.create", caller, Action::kCreateSession,
            status.ok() ? absl::string_view(response->session_id())
                        : absl::string_view(request.session_id()),
            status);
  return status;
}

absl::Status OptimizerServiceImpl::Create(const Caller& caller,
                                          const v1::CreateSessionRequest& request,
                                          v1::Session* response) {
  if (!request.from_checkpoint().empty() || !request.from_session_checkpoint().empty()) {
    return DoFork(caller, request, response);
  }
  std::string id;
  if (!request.session_id().empty()) {
    absl::StatusOr<std::string> stored = StoredSessionId(caller.who, request.session_id());
    if (!stored.ok()) return stored.status();
    if (absl::Status s = ValidateSessionId(*stored); !s.ok()) return s;
    id = *std::move(stored);
  } else if (!caller.who.tenant.empty()) {
    // The store generates ids without a tenant: a tenant's is generated here, in the same form.
    id = QualifiedSessionId(caller.who.tenant,
                            absl::StrFormat("s-%016x", absl::Uniform<uint64_t>(absl::BitGen())));
  }
  absl::StatusOr<SessionConfig> config = ConfigFromProto(request.config());
  if (!config.ok()) return config.status();
  absl::StatusOr<std::vector<WireTensorView>> tensors = ViewsOf("tensors", request.tensors());
  if (!tensors.ok()) return tensors.status();
  std::optional<absl::MutexLock> quota_lock;
  if (access_->enabled()) {
    quota_lock.emplace(&create_mu_);
    int64_t elements = 0;
    for (const WireTensorView& t : *tensors) elements = SaturatedAdd(elements, ElementsOf(t.shape));
    absl::StatusOr<int64_t> new_bytes = SessionBytes(config->optimizer, elements);
    if (!new_bytes.ok()) return new_bytes.status();
    if (absl::Status s = CheckQuota(caller, *new_bytes); !s.ok()) return s;
  }
  absl::StatusOr<std::shared_ptr<Session>> session =
      store_->Create(std::move(id), *std::move(config), *tensors);
  if (!session.ok()) return session.status();
  CheckpointNew(**session);
  Describe(caller, **session, response);
  return absl::OkStatus();
}

void OptimizerServiceImpl::CheckpointNew(const Session& session) {
  // A failure (a full disk) is logged and counted by the checkpointer; the session is created all
  // the same, and its reply's durable_version (-1) says it is not durable yet.
  if (options_.checkpointer != nullptr) {
    options_.checkpointer->Checkpoint(session, CheckpointReason::kCreate).IgnoreError();
  }
}

absl::Status OptimizerServiceImpl::DoGetSession(const Caller& caller,
                                                const v1::GetSessionRequest& request,
                                                v1::Session* response) {
  absl::StatusOr<std::shared_ptr<Session>> session = Find(caller, request.session_id());
  if (!session.ok()) return session.status();
  Describe(caller, **session, response);
  return absl::OkStatus();
}

absl::Status OptimizerServiceImpl::DoListSessions(const Caller& caller,
                                                  const v1::ListSessionsRequest& request,
                                                  v1::ListSessionsResponse* response) {
  if (request.page_size() < 0 || request.page_size() > kMaxPageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size = ", request.page_size(), " is out of range: must be in [0, ",
                     kMaxPageSize, "] (0 means ", kDefaultPageSize, ")"));
  }
  const int page_size = request.page_size() == 0 ? kDefaultPageSize : request.page_size();
  // A tenant lists its own sessions (their ids share the prefix "tenant:", so they are
  // consecutive in id order); an admin and the anonymous caller list every session.
  const bool own_only = !caller.who.tenant.empty() && caller.who.role != Role::kAdmin;
  const std::string prefix = own_only ? QualifiedSessionId(caller.who.tenant, "") : "";
  std::string start_after = request.page_token();
  if (own_only) {
    absl::StatusOr<std::string> stored = StoredSessionId(caller.who, request.page_token());
    if (!stored.ok()) return stored.status();
    start_after = *std::move(stored);
  }
  // One extra tells whether another page follows.
  std::vector<std::shared_ptr<Session>> sessions = store_->List(start_after, page_size + 1);
  if (own_only) {
    auto other = std::find_if(sessions.begin(), sessions.end(), [&](const auto& session) {
      return !absl::StartsWith(session->id(), prefix);
    });
    sessions.erase(other, sessions.end());
  }
  bool more = static_cast<int>(sessions.size()) > page_size;
  if (more) sessions.pop_back();
  // A page ends early, with a page token, rather than outgrow the reply limit.
  size_t bytes = 0;
  for (size_t i = 0; i < sessions.size(); ++i) {
    v1::Session described;
    Describe(caller, *sessions[i], &described);
    bytes += described.ByteSizeLong() + 16;
    if (i > 0 && bytes + 1024 > static_cast<size_t>(options_.max_reply_bytes)) {
      sessions.resize(i);
      more = true;
      break;
    }
    *response->add_sessions() = std::move(described);
  }
  if (more) response->set_next_page_token(VisibleSessionId(caller.who, sessions.back()->id()));
  return absl::OkStatus();
}

absl::Status OptimizerServiceImpl::DoUpdateSession(const Caller& caller,
                                                   const v1::UpdateSessionRequest& request,
                                                   v1::Session* response) {
  absl::StatusOr<std::shared_ptr<Session>> session = Find(caller, request.session_id());
  if (!session.ok()) return session.status();
  if (request.has_restore_version()) return RestoreVersion(caller, request, **session, response);
  SessionUpdate update;
  if (request.has_optimizer()) {
    update.optimizer = [&request](OptimizerOptions* options) {
      return MergeOptimizerFromProto(request.optimizer(), /*require_same_kind=*/true, "", options);
    };
  }
  ParamGroupUpdatesFromProto(request, &update);
  if (request.has_schedule()) {
    absl::StatusOr<ScheduleOptions> schedule = ScheduleFromProto(request.schedule(), "");
    if (!schedule.ok()) return schedule.status();
    update.schedule = *std::move(schedule);
  }
  if (request.has_clipping()) {
    absl::StatusOr<ClipOptions> clipping = ClippingFromProto(request.clipping(), "");
    if (!clipping.ok()) return clipping.status();
    update.clipping = *clipping;
  }
  if (request.has_optimizer_state()) {
    absl::StatusOr<OptimizerState> state =
        OptimizerStateFromProto(request.optimizer_state(), (*session)->tensors());
    if (!state.ok()) return state.status();
    update.optimizer_state = *std::move(state);
  }
  if (absl::Status s = (*session)->Update(update); !s.ok()) return s;
  Describe(caller, **session, response);
  return absl::OkStatus();
}

absl::Status OptimizerServiceImpl::RestoreVersion(const Caller& caller,
                                                  const v1::UpdateSessionRequest& request,
                                                  const Session& session, v1::Session* response) {
  const int64_t version = request.restore_version();
  if (request.has_optimizer() || request.has_schedule() || request.has_clipping() ||
      request.has_optimizer_state() || request.param_groups_size() > 0) {
    return absl::InvalidArgumentError(
        "restore_version must be alone in its UpdateSessionRequest (optimizer, schedule, "
        "clipping, optimizer_state and param_groups unset): restore first, then update");
  }
  if (options_.checkpointer == nullptr) {
    return absl::FailedPreconditionError(
        "restore_version: this server keeps no checkpoints: start it with --checkpoint_dir");
  }
  if (version < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "restore_version = ", version, " is out of range: must be >= 0 (a checkpointed version)"));
  }
  // Already there (restored by another worker, or never moved past it): left as it is, with
  // its barrier and steps in flight, so that workers recovering at once do not undo each other.
  if (session.Info().version == version) {
    Describe(caller, session, response);
    return absl::OkStatus();
  }
  absl::StatusOr<SessionState> state = options_.checkpointer->ReadVersion(session.id(), version);
  absl::StatusOr<std::shared_ptr<Session>> restored =
      state.ok()
          ? store_->Replace(*std::move(state),
                            absl::AbortedError(absl::StrCat(
                                "session ", request.session_id(), " was restored to version ",
                                version, "; pull its parameters and step again from there")))
          : absl::StatusOr<std::shared_ptr<Session>>(state.status());
  AuditCall(options_.audit, "session.restore", caller, Action::kUpdateSession, request.session_id(),
            restored.status());
  if (!restored.ok()) return restored.status();
  options_.checkpointer->ForgetAfter(**restored, version);
  Describe(caller, **restored, response);
  return absl::OkStatus();
}

absl::StatusOr<PullOutput> OptimizerServiceImpl::DoPull(const Caller& caller,
                                                        const v1::PullRequest& request) {
  absl::StatusOr<WireDType> dtype = DTypeFromProto("dtype", request.dtype());
  if (!dtype.ok()) return dtype.status();
  absl::StatusOr<std::shared_ptr<Session>> session = Find(caller, request.session_id());
  if (!session.ok()) return session.status();
  std::vector<absl::string_view> names(request.names().begin(), request.names().end());
  std::vector<RowSelection> rows;
  for (const v1::TensorRows& r : request.rows()) {
    rows.push_back({r.name(), absl::MakeConstSpan(r.indices().data(), r.indices().size())});
  }
  absl::StatusOr<ParameterPoint> point = PointFromProto("point", request.point());
  if (!point.ok()) return point.status();
  return (*session)->Pull(names, *dtype, rows, request.include_optimizer_state(), *point);
}

absl::Status OptimizerServiceImpl::DoDeleteSession(const Caller& caller,
                                                   const v1::DeleteSessionRequest& request,
                                                   v1::DeleteSessionResponse* response) {
  absl::StatusOr<std::string> id = StoredSessionId(caller.who, request.session_id());
  // With --checkpoint_dir the store also removes its checkpoints: it does not come back.
  const absl::Status status = id.ok() ? store_->Delete(*id) : id.status();
  AuditCall(options_.audit, "session.delete", caller, Action::kDeleteSession, request.session_id(),
            status);
  return status;
}

absl::Status OptimizerServiceImpl::DoPlanPlacement(const Caller& /*caller*/,
                                                   const v1::PlanPlacementRequest& request,
                                                   v1::Placement* response) {
  OptimizerOptions optimizer;
  const v1::OptimizerConfig& opt = request.optimizer();
  if (opt.kind_case() == v1::OptimizerConfig::kSgd && !opt.sgd().has_lr()) {
    return absl::InvalidArgumentError(
        "optimizer.sgd.lr is required (torch.optim.SGD has no default); must be >= 0");
  }
  if (absl::Status s = MergeOptimizerFromProto(opt, false, "", &optimizer); !s.ok()) return s;
  absl::StatusOr<ClipOptions> clipping = ClippingFromProto(request.clipping(), "");
  if (!clipping.ok()) return clipping.status();
  if (request.shards() > static_cast<uint32_t>(Placement::kMaxShards)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shards = ", request.shards(), " is out of range: must be 2 to ", Placement::kMaxShards));
  }
  absl::StatusOr<Placement> placement =
      optd::PlanPlacement(ModelFromProto(request), optimizer, *clipping,
                          static_cast<int>(request.shards()), request.split_min_elements());
  if (!placement.ok()) return placement.status();
  PlacementToProto(*placement, response);
  return absl::OkStatus();
}

absl::Status OptimizerServiceImpl::DoCheckpoint(const Caller& caller,
                                                const v1::CheckpointRequest& request,
                                                v1::CheckpointResponse* response) {
  absl::StatusOr<CheckpointResult> result = [&]() -> absl::StatusOr<CheckpointResult> {
    absl::StatusOr<std::shared_ptr<Session>> session = Find(caller, request.session_id());
    if (!session.ok()) return session.status();
    if (options_.checkpointer == nullptr) {
      return absl::FailedPreconditionError(
          "this server keeps no checkpoints: start it with --checkpoint_dir");
    }
    return options_.checkpointer->Checkpoint(**session, CheckpointReason::kRequest);
  }();
  AuditCall(options_.audit, "session.checkpoint", caller, Action::kCheckpoint, request.session_id(),
            result.status());
  if (!result.ok()) return result.status();
  response->set_version(result->version);
  response->set_path(result->path);
  response->set_bytes(result->bytes);
  return absl::OkStatus();
}

absl::Status OptimizerServiceImpl::DoFork(const Caller& caller,
                                          const v1::CreateSessionRequest& request,
                                          v1::Session* response) {
  if (options_.checkpointer == nullptr) {
    return absl::FailedPreconditionError(
        "this server keeps no checkpoints (--checkpoint_dir): it cannot create a session from one");
  }
  if (!request.from_checkpoint().empty() && !request.from_session_checkpoint().empty()) {
    return absl::InvalidArgumentError(
        "from_checkpoint and from_session_checkpoint are both set; give one");
  }
  if (request.tensors_size() > 0) {
    return absl::InvalidArgumentError(
        "tensors must be empty when the session starts from a checkpoint");
  }
  if (request.session_id().empty()) {
    return absl::InvalidArgumentError("session_id is required with a checkpoint");
  }
  absl::StatusOr<std::string> id = StoredSessionId(caller.who, request.session_id());
  if (!id.ok()) return id.status();
  if (absl::Status s = ValidateSessionId(*id); !s.ok()) return s;
  absl::StatusOr<std::string> source =
      StoredSessionId(caller.who, request.from_session_checkpoint());
  if (!source.ok()) return source.status();
  absl::StatusOr<SessionState> state = !request.from_checkpoint().empty()
                                           ? options_.checkpointer->Read(request.from_checkpoint())
                                           : options_.checkpointer->ReadNewest(*source);
  if (!state.ok() && request.from_checkpoint().empty() &&
      state.status().code() == absl::StatusCode::kInvalidArgument) {
    return absl::InvalidArgumentError(absl::StrCat("from_", state.status().message()));
  }
  // Another tenant's checkpoint file is not revealed (nor read into a session).
  if (state.ok() && !request.from_checkpoint().empty() && caller.who.role != Role::kAdmin &&
      TenantOfSessionId(state->id) != caller.who.tenant) {
    state = absl::NotFoundError(
        absl::StrCat("from_checkpoint ", request.from_checkpoint(), ": no such checkpoint"));
  }
  if (!state.ok()) return state.status();
  state->id = *std::move(id);
  state->exactly_once = ExactlyOnceTable::State();  // the fork's workers join it afresh
  state->sync_workers_seen.clear();
  state->create_time = absl::Now();
  // A config given replaces the checkpoint's hyperparameters, schedule and clipping, as
  // UpdateSession would; the tensors and the consistency mode are the checkpoint's.
  const v1::SessionConfig& config = request.config();
  if (config.has_consistency() && config.consistency().ByteSizeLong() > 0) {
    return absl::InvalidArgumentError(
        "config.consistency cannot be given with a checkpoint: a fork keeps the checkpoint's "
        "(change it with a new session instead)");
  }
  if (config.param_groups_size() > 0) {
    return absl::InvalidArgumentError(
        "config.param_groups cannot be given with a checkpoint: a fork keeps the checkpoint's "
        "parameter groups (change their hyperparameters with UpdateSession)");
  }
  if (config.has_optimizer()) {
    const OptimizerOptions before = state->config.optimizer;
    if (absl::Status s = MergeOptimizerFromProto(config.optimizer(), /*require_same_kind=*/true,
                                                 "config.", &state->config.optimizer);
        !s.ok()) {
      return s;
    }
    // The rules of UpdateSession: options whose state would have no history (Adam's amsgrad,
    // RMSprop's centered, momentum to or from 0) cannot change from the checkpoint's.
    absl::StatusOr<std::unique_ptr<Optimizer>> probe = CreateOptimizer(before, {1});
    if (!probe.ok()) return probe.status();
    if (absl::Status s = (*probe)->UpdateOptions(state->config.optimizer); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("config.optimizer: ", s.message()));
    }
  }
  if (config.has_clipping()) {
    absl::StatusOr<ClipOptions> clipping = ClippingFromProto(config.clipping(), "config.");
    if (!clipping.ok()) return clipping.status();
    state->config.clipping = *clipping;
  }
  if (config.has_schedule()) {
    absl::StatusOr<ScheduleOptions> schedule = ScheduleFromProto(config.schedule(), "config.");
    if (!schedule.ok()) return schedule.status();
    state->config.schedule = *std::move(schedule);
    // A new schedule starts from its own initial state at the checkpoint's step count (as
    // UpdateSession continues a new schedule at the current step).
    absl::StatusOr<LrSchedule> fresh =
        LrSchedule::Create(state->config.schedule, BaseLearningRate(state->config.optimizer));
    if (!fresh.ok()) return fresh.status();
    LrScheduleState restarted = fresh->state();
    restarted.step = state->schedule.step;
    state->schedule = restarted;
  } else if (config.has_optimizer() &&
             BaseLearningRate(state->config.optimizer) != state->schedule.base_lr) {
    // A new lr, as UpdateSession sets one (ReduceOnPlateau starts again from it); other options
    // keep the schedule's state, a plateau-reduced lr included.
    state->schedule.base_lr = BaseLearningRate(state->config.optimizer);
    state->schedule.plateau_lr = state->schedule.base_lr;
  }
  std::optional<absl::MutexLock> quota_lock;
  if (access_->enabled()) {
    quota_lock.emplace(&create_mu_);
    int64_t elements = 0;
    for (const TensorSpec& t : state->tensors) elements = SaturatedAdd(elements, t.num_elements);
    absl::StatusOr<int64_t> new_bytes = SessionBytes(state->config.optimizer, elements);
    if (!new_bytes.ok()) return new_bytes.status();
    if (absl::Status s = CheckQuota(caller, *new_bytes); !s.ok()) return s;
  }
  absl::StatusOr<std::shared_ptr<Session>> session =
      store_->Restore(*std::move(state), /*as_new=*/true);
  if (!session.ok()) return session.status();
  CheckpointNew(**session);
  Describe(caller, **session, response);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Session>> OptimizerServiceImpl::Find(const Caller& caller,
                                                                    absl::string_view id) {
  absl::StatusOr<std::string> stored = StoredSessionId(caller.who, id);
  if (!stored.ok()) return stored.status();
  return store_->Find(*stored);
}

absl::Status OptimizerServiceImpl::CheckQuota(const Caller& caller, int64_t new_bytes) const {
  // The tenant's sessions are consecutive in id order, after "tenant:".
  const std::string prefix = QualifiedSessionId(caller.who.tenant, "");
  int64_t sessions = 0;
  int64_t bytes = 0;
  std::string after = prefix;
  for (bool more = true; more;) {
    std::vector<std::shared_ptr<Session>> page = store_->List(after, 1000);
    more = page.size() == 1000;
    for (const std::shared_ptr<Session>& session : page) {
      if (!absl::StartsWith(session->id(), prefix)) {
        more = false;
        break;
      }
      const SessionInfo info = session->Info();
      ++sessions;
      bytes += info.memory.parameter_bytes + info.memory.optimizer_state_bytes +
               info.memory.reserved_state_bytes;
      after = session->id();
    }
  }
  return access_->CheckSessionQuota(caller.who, sessions, bytes, new_bytes);
}

int64_t OptimizerServiceImpl::DurableVersion(absl::string_view session_id) const {
  return options_.checkpointer == nullptr ? -1 : options_.checkpointer->DurableVersion(session_id);
}

void OptimizerServiceImpl::Describe(const Caller& caller, const Session& session,
                                    v1::Session* out) const {
  SessionInfoToProto(session.Info(), out);
  out->set_session_id(VisibleSessionId(caller.who, session.id()));
  out->set_tenant(std::string(TenantOfSessionId(session.id())));
  out->set_server_incarnation(options_.server_incarnation);
  out->set_durable_version(DurableVersion(session.id()));
  if (options_.checkpointer != nullptr) {
    for (int64_t v : options_.checkpointer->Versions(session.id())) out->add_checkpoint_versions(v);
  }
}

absl::Status OptimizerServiceImpl::DoJoinSession(const Caller& caller,
                                                 const v1::JoinSessionRequest& request,
                                                 v1::JoinSessionResponse* response) {
  absl::StatusOr<std::shared_ptr<Session>> session = Find(caller, request.session_id());
  if (!session.ok()) return session.status();
  absl::StatusOr<JoinOutput> joined = (*session)->Join(request.worker_id());
  if (!joined.ok()) return joined.status();
  response->set_worker_incarnation(joined->worker_incarnation);
  response->set_next_sequence(1);
  response->set_version(joined->version);
  response->set_server_incarnation(options_.server_incarnation);
  return absl::OkStatus();
}

}  // namespace optd
