// File: checkpoint_file.h
//
// One checkpoint of one session as one self-describing file, readable without optd (numpy and the
// standard library suffice: README "Durability" shows how). Layout:
//
//   offset 0   "OPTDCKPT"                       magic, 8 bytes
//          8   uint32 LE format version          kCheckpointFormatVersion
//         12   uint32 LE manifest length M
//         16   uint32 LE CRC-32 of the manifest  (zlib's crc32, as Python's zlib.crc32)
//         20   uint32 LE 0                       reserved
//         24   manifest: M bytes of UTF-8 JSON
//              zero padding to a multiple of 64
//              arrays: raw little-endian float32, each at the offset the manifest gives (a
//              multiple of 64), each with its element count and CRC-32 in the manifest
//
// The manifest holds everything else of the session's durable state (session_state.h): id,
// version, creation time, the config (as the proto3 JSON of optd.v1.SessionConfig, given by the
// ConfigCodec), tensors, learning-rate schedule state, optimizer step counters and scalars, the
// exactly-once table and the SYNC workers seen; and "arrays": per tensor its parameters
// ("kind": "parameters") and each optimizer state array ("kind": "optimizer", named as
// torch.optim names it). Doubles that JSON cannot hold (inf) are written as strings.
//
// WriteCheckpointFile reads each array once: it checksums and writes it in 1 MiB chunks, asking the
// kernel to start write-back every 64 MiB, and writes the header and manifest last (laid out for
// the widest checksums, so they fit in front of the arrays). It is atomic: it writes a temporary
// file in the same directory, fsyncs it,
// renames it over `path` and fsyncs the directory, so a crash at any moment leaves either the old
// file (or none) or the complete new one. ReadCheckpointFile verifies the magic, the format
// version, and every checksum: a torn or corrupted file is DataLoss, never a wrong session.
//
// Who calls it: the Checkpointer (checkpointer.h) and tests. Pure functions of their arguments and
// the file system: thread-safe on distinct paths. Errors name the path and what went wrong:
// ResourceExhausted for a full disk (ENOSPC, EDQUOT, EFBIG), PermissionDenied, NotFound, DataLoss
// for a corrupt file, InvalidArgument for a state that does not fit (from Session::Restore's
// checks, at read time).

#ifndef OPTD_SERVER_PERSIST_CHECKPOINT_FILE_H_
#define OPTD_SERVER_PERSIST_CHECKPOINT_FILE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/session/session_config.h"
#include "server/session/session_state.h"

namespace optd {

inline constexpr uint32_t kCheckpointFormatVersion = 1;

// A SessionConfig as text and back: the service encodes it as the proto3 JSON of
// optd.v1.SessionConfig (persist knows no protobuf). Thread-safe.
class ConfigCodec {
 public:
  virtual ~ConfigCodec() = default;
  virtual std::string Encode(const SessionConfig& config) const = 0;
  virtual absl::StatusOr<SessionConfig> Decode(absl::string_view json) const = 0;
};

// What a checkpoint says about where and when it was written.
struct CheckpointMeta {
  std::string server_incarnation;  // the optd process that wrote it
  absl::Time written;
  int64_t bytes = 0;  // the file's size
};

// Writes `state` to `path` atomically (see the file comment); on success *meta (if not null) gets
// the file's size. On failure nothing is left at `path` that was not there before.
absl::Status WriteCheckpointFile(const std::string& path, const SessionState& state,
                                 const ConfigCodec& codec, const std::string& server_incarnation,
                                 absl::Time now, CheckpointMeta* meta = nullptr);

// Reads and verifies the checkpoint at `path`.
absl::StatusOr<SessionState> ReadCheckpointFile(const std::string& path, const ConfigCodec& codec,
                                                CheckpointMeta* meta = nullptr);

}  // namespace optd

#endif  // OPTD_SERVER_PERSIST_CHECKPOINT_FILE_H_
