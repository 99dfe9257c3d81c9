// File: session.h
//
// Session: one model's named float32 parameters, the optimizer that updates them, and a version
// counter that each applied step increments. It is the unit of concurrency of optd.
//
// Who may call it: SessionStore creates sessions; the service layer calls Step, Pull and Info on a
// std::shared_ptr<Session> it got from the store.
//
// Thread safety: all methods are thread-safe. The tensor names, shapes and the id are immutable
// after Create and are read without a lock; parameters, the optimizer and the version are guarded by
// mu_. A Step decodes and validates its gradients before taking mu_, and holds mu_ only for the
// optimizer update and the encoding of the reply, so a step is atomic: other callers see either all
// of it or none of it.
//
// Errors: InvalidArgument for a malformed request (the message names the field, the value and the
// valid range); nothing is changed by a request that fails.

#ifndef OPTD_SERVER_SESSION_SESSION_H_
#define OPTD_SERVER_SESSION_SESSION_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"
#include "server/session/session_observer.h"
#include "server/session/wire_tensor.h"

namespace optd {

// How a session optimizes. Later capabilities add fields (schedule, clipping, consistency).
struct SessionConfig {
  OptimizerOptions optimizer = AdamOptions{};
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  int64_t num_elements = 0;
};

// A snapshot of a session's description, for GetSession and ListSessions.
struct SessionInfo {
  std::string id;
  SessionConfig config;
  std::vector<TensorSpec> tensors;
  int64_t version = 0;
  int64_t num_parameters = 0;
  int64_t parameter_bytes = 0;
  int64_t optimizer_state_bytes = 0;
  int64_t state_bytes_per_parameter = 0;
  absl::Time create_time;
};

struct StepInput {
  absl::string_view worker_id;
  // One per session tensor, any order.
  absl::Span<const WireTensorView> gradients;
  std::optional<double> loss;
  bool return_parameters = true;
  WireDType return_dtype = WireDType::kF32;
};

struct StepOutput {
  int64_t version = 0;
  double gradient_norm = 0;
  double learning_rate = 0;
  // Every tensor in creation order if StepInput::return_parameters, else empty.
  std::vector<WireTensor> parameters;
};

struct PullOutput {
  int64_t version = 0;
  std::vector<WireTensor> tensors;
};

// Limits on what a session may hold.
inline constexpr int kMaxSessionIdLength = 128;
inline constexpr int kMaxTensorNameLength = 256;
inline constexpr int kMaxTensorRank = 8;
inline constexpr int kMaxTensorsPerSession = 4096;

class Session {
 public:
  // Creates a session holding `tensors` (decoded to float32) and the optimizer `config` names.
  // Returns InvalidArgument for an invalid id, config, or tensor (no tensors, empty or repeated or
  // badly formed name, rank > kMaxTensorRank, a dimension < 1, wrong byte length, a non-finite
  // initial value). `observer`, if not null, must outlive the session; it is told of every step and
  // refusal.
  static absl::StatusOr<std::unique_ptr<Session>> Create(std::string id, SessionConfig config,
                                                         absl::Span<const WireTensorView> tensors,
                                                         absl::Time now,
                                                         SessionObserver* observer = nullptr);

  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const std::string& id() const { return id_; }
  const std::vector<TensorSpec>& tensors() const { return specs_; }

  // Applies one step. `input.gradients` must name every tensor exactly once, with the tensor's
  // shape, and hold only finite values. Returns InvalidArgument (naming the tensor and what is
  // wrong) and changes nothing otherwise.
  absl::StatusOr<StepOutput> Step(const StepInput& input);

  // Returns the named tensors (all, in creation order, when `names` is empty) as `dtype`.
  // InvalidArgument for an unknown or repeated name.
  absl::StatusOr<PullOutput> Pull(absl::Span<const absl::string_view> names, WireDType dtype) const;

  SessionInfo Info() const;

 private:
  Session(std::string id, std::vector<TensorSpec> specs, std::vector<std::vector<float>> values,
          std::unique_ptr<Optimizer> optimizer, absl::Time create_time, SessionObserver* observer);

  // Decodes and validates the gradients of `input` into `grads` (one per tensor, creation order)
  // and adds their sum of squares to `*sum_squares`. On failure sets `*reason`.
  absl::Status DecodeGradients(const StepInput& input, std::vector<std::vector<float>>* grads,
                               double* sum_squares, RefusalReason* reason) const;

  // Index of the tensor named `name`, or -1.
  int FindTensor(absl::string_view name) const;

  WireTensor EncodeTensor(int index, WireDType dtype) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  const std::string id_;
  const std::vector<TensorSpec> specs_;
  const absl::Time create_time_;
  SessionObserver* const observer_;  // may be null; thread-safe itself

  mutable absl::Mutex mu_;
  std::vector<std::vector<float>> values_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Optimizer> optimizer_ ABSL_GUARDED_BY(mu_);
  int64_t version_ ABSL_GUARDED_BY(mu_) = 0;
};

// Returns InvalidArgument unless `id` is 1-kMaxSessionIdLength characters of [A-Za-z0-9._-].
absl::Status ValidateSessionId(absl::string_view id);

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_SESSION_H_
