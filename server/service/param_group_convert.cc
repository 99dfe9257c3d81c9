// Parameter groups from optd.v1 (param_group_convert.h).

#include "server/service/param_group_convert.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "server/service/proto_convert.h"

namespace optd {
namespace {

// The optimizer kind `config` sets, by its field name ("adam").
std::string KindOf(const v1::OptimizerConfig& config) {
  const google::protobuf::OneofDescriptor* kinds =
      v1::OptimizerConfig::descriptor()->FindOneofByName("kind");
  return config.GetReflection()->GetOneofFieldDescriptor(config, kinds)->name();
}

}  // namespace

absl::Status ParamGroupsFromProto(const v1::SessionConfig& config, SessionConfig* out_config) {
  SessionConfig& out = *out_config;
  const v1::OptimizerConfig& opt = config.optimizer();
  // Parameter groups: their tensors are checked against the session's by Session::Create.
  for (int g = 0; g < config.param_groups_size(); ++g) {
    const v1::ParamGroup& group = config.param_groups(g);
    const std::string field = absl::StrCat("config.param_groups[", g, "]");
    if (group.tensors().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".tensors is empty: a parameter group needs at least one tensor"));
    }
    ParamGroupConfig converted;
    converted.tensors.assign(group.tensors().begin(), group.tensors().end());
    converted.optimizer = out.optimizer;
    if (group.optimizer().kind_case() != v1::OptimizerConfig::KIND_NOT_SET) {
      if (group.optimizer().kind_case() != opt.kind_case()) {
        const std::string kind = KindOf(group.optimizer());
        return absl::InvalidArgumentError(
            absl::StrCat(field, ".optimizer is ", kind, " but config.optimizer is ",
                         std::string(OptimizerName(out.optimizer)),
                         "; every parameter group runs the session's optimizer kind"));
      }
      if (absl::Status s = MergeOptimizerFromProto(group.optimizer(), /*require_same_kind=*/true,
                                                   field + ".", &converted.optimizer);
          !s.ok()) {
        return s;
      }
    }
    out.param_groups.push_back(std::move(converted));
  }
  return absl::OkStatus();
}

void ParamGroupUpdatesFromProto(const v1::UpdateSessionRequest& request, SessionUpdate* update) {
  for (int i = 0; i < request.param_groups_size(); ++i) {
    const v1::ParamGroupUpdate& entry = request.param_groups(i);
    update->param_groups.emplace_back(entry.index(), [&entry, i](OptimizerOptions* options) {
      if (entry.optimizer().kind_case() == v1::OptimizerConfig::KIND_NOT_SET) {
        return absl::OkStatus();  // nothing to change
      }
      if (KindOf(entry.optimizer()) != OptimizerName(*options)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "param_groups[", i, "].optimizer is ", KindOf(entry.optimizer()), " but group ",
            entry.index(), " runs ", std::string(OptimizerName(*options)),
            "; the optimizer kind cannot change"));
      }
      return MergeOptimizerFromProto(entry.optimizer(), /*require_same_kind=*/true,
                                     absl::StrCat("param_groups[", i, "]."), options);
    });
  }
}

}  // namespace optd
