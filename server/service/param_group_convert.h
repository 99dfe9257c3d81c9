// File: param_group_convert.h
//
// Conversions of parameter groups (torch.optim's param_groups) from optd.v1: SessionConfig's
// param_groups into SessionConfig::param_groups (each group's options merged over the session's),
// and UpdateSessionRequest.param_groups into SessionUpdate::param_groups. Their tensors are
// checked against the session's by Session::Create. ConfigToProto (proto_convert.h) writes them
// back.
//
// Only server/service (ConfigFromProto, UpdateSession) and the proto_convert fuzzer use this
// file. Pure functions, thread-safe. Errors: InvalidArgument naming the field
// ("config.param_groups[i]....", "param_groups[i]....").

#ifndef OPTD_SERVER_SERVICE_PARAM_GROUP_CONVERT_H_
#define OPTD_SERVER_SERVICE_PARAM_GROUP_CONVERT_H_

#include "absl/status/status.h"
#include "optd/v1/optd.pb.h"
#include "server/session/session_config.h"

namespace optd {

// Appends `config`'s param_groups to out->param_groups, out->optimizer being the session's
// (already converted): a group needs tensors and, when it sets an optimizer, the session's kind
// with valid values.
absl::Status ParamGroupsFromProto(const v1::SessionConfig& config, SessionConfig* out);

// UpdateSessionRequest.param_groups as SessionUpdate::param_groups (each edit merges the entry's
// optimizer over the group's options, same kind, as `optimizer` does for the session's own). The
// edits refer to `request`, which must outlive `update`.
void ParamGroupUpdatesFromProto(const v1::UpdateSessionRequest& request, SessionUpdate* update);

}  // namespace optd

#endif  // OPTD_SERVER_SERVICE_PARAM_GROUP_CONVERT_H_
