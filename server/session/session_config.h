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
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "server/optim/clip.h"
#include "server/optim/optimizer_options.h"
#include "server/optim/optimizer_state.h"
#include "server/optim/schedule.h"
#include "server/session/consistency.h"
#include "server/session/placement.h"

namespace optd {

// A parameter group (torch.optim's param_groups): session tensors, by name, stepped with options
// of their own (the session optimizer's kind). Validated against the tensors by Session::Create.
struct ParamGroupConfig {
  std::vector<std::string> tensors;
  OptimizerOptions optimizer;
};

struct SessionConfig {
  OptimizerOptions optimizer = AdamOptions{};  // group 0: the tensors no param group names
  ScheduleOptions schedule;                    // constant by default
  ClipOptions clipping;                        // off by default
  ConsistencyOptions consistency;
  // Set on each shard of a sharded session (placement.h); fixed at creation.
  std::optional<Placement> placement;
  std::vector<ParamGroupConfig> param_groups;  // none by default
};

// What UpdateSession may change; an unset member changes nothing.
struct SessionUpdate {
  // Edits the options in force (called under the session's lock, so concurrent updates of
  // different fields do not lose each other); must keep the optimizer kind and validate.
  std::function<absl::Status(OptimizerOptions*)> optimizer;
  // The same for parameter groups: (index into SessionConfig::param_groups, edit).
  std::vector<std::pair<int, std::function<absl::Status(OptimizerOptions*)>>> param_groups;
  std::optional<ScheduleOptions> schedule;
  std::optional<ClipOptions> clipping;
  // Replaces the optimizer state (an import). Its tensors are in the session's order; each
  // tensor's arrays may come in any order (matched by name).
  std::optional<OptimizerState> optimizer_state;
};

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_SESSION_CONFIG_H_
