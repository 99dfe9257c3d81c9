#include "server/service/config_codec.h"

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"
#include "server/service/proto_convert.h"

namespace optd {

std::string ProtoJsonConfigCodec::Encode(const SessionConfig& config) const {
  v1::SessionConfig message;
  ConfigToProto(config, &message);
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

absl::StatusOr<SessionConfig> ProtoJsonConfigCodec::Decode(absl::string_view json) const {
  v1::SessionConfig message;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), &message, options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config is not an optd.v1.SessionConfig: ", status.ToString()));
  }
  return ConfigFromProto(message);
}

}  // namespace optd
