// File: placement_convert.h
//
// Conversions between optd.v1.Placement and the domain's Placement (server/session/placement.h),
// and PlanPlacementRequest's model. Decoding checks the shape of the message (counts, ranges,
// names) and returns InvalidArgument naming the field with its path, e.g.
// "config.placement.slices[3].row_end = 9 is out of range: must be in (row_begin, rows]"; whether
// the map is the plan of its model is CheckShard's business.
//
// Only server/service uses this file (through proto_convert.h). Pure functions, thread-safe.

#ifndef OPTD_SERVER_SERVICE_PLACEMENT_CONVERT_H_
#define OPTD_SERVER_SERVICE_PLACEMENT_CONVERT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "optd/v1/optd.pb.h"
#include "server/session/placement.h"

namespace optd {

// `prefix` is the field path before "placement", e.g. "config.".
absl::StatusOr<Placement> PlacementFromProto(const v1::Placement& placement,
                                             absl::string_view prefix);
void PlacementToProto(const Placement& placement, v1::Placement* out);

// The model of a PlanPlacementRequest (names and shapes; checked by PlanPlacement).
std::vector<ModelTensor> ModelFromProto(const v1::PlanPlacementRequest& request);

}  // namespace optd

#endif  // OPTD_SERVER_SERVICE_PLACEMENT_CONVERT_H_
