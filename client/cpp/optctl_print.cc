#include "client/cpp/optctl_print.h"

#include <algorithm>
#include <cmath>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/cpp/optctl_flags.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace optd {
namespace client {
namespace optctl {

std::string Shape(const google::protobuf::RepeatedField<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string FormatTime(double unix_seconds) {
  if (unix_seconds <= 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(std::llround(unix_seconds)),
                          absl::UTCTimeZone());
}

void PrintSession(const v1::Session& session) {
  std::cout << "session:      " << session.session_id() << "\n";
  if (!session.tenant().empty()) std::cout << "tenant:       " << session.tenant() << "\n";
  std::cout << "optimizer:    " << OptimizerKind(session.config().optimizer()) << "\n";
  v1::OptimizerConfig optimizer_config = session.config().optimizer();
  if (const google::protobuf::Message* optimizer = MutableOptimizer(&optimizer_config)) {
    const google::protobuf::Descriptor* descriptor = optimizer->GetDescriptor();
    const google::protobuf::Reflection* reflection = optimizer->GetReflection();
    for (int i = 0; i < descriptor->field_count(); ++i) {
      const google::protobuf::FieldDescriptor* field = descriptor->field(i);
      std::string value;
      if (field->has_presence() && !reflection->HasField(*optimizer, field)) {
        value = "(unset)";
      } else if (field->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_DOUBLE) {
        value = absl::StrFormat("%.10g", reflection->GetDouble(*optimizer, field));
      } else if (field->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_INT64) {
        value = absl::StrCat(reflection->GetInt64(*optimizer, field));
      } else if (field->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_BOOL) {
        value = reflection->GetBool(*optimizer, field) ? "true" : "false";
      } else if (field->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_ENUM) {
        // NORM_PER_TENSOR -> per_tensor, the spelling of the flag.
        std::string name = reflection->GetEnum(*optimizer, field)->name();
        const size_t underscore = name.find('_');
        value = absl::AsciiStrToLower(
            underscore == std::string::npos ? name : name.substr(underscore + 1));
      } else {
        value = "?";
      }
      std::cout << absl::StrFormat("  %-26s %s\n", field->name(), value);
    }
  }
  const v1::SessionConfig& config = session.config();
  std::cout << "schedule:     " << FormatSchedule(config.schedule()) << "\n";
  const std::string clipping = FormatFields(config.clipping());
  std::cout << "clipping:     " << (clipping.empty() ? "off" : clipping) << "\n";
  std::cout << "consistency:  " << FormatConsistency(config.consistency()) << "\n";
  std::cout << "learning rate: " << absl::StrFormat("%.10g", session.learning_rate())
            << " (next step)\n";
  if (!session.optimizer_estimates().empty()) {
    // Sorted by name: a protobuf map has no order of its own.
    std::map<std::string, double> estimates(session.optimizer_estimates().begin(),
                                            session.optimizer_estimates().end());
    std::vector<std::string> pairs;
    for (const auto& [name, value] : estimates) {
      pairs.push_back(absl::StrFormat("%s=%.10g", name, value));
    }
    std::cout << "estimates:    " << absl::StrJoin(pairs, " ") << "\n";
  }
  std::cout << "tensors:      " << session.tensors_size() << " (" << session.num_parameters()
            << " parameters)\n";
  size_t width = 0;
  for (const v1::TensorInfo& t : session.tensors()) width = std::max(width, t.name().size());
  for (const v1::TensorInfo& t : session.tensors()) {
    std::cout << absl::StrFormat("  %-*s  %-16s %d\n", static_cast<int>(width), t.name(),
                                 Shape(t.shape()), t.num_elements());
  }
  std::cout << "version:      " << session.version() << "\n";
  if (session.durable_version() >= 0) {
    std::cout << "durable:      " << session.durable_version()
              << " (newest checkpointed version; later steps are lost if the server is killed)\n";
  } else {
    std::cout << "durable:      none (no checkpoint yet, or the server runs without "
                 "--checkpoint_dir)\n";
  }
  std::cout << "parameter bytes:        " << session.parameter_bytes() << "\n";
  std::cout << "optimizer state bytes:  " << session.optimizer_state_bytes() << " ("
            << session.state_bytes_per_parameter()
            << " per parameter once every tensor has stepped)\n";
  std::cout << "created:      " << FormatTime(session.create_time_seconds()) << "\n";
}

void PrintSessionList(const std::vector<v1::Session>& sessions) {
  size_t width = 2;
  bool tenants = false;  // an admin's list: every tenant's sessions
  size_t tenant_width = 6;
  for (const v1::Session& session : sessions) {
    width = std::max(width, session.session_id().size());
    tenants = tenants || !session.tenant().empty();
    tenant_width = std::max(tenant_width, session.tenant().size());
  }
  const std::string tenant_header =
      tenants ? absl::StrFormat("%-*s  ", static_cast<int>(tenant_width), "TENANT") : "";
  std::cout << tenant_header
            << absl::StrFormat("%-*s  %-13s %8s %8s %12s  %s\n", static_cast<int>(width), "ID",
                               "OPTIMIZER", "VERSION", "TENSORS", "PARAMETERS", "CREATED");
  for (const v1::Session& session : sessions) {
    if (tenants) {
      std::cout << absl::StrFormat("%-*s  ", static_cast<int>(tenant_width),
                                   session.tenant().empty() ? "-" : session.tenant());
    }
    std::cout << absl::StrFormat(
        "%-*s  %-13s %8d %8d %12d  %s\n", static_cast<int>(width), session.session_id(),
        OptimizerKind(session.config().optimizer()), session.version(), session.tensors_size(),
        session.num_parameters(), FormatTime(session.create_time_seconds()));
  }
}

}  // namespace optctl
}  // namespace client
}  // namespace optd
