// File: session_config.h
//
// SessionConfig: how a session optimizes (optimizer options, learning-rate schedule, gradient
// clipping, consistency mode), and SessionUpdate: what UpdateSession may change at run time.
// Plain data with defaults in place; each part validates itself (optimizer_options.h, schedule.h,
// clip.h, consistency.h, placement.h). Thread-compatible.

#ifndef OPTD_SERVER_SESSION_SESSION_CONFIG_H_
#define OPTD_SERVER_SESSION_SESSION_CONFIG_H_

#include <functional>
#include <optional>

#include "absl/status/status.h"
#include "server/optim/clip.h"
#include "server/optim/optimizer_options.h"
#include "server/optim/optimizer_state.h"
#include "server/optim/schedule.h"
#include "server/session/consistency.h"
#include "server/session/placement.h"

namespace optd {

struct SessionConfig {
  OptimizerOptions optimizer = AdamOptions{};
  ScheduleOptions schedule;  // constant by default
  ClipOptions clipping;      // off by default
  ConsistencyOptions consistency;
  // Set on each shard of a sharded session (placement.h); fixed at creation.
  std::optional<Placement> placement;
};

// What UpdateSession may change; an unset member changes nothing.
struct SessionUpdate {
  // Edits the options in force (called under the session's lock, so concurrent updates of
  // different fields do not lose each other); must keep the optimizer kind and validate.
  std::function<absl::Status(OptimizerOptions*)> optimizer;
  std::optional<ScheduleOptions> schedule;
  std::optional<ClipOptions> clipping;
  // Replaces the optimizer state (an import). Its tensors are in the session's order; each
  // tensor's arrays may come in any order (matched by name).
  std::optional<OptimizerState> optimizer_state;
};

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_SESSION_CONFIG_H_
