// File: config_codec.h
//
// ProtoJsonConfigCodec: the ConfigCodec (server/persist/checkpoint_file.h) that writes a session's
// config into a checkpoint as the proto3 JSON of optd.v1.SessionConfig (every field, defaults
// made explicit), and reads it back through the same validation as CreateSession. Anyone can read
// it with a JSON parser; optd reads it with the contract's own rules.
//
// Who uses it: OptdServer, for its Checkpointer. Stateless: thread-safe.

#ifndef OPTD_SERVER_SERVICE_CONFIG_CODEC_H_
#define OPTD_SERVER_SERVICE_CONFIG_CODEC_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/persist/checkpoint_file.h"

namespace optd {

class ProtoJsonConfigCodec final : public ConfigCodec {
 public:
  std::string Encode(const SessionConfig& config) const override;
  absl::StatusOr<SessionConfig> Decode(absl::string_view json) const override;
};

}  // namespace optd

#endif  // OPTD_SERVER_SERVICE_CONFIG_CODEC_H_
