// proto_convert_fuzzer: requests as protobuf parses them, through the conversions of
// server/service/proto_convert.h and on into sessions, as the service runs them.
//
// Layout of an input:
//   byte 0     the request: % 4 = CreateSessionRequest, UpdateSessionRequest, PullRequest,
//              StepRequest
//   byte 1     the base session that Update, Pull and Step act on (tensors "w" [4, 3] and "b"
//              [3]): optimizer = byte % 12 (the OptimizerConfig oneof, in field order, with
//              defaults; sgd with lr 0.1), consistency = byte / 12 % 4: ASYNC, BOUNDED (S = 1),
//              SYNC of 1 worker, SYNC of 2 workers. For Create: byte % 3 is the dtype of the
//              gradients stepped into the new session
//   the rest   the serialized request (inputs protobuf refuses end there)
//
// What must hold, besides nothing crashing, nothing leaking and no undefined behaviour:
//   - every refusal is a Status with the code the contract names (InvalidArgument for a bad
//     request; Aborted, FailedPrecondition, Unavailable for steps as session.h says);
//   - a config that converts converts back (ConfigToProto) and again to the same message;
//   - every step callback is called exactly once; versions count the applied steps; a keyed
//     step sent again is answered as a duplicate of the same version and changes nothing;
//   - Pull returns what was asked, in the sizes the shapes and dtype give;
//   - Snapshot then Restore gives a session with the same description and parameters that takes
//     the same next step, bit for bit (or a refusal naming a non-finite parameter: see below).
//
// Sizes are capped before optd is called (kElementBudget), so one input cannot make it hold or
// return more than a few MB.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "base/fake_clock.h"
#include "fuzz/fuzz_check.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/stubs/logging.h"
#include "optd/v1/optd.pb.h"
#include "server/service/proto_convert.h"
#include "server/session/deadline_scheduler.h"
#include "server/session/session.h"
#include "server/session/session_store.h"
#include "server/session/tensor_spec.h"
#include "wire/wire_dtype.h"

namespace optd {
namespace {

// Elements a fuzzed request may make a session hold, or a Pull return.
constexpr int64_t kElementBudget = 1 << 16;

// What every input shares: the store (its SYNC deadlines on a clock that only moves between
// inputs, so no barrier expires while an input runs) and an environment for restored sessions.
struct World {
  FakeClock clock;
  SessionStore store{SessionStoreOptions{}, nullptr, &clock};
  DeadlineScheduler scheduler{&clock};
  SessionEnv env = [this] {
    SessionEnv e;
    e.clock = &clock;
    e.scheduler = &scheduler;
    return e;
  }();
};

World& TheWorld() {
  static World* const world = new World;
  return *world;
}

std::string CanonicalOf(const google::protobuf::MessageLite& message) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream stream(&bytes);
    google::protobuf::io::CodedOutputStream out(&stream);
    out.SetSerializationDeterministic(true);
    message.SerializeToCodedStream(&out);
  }
  return bytes;
}

void CheckCode(const absl::Status& s, std::initializer_list<absl::StatusCode> allowed) {
  FUZZ_CHECK(!s.ok());
  FUZZ_CHECK(std::find(allowed.begin(), allowed.end(), s.code()) != allowed.end(), s.ToString());
  FUZZ_CHECK(!s.message().empty(), s.ToString());
}

void CheckInvalid(const absl::Status& s) { CheckCode(s, {absl::StatusCode::kInvalidArgument}); }

// A converted config converts back, and again to the same message.
void CheckConfigRoundTrip(const SessionConfig& config) {
  v1::SessionConfig once;
  ConfigToProto(config, &once);
  const absl::StatusOr<SessionConfig> back = ConfigFromProto(once);
  FUZZ_CHECK(back.ok(), absl::StrCat("ConfigFromProto(ConfigToProto(c)): ",
                                     back.status().ToString(), "\n", once.DebugString()));
  v1::SessionConfig twice;
  ConfigToProto(*back, &twice);
  FUZZ_CHECK(CanonicalOf(once) == CanonicalOf(twice),
             absl::StrCat("config does not convert back to itself:\n", once.DebugString(), "---\n",
                          twice.DebugString()));
}

// One step call: its outcome and how many times it was answered.
struct Call {
  int answers = 0;
  absl::StatusOr<StepOutput> result = absl::UnknownError("not answered");
};

// The steps of one input.
class Calls {
 public:
  StepCallback Track() {
    auto call = std::make_shared<Call>();
    calls_.push_back(call);
    return [call](absl::StatusOr<StepOutput> r) {
      ++call->answers;
      call->result = std::move(r);
    };
  }
  const Call& last() const { return *calls_.back(); }
  const std::vector<std::shared_ptr<Call>>& all() const { return calls_; }

 private:
  std::vector<std::shared_ptr<Call>> calls_;
};

void CheckStepOutcome(const Call& call) {
  FUZZ_CHECK(call.answers == 1, absl::StrCat("a step was answered ", call.answers, " times"));
  if (!call.result.ok()) {
    CheckCode(call.result.status(),
              {absl::StatusCode::kInvalidArgument, absl::StatusCode::kAborted,
               absl::StatusCode::kFailedPrecondition, absl::StatusCode::kUnavailable});
  }
}

// Owns what the views of a synthesized step borrow.
struct Gradients {
  std::vector<std::string> bytes;
  std::vector<std::vector<int64_t>> rows;
  std::vector<WireTensorView> views;
};

// Gradients for every tensor of `session`: `dtype` values cut from `pool` (cycled; zeros if
// empty), dense, or row-sparse over `rows_of(name)` when that gives rows.
template <typename RowsOf>
Gradients Synthesize(const Session& session, const std::string& pool, WireDType dtype,
                     RowsOf rows_of) {
  Gradients g;
  const std::vector<TensorSpec>& specs = session.tensors();
  g.bytes.reserve(specs.size());
  g.rows.reserve(specs.size());
  for (const TensorSpec& spec : specs) {
    g.rows.push_back(rows_of(spec));
    const bool sparse = !g.rows.back().empty();
    const int64_t count =
        sparse ? static_cast<int64_t>(g.rows.back().size()) * spec.row_size() : spec.num_elements;
    std::string bytes(static_cast<size_t>(count * BytesPerElement(dtype)), '\0');
    for (size_t i = 0; !pool.empty() && i < bytes.size(); ++i) bytes[i] = pool[i % pool.size()];
    g.bytes.push_back(std::move(bytes));
    g.views.push_back({spec.name, spec.shape, dtype, TensorBytes::Borrowed(g.bytes.back()), sparse,
                       g.rows.back()});
  }
  return g;
}

// Dense F32 gradients of small, finite, deterministic values.
Gradients Fixed(const Session& session, float scale) {
  std::string pool;
  for (int i = 0; i < 16; ++i) {
    const float v = scale * static_cast<float>((i * 7) % 11 - 5) / 8.0f;
    pool.append(reinterpret_cast<const char*>(&v), sizeof(v));
  }
  return Synthesize(session, pool, WireDType::kF32,
                    [](const TensorSpec&) { return std::vector<int64_t>(); });
}

bool IsSync(const Session& session) {
  return session.Info().config.consistency.mode == ConsistencyOptions::Mode::kSync;
}

// One step of `gradients` from `worker` at the current version, plus, in a SYNC session of K
// workers, K - 1 peers with the same gradients, so that the barrier completes.
void StepEveryWorker(Session& session, const Gradients& gradients, const std::string& worker,
                     Calls* calls) {
  const SessionInfo info = session.Info();
  // At most 4 (a fuzzed SYNC session may want 4096): a barrier left open is closed at the end.
  const int workers = IsSync(session) ? std::min(info.config.consistency.workers, 4) : 1;
  for (int w = 0; w < workers; ++w) {
    StepInput input;
    input.worker_id = w == 0 ? worker : absl::StrCat(worker, "-", w);
    if (!info.config.consistency.worker_ids.empty() && IsSync(session)) {
      input.worker_id = info.config.consistency.worker_ids[w];
    }
    input.gradients = gradients.views;
    input.version = info.version;
    input.loss = 0.25 * w + 1.0 / (1 + info.version);
    session.Step(input, calls->Track());
  }
}

// The parameters of `session` as F32 bytes, one string per tensor.
std::vector<std::string> ParametersOf(const Session& session) {
  const absl::StatusOr<PullOutput> pulled = session.Pull({}, WireDType::kF32);
  FUZZ_CHECK(pulled.ok(), pulled.status().ToString());
  std::vector<std::string> out;
  for (const WireTensor& t : pulled->tensors) out.push_back(t.data.Flatten(WireDType::kF32));
  return out;
}

// Whether every parameter and every value of the optimizer's state in `state` is finite.
bool AllFinite(const SessionState& state) {
  for (const SharedFloats& p : state.parameters) {
    if (FirstNonFinite(*p) >= 0) return false;
  }
  for (const OptimizerState::Tensor& t : state.optimizer.tensors) {
    for (const OptimizerState::Array& a : t.arrays) {
      if (FirstNonFinite(a.values) >= 0) return false;
    }
    for (const auto& [name, value] : t.scalars) {
      if (!std::isfinite(value)) return false;
    }
  }
  for (const auto& [name, value] : state.optimizer.scalars) {
    if (!std::isfinite(value)) return false;
  }
  return true;
}

// Snapshot then Restore: the same description and parameters, and (outside SYNC, whose open
// barrier is not in a snapshot) the same next step, bit for bit.
void CheckSnapshotRestore(Session& session) {
  SessionState state = session.Snapshot();
  const bool finite = AllFinite(state);
  const std::vector<std::string> before = ParametersOf(session);
  absl::StatusOr<std::shared_ptr<Session>> restored =
      Session::Restore(std::move(state), TheWorld().env);
  if (!restored.ok()) {
    // Restore refuses non-finite parameters and optimizer state, which steps of finite gradients
    // can produce (a large learning rate, or Adam's squares of gradients above ~1.8e19 in
    // float); nothing else may be refused.
    CheckInvalid(restored.status());
    FUZZ_CHECK(!finite, absl::StrCat("Restore(Snapshot()) refused a finite session: ",
                                     restored.status().ToString()));
    return;
  }
  Session& copy = **restored;
  v1::Session a, b;
  SessionInfo info_a = session.Info();
  SessionInfo info_b = copy.Info();
  SessionInfoToProto(info_a, &a);
  SessionInfoToProto(info_b, &b);
  // Only the original holds what is not in a snapshot: older parameter buffers its replies still
  // hold (this input's calls keep them) and the gradients an open SYNC barrier keeps.
  for (v1::Session* s : {&a, &b}) {
    v1::MemoryUse* m = s->mutable_memory();
    m->set_total_bytes(m->total_bytes() - m->reply_bytes() - m->barrier_bytes());
    m->clear_reply_bytes();
    m->clear_barrier_bytes();
  }
  FUZZ_CHECK(
      CanonicalOf(a) == CanonicalOf(b),
      absl::StrCat("restored session differs:\n", a.DebugString(), "---\n", b.DebugString()));
  FUZZ_CHECK(ParametersOf(copy) == before, "restored parameters differ");
  if (!IsSync(session)) {
    const Gradients g = Fixed(session, 1.5f);
    Calls calls;
    StepEveryWorker(session, g, "fuzz-restore", &calls);
    StepEveryWorker(copy, g, "fuzz-restore", &calls);
    const Call& x = *calls.all()[0];
    const Call& y = *calls.all()[1];
    CheckStepOutcome(x);
    CheckStepOutcome(y);
    FUZZ_CHECK(x.result.ok() == y.result.ok(), y.result.status().ToString());
    if (x.result.ok()) {
      FUZZ_CHECK(x.result->version == y.result->version);
      FUZZ_CHECK(std::memcmp(&x.result->gradient_norm, &y.result->gradient_norm, sizeof(double)) ==
                 0);
      FUZZ_CHECK(ParametersOf(session) == ParametersOf(copy),
                 "a restored session took a different step");
    } else {
      FUZZ_CHECK(x.result.status() == y.result.status(), y.result.status().ToString());
    }
  }
  copy.Close(absl::UnavailableError("fuzz: restored copy dropped"));
}

// Checks what every input's session must satisfy once its steps are done, then deletes it.
void Finish(std::shared_ptr<Session> session, Calls* calls) {
  const SessionInfo info = session->Info();
  CheckConfigRoundTrip(info.config);
  // The versions answered so far (calls waiting at a SYNC barrier are not answered yet).
  int64_t applied = 0;
  int64_t latest = 0;
  for (const std::shared_ptr<Call>& call : calls->all()) {
    FUZZ_CHECK(call->answers <= 1);
    if (call->answers == 1 && call->result.ok() && !call->result->duplicate) {
      ++applied;
      latest = std::max(latest, call->result->version);
    }
  }
  FUZZ_CHECK(info.version == latest, absl::StrCat("version ", info.version, "; latest ", latest));
  if (!IsSync(*session)) {
    FUZZ_CHECK(info.version == applied,
               absl::StrCat("version ", info.version, "; ", applied, " applied"));
  }
  CheckSnapshotRestore(*session);
  // Deleting closes the session: calls still waiting at its barrier are answered now.
  FUZZ_CHECK(TheWorld().store.Delete(session->id()).ok());
  for (const std::shared_ptr<Call>& call : calls->all()) CheckStepOutcome(*call);
}

// Whether the tensors' shapes stay within the budget (else the input is skipped before optd
// allocates anything; shapes ValidateShape refuses count as small: nothing is allocated for them).
bool WithinBudget(const google::protobuf::RepeatedPtrField<v1::Tensor>& tensors) {
  int64_t total = 0;
  for (const v1::Tensor& t : tensors) {
    int64_t n = 1;
    for (const int64_t d : t.shape()) {
      if (d < 1) break;  // refused by ValidateShape before anything is allocated
      n = d > kElementBudget ? kElementBudget + 1 : std::min(n * d, kElementBudget + 1);
    }
    total += n;
    if (total > kElementBudget) return false;
  }
  return true;
}

absl::StatusOr<std::shared_ptr<Session>> CreateFrom(const v1::CreateSessionRequest& request) {
  // As OptimizerServiceImpl::DoCreateSession.
  if (!request.session_id().empty()) {
    if (absl::Status s = ValidateSessionId(request.session_id()); !s.ok()) return s;
  }
  absl::StatusOr<SessionConfig> config = ConfigFromProto(request.config());
  if (!config.ok()) return config.status();
  CheckConfigRoundTrip(*config);
  absl::StatusOr<std::vector<WireTensorView>> tensors = ViewsOf("tensors", request.tensors());
  if (!tensors.ok()) return tensors.status();
  return TheWorld().store.Create(request.session_id(), *std::move(config), *tensors);
}

// The base session of recipe `recipe` (see the top of the file).
std::shared_ptr<Session> BaseSession(uint8_t recipe) {
  v1::CreateSessionRequest request;
  v1::OptimizerConfig* optimizer = request.mutable_config()->mutable_optimizer();
  const google::protobuf::FieldDescriptor* kind =
      optimizer->GetDescriptor()->FindFieldByNumber(recipe % 12 + 1);
  google::protobuf::Message* options = optimizer->GetReflection()->MutableMessage(optimizer, kind);
  if (kind->number() == v1::OptimizerConfig::kSgdFieldNumber) {
    static_cast<v1::Sgd*>(options)->set_lr(0.1);
  }
  v1::Consistency* consistency = request.mutable_config()->mutable_consistency();
  switch (recipe / 12 % 4) {
    case 1:
      consistency->set_mode(v1::Consistency::MODE_BOUNDED);
      consistency->set_max_staleness(1);
      break;
    case 2:
      consistency->set_mode(v1::Consistency::MODE_SYNC);
      consistency->set_workers(1);
      break;
    case 3:
      consistency->set_mode(v1::Consistency::MODE_SYNC);
      consistency->set_workers(2);
      break;
  }
  const std::vector<std::pair<const char*, std::vector<int64_t>>> tensors = {{"w", {4, 3}},
                                                                             {"b", {3}}};
  int i = 0;
  for (const auto& [name, shape] : tensors) {
    v1::Tensor* t = request.add_tensors();
    t->set_name(name);
    int64_t n = 1;
    for (const int64_t d : shape) {
      t->add_shape(d);
      n *= d;
    }
    std::string data;
    for (int64_t k = 0; k < n; ++k, ++i) {
      const float v = 0.1f * static_cast<float>(i) - 0.5f;
      data.append(reinterpret_cast<const char*>(&v), sizeof(v));
    }
    t->set_data(std::move(data));
  }
  absl::StatusOr<std::shared_ptr<Session>> session = CreateFrom(request);
  FUZZ_CHECK(session.ok(), session.status().ToString());
  return *std::move(session);
}

void FuzzCreate(const v1::CreateSessionRequest& request, uint8_t options) {
  if (!WithinBudget(request.tensors())) return;
  absl::StatusOr<std::shared_ptr<Session>> session = CreateFrom(request);
  if (!session.ok()) {
    CheckCode(session.status(),
              {absl::StatusCode::kInvalidArgument, absl::StatusCode::kAlreadyExists});
    return;
  }
  // The initial values come back as they were sent (decoded to float32).
  const std::vector<std::string> initial = ParametersOf(**session);
  FUZZ_CHECK(initial.size() == static_cast<size_t>(request.tensors_size()));
  for (int i = 0; i < request.tensors_size(); ++i) {
    const v1::Tensor& t = request.tensors(i);
    std::vector<float> want;
    FUZZ_CHECK(DecodeFloats("t", static_cast<WireDType>(t.dtype()), t.data(),
                            static_cast<int64_t>(t.data().size()) /
                                BytesPerElement(static_cast<WireDType>(t.dtype())),
                            &want)
                   .ok());
    FUZZ_CHECK(
        initial[i].size() == want.size() * 4 &&
            (want.empty() || std::memcmp(initial[i].data(), want.data(), initial[i].size()) == 0),
        absl::StrCat("tensors[", i, "] does not read back as sent"));
  }
  // Steps whose gradients are the initial values, in the dtype `options` picks.
  std::string pool;
  for (const std::string& p : initial) pool += p;
  const WireDType dtype = static_cast<WireDType>(options % 3);
  std::string encoded;
  std::vector<float> floats(pool.size() / 4);
  if (!floats.empty()) std::memcpy(floats.data(), pool.data(), pool.size());
  EncodeFloats(dtype, floats, &encoded);
  const Gradients g = Synthesize(**session, encoded, dtype,
                                 [](const TensorSpec&) { return std::vector<int64_t>(); });
  Calls calls;
  for (int step = 0; step < 2; ++step) StepEveryWorker(**session, g, "fuzz", &calls);
  Finish(*std::move(session), &calls);
}

void FuzzUpdate(const v1::UpdateSessionRequest& request, uint8_t recipe) {
  std::shared_ptr<Session> session = BaseSession(recipe);
  // As OptimizerServiceImpl::DoUpdateSession.
  SessionUpdate update;
  absl::Status status;
  if (request.has_optimizer()) {
    update.optimizer = [&request](OptimizerOptions* options) {
      return MergeOptimizerFromProto(request.optimizer(), /*require_same_kind=*/true, "", options);
    };
  }
  ParamGroupUpdatesFromProto(request, &update);
  if (request.has_schedule()) {
    absl::StatusOr<ScheduleOptions> schedule = ScheduleFromProto(request.schedule(), "");
    if (schedule.ok()) {
      update.schedule = *std::move(schedule);
    } else {
      status = schedule.status();
    }
  }
  if (status.ok() && request.has_clipping()) {
    absl::StatusOr<ClipOptions> clipping = ClippingFromProto(request.clipping(), "");
    if (clipping.ok()) {
      update.clipping = *clipping;
    } else {
      status = clipping.status();
    }
  }
  const SessionInfo before = session->Info();
  if (status.ok()) status = session->Update(update);
  if (!status.ok()) {
    CheckInvalid(status);
    // Nothing changed.
    v1::Session a, b;
    SessionInfoToProto(before, &a);
    SessionInfoToProto(session->Info(), &b);
    FUZZ_CHECK(CanonicalOf(a) == CanonicalOf(b), "a refused update changed the session");
  }
  // Steps under the new options (the losses feed a ReduceOnPlateau schedule).
  Calls calls;
  for (int step = 0; step < 3; ++step) {
    StepEveryWorker(*session, Fixed(*session, 1.0f + step), "fuzz", &calls);
  }
  Finish(std::move(session), &calls);
}

void FuzzPull(const v1::PullRequest& request, uint8_t recipe) {
  std::shared_ptr<Session> session = BaseSession(recipe);
  Calls calls;
  StepEveryWorker(*session, Fixed(*session, 1.0f), "fuzz", &calls);
  // As OptimizerServiceImpl::DoPull, with the reply's size checked against the budget first.
  const absl::StatusOr<WireDType> dtype = DTypeFromProto("dtype", request.dtype());
  if (!dtype.ok()) {
    CheckInvalid(dtype.status());
  } else {
    int64_t reply = 0;
    for (const TensorSpec& spec : session->tensors()) reply += spec.num_elements;
    for (const v1::TensorRows& r : request.rows()) {
      for (const TensorSpec& spec : session->tensors()) {
        if (spec.name == r.name()) reply += r.indices_size() * spec.row_size();
      }
    }
    if (reply <= kElementBudget) {
      std::vector<absl::string_view> names(request.names().begin(), request.names().end());
      std::vector<RowSelection> rows;
      for (const v1::TensorRows& r : request.rows()) {
        rows.push_back({r.name(), absl::MakeConstSpan(r.indices().data(), r.indices().size())});
      }
      const absl::StatusOr<PullOutput> out = session->Pull(names, *dtype, rows);
      if (!out.ok()) {
        CheckInvalid(out.status());
      } else {
        FUZZ_CHECK(out->version == session->Info().version);
        const size_t want = names.empty() ? session->tensors().size() : names.size();
        FUZZ_CHECK(out->tensors.size() == want);
        for (size_t i = 0; i < out->tensors.size(); ++i) {
          const WireTensor& t = out->tensors[i];
          if (!names.empty()) FUZZ_CHECK(t.name == names[i]);
          const std::vector<TensorSpec>& specs = session->tensors();
          const auto spec = std::find_if(specs.begin(), specs.end(),
                                         [&](const TensorSpec& s) { return s.name == t.name; });
          FUZZ_CHECK(spec != specs.end());
          FUZZ_CHECK(t.shape == spec->shape && t.dtype == *dtype);
          const int64_t elements = t.has_rows
                                       ? static_cast<int64_t>(t.rows.size()) * spec->row_size()
                                       : spec->num_elements;
          FUZZ_CHECK(t.data.size(t.dtype) == elements * BytesPerElement(*dtype));
          v1::Tensor proto;
          TensorToProto(WireTensor(t), &proto);
          FUZZ_CHECK(static_cast<int64_t>(proto.data().size()) == t.data.size(t.dtype));
        }
      }
    }
  }
  Finish(std::move(session), &calls);
}

void FuzzStep(const v1::StepRequest& request, uint8_t recipe) {
  std::shared_ptr<Session> session = BaseSession(recipe);
  Calls calls;
  // As OptimizerServiceImpl::StartStep (the session found by id aside).
  const absl::StatusOr<StepInput> input = StepInputFromProto(request);
  const absl::StatusOr<std::vector<WireTensorView>> views =
      ViewsOf("gradients", request.gradients());
  if (!input.ok()) CheckInvalid(input.status());
  if (!views.ok()) CheckInvalid(views.status());
  const bool sent = input.ok() && views.ok();
  if (sent) {
    StepInput step = *input;
    step.gradients = *views;
    session->Step(step, calls.Track());
    // Sent again with the same key: answered as the same step, and nothing changes.
    const Call& first = calls.last();
    if (first.answers == 1 && first.result.ok() && step.sequence > 0 && !IsSync(*session)) {
      const std::vector<std::string> parameters = ParametersOf(*session);
      const int64_t version = session->Info().version;
      session->Step(step, calls.Track());
      const Call& again = calls.last();
      FUZZ_CHECK(again.answers == 1);
      FUZZ_CHECK(again.result.ok(), again.result.status().ToString());
      FUZZ_CHECK(again.result->duplicate && again.result->version == first.result->version);
      FUZZ_CHECK(session->Info().version == version && ParametersOf(*session) == parameters,
                 "a duplicate step changed the session");
    }
  }
  // The same values made to fit the session: one gradient per tensor, from the request's bytes
  // in its first gradient's dtype, row-sparse over a request gradient's rows when they are in
  // range; from another worker, so that a SYNC barrier of two completes.
  std::string pool;
  for (const v1::Tensor& t : request.gradients()) pool += t.data();
  const WireDType dtype =
      request.gradients_size() > 0 && v1::DType_IsValid(request.gradients(0).dtype())
          ? static_cast<WireDType>(request.gradients(0).dtype())
          : WireDType::kF32;
  const Gradients fitted = Synthesize(*session, pool, dtype, [&](const TensorSpec& spec) {
    for (const v1::Tensor& t : request.gradients()) {
      if (t.name() != spec.name || !t.has_rows() || spec.shape.empty()) continue;
      std::vector<int64_t> rows(t.rows().indices().begin(), t.rows().indices().end());
      if (rows.size() > 64) break;
      const bool in_range = std::all_of(rows.begin(), rows.end(),
                                        [&](int64_t r) { return r >= 0 && r < spec.shape[0]; });
      if (in_range) return rows;
    }
    return std::vector<int64_t>();
  });
  StepInput peer;
  peer.worker_id = "fuzz-peer";
  peer.gradients = fitted.views;
  peer.version = session->Info().version;
  if (request.has_loss()) peer.loss = request.loss();
  if (input.ok()) {
    peer.return_mode = input->return_mode;
    peer.return_dtype = input->return_dtype;
  }
  session->Step(peer, calls.Track());
  Finish(std::move(session), &calls);
}

}  // namespace
}  // namespace optd

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);  // protobuf logs every string it refuses
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  // Deadlines of the previous inputs' barriers pass (their sessions are gone, so their callbacks
  // find nothing to do); this input's never do while it runs. A minute, not an hour: the clock
  // counts int64 nanoseconds from 2001, which an hour per input overflowed after about 2.28M
  // inputs (year 2262), and the scheduler then waited for a deadline it could never reach.
  optd::TheWorld().clock.Advance(absl::Minutes(1));
  const void* bytes = data + 2;
  const int length = static_cast<int>(size - 2);
  switch (data[0] % 4) {
    case 0: {
      optd::v1::CreateSessionRequest request;
      if (request.ParseFromArray(bytes, length)) optd::FuzzCreate(request, data[1]);
      break;
    }
    case 1: {
      optd::v1::UpdateSessionRequest request;
      if (request.ParseFromArray(bytes, length)) optd::FuzzUpdate(request, data[1]);
      break;
    }
    case 2: {
      optd::v1::PullRequest request;
      if (request.ParseFromArray(bytes, length)) optd::FuzzPull(request, data[1]);
      break;
    }
    default: {
      optd::v1::StepRequest request;
      if (request.ParseFromArray(bytes, length)) optd::FuzzStep(request, data[1]);
      break;
    }
  }
  return 0;
}
