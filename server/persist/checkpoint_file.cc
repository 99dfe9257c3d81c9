#include "server/persist/checkpoint_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace optd {
namespace {

using Json = nlohmann::ordered_json;

constexpr char kMagic[8] = {'O', 'P', 'T', 'D', 'C', 'K', 'P', 'T'};
constexpr size_t kHeaderBytes = 24;
// Arrays are written (and checksummed) in chunks of this size; write-back is started every
// kWriteBackBytes.
constexpr int64_t kChunkBytes = int64_t{1} << 20;
constexpr int64_t kWriteBackBytes = int64_t{64} << 20;
constexpr int64_t kAlign = 64;
// The largest manifest read back: a session's tensors and exactly-once table fit in far less.
constexpr uint32_t kMaxManifestBytes = 1u << 30;

int64_t Align(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

uint32_t Crc32(const void* data, size_t size, uint32_t crc = 0) {
  const auto* bytes = static_cast<const Bytef*>(data);
  while (size > 0) {
    const uInt chunk = static_cast<uInt>(std::min<size_t>(size, 1u << 30));
    crc = static_cast<uint32_t>(crc32(crc, bytes, chunk));
    bytes += chunk;
    size -= chunk;
  }
  return crc;
}

// An I/O failure as a status naming `what` and `path`.
absl::Status IoError(int error, absl::string_view what, absl::string_view path) {
  const std::string message = absl::StrCat(what, " ", path, ": ", std::strerror(error));
  switch (error) {
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return absl::ResourceExhaustedError(message);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(message);
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status DataLoss(absl::string_view path, absl::string_view what) {
  return absl::DataLossError(absl::StrCat("checkpoint ", path, " is corrupt: ", what));
}

// Doubles as JSON: numbers when finite, else "inf", "-inf" or "nan".
Json Number(double v) {
  if (std::isfinite(v)) return v;
  return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
}

double ToDouble(const Json& j) {
  if (j.is_string()) {
    const std::string s = j.get<std::string>();
    if (s == "inf") return std::numeric_limits<double>::infinity();
    if (s == "-inf") return -std::numeric_limits<double>::infinity();
    return std::numeric_limits<double>::quiet_NaN();
  }
  return j.get<double>();
}

Json OutputToJson(const StepOutput& o) {
  return Json{{"version", o.version},
              {"gradient_norm", Number(o.gradient_norm)},
              {"learning_rate", Number(o.learning_rate)},
              {"parameters_version", o.parameters_version},
              {"workers", o.workers},
              {"missing_workers", o.missing_workers},
              {"staleness", o.staleness},
              {"non_finite_parameters", o.non_finite_parameters},
              {"non_finite_tensors", o.non_finite_tensors}};
}

StepOutput OutputFromJson(const Json& j) {
  StepOutput o;
  o.version = j.at("version").get<int64_t>();
  o.gradient_norm = ToDouble(j.at("gradient_norm"));
  o.learning_rate = ToDouble(j.at("learning_rate"));
  o.parameters_version = j.at("parameters_version").get<int64_t>();
  o.workers = j.at("workers").get<int>();
  o.missing_workers = j.at("missing_workers").get<std::vector<std::string>>();
  o.staleness = j.at("staleness").get<int64_t>();
  o.non_finite_parameters = j.value("non_finite_parameters", int64_t{0});
  o.non_finite_tensors = j.value("non_finite_tensors", std::vector<std::string>());
  return o;
}

// One float32 array of the file: where its values are in memory (writing) or go (reading).
struct Array {
  std::string name;
  std::string kind;  // "parameters" or "optimizer"
  int tensor = 0;
  const float* data = nullptr;
  int64_t count = 0;
  uint32_t crc = 0;
  int64_t offset = 0;
};

// The manifest of `state` with `arrays` at their offsets.
Json Manifest(const SessionState& state, const ConfigCodec& codec,
              const std::string& server_incarnation, absl::Time now,
              const std::vector<Array>& arrays) {
  Json tensors = Json::array();
  for (const TensorSpec& t : state.tensors)
    tensors.push_back({{"name", t.name}, {"shape", t.shape}});
  Json optimizer_tensors = Json::array();
  for (const OptimizerState::Tensor& t : state.optimizer.tensors) {
    Json scalars = Json::object();
    for (const auto& [name, value] : t.scalars) scalars[name] = Number(value);
    Json names = Json::array();
    for (const OptimizerState::Array& a : t.arrays) names.push_back(a.name);
    optimizer_tensors.push_back({{"step", t.step}, {"arrays", names}, {"scalars", scalars}});
  }
  Json optimizer_scalars = Json::object();
  for (const auto& [name, value] : state.optimizer.scalars) optimizer_scalars[name] = Number(value);
  Json workers = Json::array();
  for (const ExactlyOnceTable::Worker& w : state.exactly_once.workers) {
    Json recent = Json::array();
    for (const ExactlyOnceTable::Outcome& o : w.recent) {
      recent.push_back({{"sequence", o.sequence}, {"output", OutputToJson(o.output)}});
    }
    workers.push_back({{"id", w.id},
                       {"incarnation", w.incarnation},
                       {"last_sequence", w.last_sequence},
                       {"last_active", w.last_active},
                       {"recent", recent}});
  }
  Json array_list = Json::array();
  for (const Array& a : arrays) {
    array_list.push_back({{"name", a.name},
                          {"kind", a.kind},
                          {"tensor", a.tensor},
                          {"offset", a.offset},
                          {"count", a.count},
                          {"crc32", a.crc}});
  }
  const LrScheduleState& s = state.schedule;
  return Json{
      {"format", "optd-checkpoint"},
      {"format_version", kCheckpointFormatVersion},
      {"session_id", state.id},
      {"version", state.version},
      {"create_time_unix", absl::ToDoubleSeconds(state.create_time - absl::UnixEpoch())},
      {"written_unix", absl::ToDoubleSeconds(now - absl::UnixEpoch())},
      {"server_incarnation", server_incarnation},
      {"config", Json::parse(codec.Encode(state.config))},
      {"tensors", tensors},
      {"schedule",
       {{"step", s.step},
        {"base_lr", Number(s.base_lr)},
        {"plateau_best", Number(s.plateau_best)},
        {"bad_epochs", s.bad_epochs},
        {"cooldown_counter", s.cooldown_counter},
        {"plateau_lr", Number(s.plateau_lr)}}},
      {"optimizer", {{"tensors", optimizer_tensors}, {"scalars", optimizer_scalars}}},
      {"exactly_once",
       {{"last_incarnation", state.exactly_once.last_incarnation},
        {"activity", state.exactly_once.activity},
        {"forgot_unjoined", state.exactly_once.forgot_unjoined},
        {"workers", workers}}},
      {"sync_workers_seen", state.sync_workers_seen},
      {"arrays", array_list},
  };
}

// Writes all of [data, data + size) at `offset` of `fd`.
absl::Status WriteAt(int fd, const void* data, size_t size, int64_t offset,
                     absl::string_view path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, p, std::min<size_t>(size, 1 << 30), offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      return IoError(errno, "cannot write", path);
    }
    p += n;
    size -= static_cast<size_t>(n);
    offset += n;
  }
  return absl::OkStatus();
}

// Reads exactly `size` bytes at `offset` of `fd` into `out`.
absl::Status ReadAt(int fd, void* out, size_t size, int64_t offset, absl::string_view path) {
  char* p = static_cast<char*>(out);
  while (size > 0) {
    const ssize_t n = ::pread(fd, p, std::min<size_t>(size, 1 << 30), offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      return IoError(errno, "cannot read", path);
    }
    if (n == 0) return DataLoss(path, "it ends early (truncated)");
    p += n;
    size -= static_cast<size_t>(n);
    offset += n;
  }
  return absl::OkStatus();
}

// Closes `fd` when it goes out of scope.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
}

}  // namespace

absl::Status WriteCheckpointFile(const std::string& path, const SessionState& state,
                                 const ConfigCodec& codec, const std::string& server_incarnation,
                                 absl::Time now, CheckpointMeta* meta) {
  std::vector<Array> arrays;
  for (size_t t = 0; t < state.parameters.size(); ++t) {
    arrays.push_back({state.tensors[t].name, "parameters", static_cast<int>(t),
                      state.parameters[t]->data(),
                      static_cast<int64_t>(state.parameters[t]->size())});
  }
  for (size_t t = 0; t < state.optimizer.tensors.size(); ++t) {
    for (const OptimizerState::Array& a : state.optimizer.tensors[t].arrays) {
      if (a.values.empty()) continue;
      arrays.push_back({a.name, "optimizer", static_cast<int>(t), a.values.data(),
                        static_cast<int64_t>(a.values.size())});
    }
  }
  // The layout is settled with every CRC at its widest (10 digits): the real manifest is no longer,
  // so the arrays can be written first, each CRC computed in the same pass while its bytes are in
  // cache, and the manifest last, in front of them.
  for (Array& a : arrays) a.crc = std::numeric_limits<uint32_t>::max();
  // The offsets depend on the manifest's length, which depends on the offsets: a few rounds
  // settle it (only the digits of the offsets change).
  int64_t data_start = Align(kHeaderBytes);
  for (int round = 0; round < 8; ++round) {
    int64_t at = data_start;
    for (Array& a : arrays) {
      a.offset = at;
      at = Align(at + a.count * static_cast<int64_t>(sizeof(float)));
    }
    const std::string widest = Manifest(state, codec, server_incarnation, now, arrays).dump(1);
    const int64_t needed = Align(kHeaderBytes + static_cast<int64_t>(widest.size()));
    if (needed == data_start) break;
    data_start = needed;
  }

  const std::string tmp = absl::StrCat(path, ".tmp-", ::getpid());
  Fd out;
  out.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out.fd < 0) return IoError(errno, "cannot create", tmp);
  auto fail = [&](absl::Status status) {
    ::close(out.fd);
    out.fd = -1;
    ::unlink(tmp.c_str());
    return status;
  };
  // The arrays, in chunks: CRC-32, then write. Every kWriteBackBytes the kernel is asked to start
  // writing the new pages to disk (sync_file_range), so the disk works while the CPU computes and
  // the final fsync has little left to do.
  int64_t at = data_start;
  int64_t flushed = 0;
  for (Array& a : arrays) {
    const char* data = reinterpret_cast<const char*>(a.data);
    const int64_t bytes = a.count * static_cast<int64_t>(sizeof(float));
    uint32_t crc = 0;
    for (int64_t done = 0; done < bytes; done += kChunkBytes) {
      const size_t n = static_cast<size_t>(std::min(kChunkBytes, bytes - done));
      crc = Crc32(data + done, n, crc);
      if (absl::Status s = WriteAt(out.fd, data + done, n, a.offset + done, tmp); !s.ok()) {
        return fail(s);
      }
      const int64_t end = a.offset + done + static_cast<int64_t>(n);
      if (end - flushed >= kWriteBackBytes) {
        ::sync_file_range(out.fd, flushed, end - flushed, SYNC_FILE_RANGE_WRITE);  // a hint
        flushed = end;
      }
    }
    a.crc = crc;
    at = a.offset + bytes;
  }
  const std::string manifest = Manifest(state, codec, server_incarnation, now, arrays).dump(1);
  if (Align(kHeaderBytes + static_cast<int64_t>(manifest.size())) > data_start) {
    return fail(absl::InternalError(absl::StrCat("checkpoint ", tmp, ": the manifest grew")));
  }
  char header[kHeaderBytes] = {};
  std::memcpy(header, kMagic, sizeof(kMagic));
  const uint32_t words[4] = {kCheckpointFormatVersion, static_cast<uint32_t>(manifest.size()),
                             Crc32(manifest.data(), manifest.size()), 0};
  std::memcpy(header + 8, words, sizeof(words));  // little-endian hosts only (x86-64, arm64)
  std::string head(header, kHeaderBytes);
  head += manifest;
  head.resize(data_start, '\0');  // the gaps between arrays are holes: they read as zeros
  if (absl::Status s = WriteAt(out.fd, head.data(), head.size(), 0, tmp); !s.ok()) {
    return fail(s);
  }
  if (::fsync(out.fd) != 0) return fail(IoError(errno, "cannot fsync", tmp));
  if (::close(out.fd) != 0) {
    out.fd = -1;
    ::unlink(tmp.c_str());
    return IoError(errno, "cannot close", tmp);
  }
  out.fd = -1;
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    ::unlink(tmp.c_str());
    return IoError(error, "cannot rename the checkpoint to", path);
  }
  const std::string dir = DirectoryOf(path);
  Fd d;
  d.fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d.fd < 0 || ::fsync(d.fd) != 0) return IoError(errno, "cannot fsync directory", dir);
  if (meta != nullptr) {
    meta->server_incarnation = server_incarnation;
    meta->written = now;
    meta->bytes = at;
  }
  return absl::OkStatus();
}

absl::StatusOr<SessionState> ReadCheckpointFile(const std::string& path, const ConfigCodec& codec,
                                                CheckpointMeta* meta) {
  Fd in;
  in.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (in.fd < 0) return IoError(errno, "cannot open", path);
  struct stat st {};
  if (::fstat(in.fd, &st) != 0) return IoError(errno, "cannot stat", path);
  const int64_t file_size = st.st_size;
  char header[kHeaderBytes];
  if (file_size < static_cast<int64_t>(kHeaderBytes)) return DataLoss(path, "no header");
  if (absl::Status s = ReadAt(in.fd, header, kHeaderBytes, 0, path); !s.ok()) return s;
  if (std::memcmp(header, kMagic, sizeof(kMagic)) != 0) {
    return DataLoss(path, "it does not start with OPTDCKPT");
  }
  uint32_t words[4];
  std::memcpy(words, header + 8, sizeof(words));
  if (words[0] != kCheckpointFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat("checkpoint ", path, " has format version ",
                                                      words[0], "; this optd reads version ",
                                                      kCheckpointFormatVersion));
  }
  if (words[1] > kMaxManifestBytes || kHeaderBytes + words[1] > static_cast<uint64_t>(file_size)) {
    return DataLoss(path, absl::StrCat("its manifest length ", words[1], " exceeds the file"));
  }
  std::string manifest(words[1], '\0');
  if (absl::Status s = ReadAt(in.fd, manifest.data(), manifest.size(), kHeaderBytes, path);
      !s.ok()) {
    return s;
  }
  if (Crc32(manifest.data(), manifest.size()) != words[2]) {
    return DataLoss(path, "the manifest's checksum does not match");
  }
  SessionState state;
  try {
    const Json m = Json::parse(manifest);
    if (m.at("format").get<std::string>() != "optd-checkpoint") {
      return DataLoss(path, "its manifest is not an optd checkpoint's");
    }
    state.id = m.at("session_id").get<std::string>();
    state.version = m.at("version").get<int64_t>();
    state.create_time = absl::UnixEpoch() + absl::Seconds(m.at("create_time_unix").get<double>());
    absl::StatusOr<SessionConfig> config = codec.Decode(m.at("config").dump());
    if (!config.ok()) {
      return absl::DataLossError(
          absl::StrCat("checkpoint ", path, ": its config: ", config.status().message()));
    }
    state.config = *std::move(config);
    for (const Json& t : m.at("tensors")) {
      TensorSpec spec{t.at("name").get<std::string>(), t.at("shape").get<std::vector<int64_t>>(),
                      1};
      for (int64_t d : spec.shape) spec.num_elements *= d;
      state.tensors.push_back(std::move(spec));
    }
    const Json& s = m.at("schedule");
    state.schedule.step = s.at("step").get<int64_t>();
    state.schedule.base_lr = ToDouble(s.at("base_lr"));
    state.schedule.plateau_best = ToDouble(s.at("plateau_best"));
    state.schedule.bad_epochs = s.at("bad_epochs").get<int64_t>();
    state.schedule.cooldown_counter = s.at("cooldown_counter").get<int64_t>();
    state.schedule.plateau_lr = ToDouble(s.at("plateau_lr"));
    const Json& o = m.at("optimizer");
    for (const Json& t : o.at("tensors")) {
      OptimizerState::Tensor tensor;
      tensor.step = t.at("step").get<int64_t>();
      for (const Json& name : t.at("arrays"))
        tensor.arrays.push_back({name.get<std::string>(), {}});
      for (const auto& [name, value] : t.at("scalars").items()) {
        tensor.scalars.emplace_back(name, static_cast<float>(ToDouble(value)));
      }
      state.optimizer.tensors.push_back(std::move(tensor));
    }
    for (const auto& [name, value] : o.at("scalars").items()) {
      state.optimizer.scalars.emplace_back(name, ToDouble(value));
    }
    const Json& e = m.at("exactly_once");
    state.exactly_once.last_incarnation = e.at("last_incarnation").get<int64_t>();
    state.exactly_once.activity = e.at("activity").get<int64_t>();
    state.exactly_once.forgot_unjoined = e.at("forgot_unjoined").get<bool>();
    for (const Json& w : e.at("workers")) {
      ExactlyOnceTable::Worker worker{w.at("id").get<std::string>(),
                                      w.at("incarnation").get<int64_t>(),
                                      w.at("last_sequence").get<int64_t>(),
                                      w.at("last_active").get<int64_t>(),
                                      {}};
      for (const Json& r : w.at("recent")) {
        worker.recent.push_back({r.at("sequence").get<int64_t>(), OutputFromJson(r.at("output"))});
      }
      state.exactly_once.workers.push_back(std::move(worker));
    }
    state.sync_workers_seen = m.at("sync_workers_seen").get<std::vector<std::string>>();
    state.parameters.resize(state.tensors.size());
    for (const Json& a : m.at("arrays")) {
      const std::string kind = a.at("kind").get<std::string>();
      const std::string name = a.at("name").get<std::string>();
      const int tensor = a.at("tensor").get<int>();
      const int64_t offset = a.at("offset").get<int64_t>();
      const int64_t count = a.at("count").get<int64_t>();
      if (tensor < 0 || tensor >= static_cast<int>(state.tensors.size()) || count < 0 ||
          offset < 0 || count > state.tensors[tensor].num_elements ||
          offset + count * static_cast<int64_t>(sizeof(float)) > file_size) {
        return DataLoss(path, absl::StrCat("array ", name, " of tensor ", tensor,
                                           " lies outside the file or its tensor"));
      }
      std::vector<float> values(count);
      if (absl::Status st = ReadAt(in.fd, values.data(), count * sizeof(float), offset, path);
          !st.ok()) {
        return st;
      }
      if (Crc32(values.data(), count * sizeof(float)) != a.at("crc32").get<uint32_t>()) {
        return DataLoss(path, absl::StrCat("the checksum of array ", name, " of tensor ",
                                           state.tensors[tensor].name, " does not match"));
      }
      if (kind == "parameters") {
        state.parameters[tensor] = std::make_shared<std::vector<float>>(std::move(values));
      } else if (kind == "optimizer" && tensor < static_cast<int>(state.optimizer.tensors.size())) {
        bool placed = false;
        for (OptimizerState::Array& slot : state.optimizer.tensors[tensor].arrays) {
          if (slot.name == name && slot.values.empty()) {
            slot.values = std::move(values);
            placed = true;
            break;
          }
        }
        if (!placed) return DataLoss(path, absl::StrCat("array ", name, " has no place"));
      } else {
        return DataLoss(path, absl::StrCat("array ", name, " has unknown kind ", kind));
      }
    }
    for (size_t t = 0; t < state.parameters.size(); ++t) {
      if (state.parameters[t] == nullptr) {
        return DataLoss(path, absl::StrCat("tensor ", state.tensors[t].name, " has no parameters"));
      }
    }
    if (meta != nullptr) {
      meta->server_incarnation = m.value("server_incarnation", "");
      meta->written = absl::UnixEpoch() + absl::Seconds(m.value("written_unix", 0.0));
      meta->bytes = file_size;
    }
  } catch (const Json::exception& e) {
    return DataLoss(path, absl::StrCat("its manifest: ", e.what()));
  }
  return state;
}

}  // namespace optd
