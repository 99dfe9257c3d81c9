// File: session_state.h
//
// SessionState: everything a session must keep to continue exactly where it is, as one value: its
// id, config (the options in force), tensors, parameters, optimizer state, learning-rate schedule
// state, version, the exactly-once table and the SYNC workers it has seen. Session::Snapshot()
// copies it out under the session's lock (the parameters are shared, not copied: copy on write)
// and Session::Restore() rebuilds a session from it that takes the same next steps, bit for bit.
// Checkpoints (durability) write and read this value; nothing in it knows of files or locks.
//
// Not in it: calls waiting at an open SYNC barrier (their workers retry) and metrics.
//
// Plain value: thread-compatible.

#ifndef OPTD_SERVER_SESSION_SESSION_STATE_H_
#define OPTD_SERVER_SESSION_SESSION_STATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "server/optim/optimizer_state.h"
#include "server/optim/schedule.h"
#include "server/session/exactly_once.h"
#include "server/session/session_config.h"
#include "server/session/tensor_spec.h"
#include "wire/tensor_bytes.h"

namespace optd {

struct SessionState {
  std::string id;
  SessionConfig config;
  std::vector<TensorSpec> tensors;
  std::vector<SharedFloats> parameters;  // one per tensor, in creation order
  OptimizerState optimizer;
  LrScheduleState schedule;
  int64_t version = 0;
  ExactlyOnceTable::State exactly_once;
  std::vector<std::string> sync_workers_seen;
  absl::Time create_time;
  // Session::revision() at the cut (in memory only, not part of a checkpoint file).
  int64_t revision = 0;
};

}  // namespace optd

#endif  // OPTD_SERVER_SESSION_SESSION_STATE_H_
