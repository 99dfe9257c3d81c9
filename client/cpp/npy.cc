#include "client/cpp/npy.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/base/config.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace optd {
namespace client {
namespace {

#ifdef ABSL_IS_BIG_ENDIAN
#error "EncodeNpy writes '<f4' with memcpy; big-endian hosts need byte swaps"
#endif
static_assert(sizeof(float) == 4, "float must be IEEE binary32");

// The header dictionary of format 1.0 must make the preamble plus header a multiple of 64 bytes
// (numpy's alignment) and end in '\n'.
constexpr size_t kAlignment = 64;
constexpr char kMagic[] = "\x93NUMPY";  // 6 bytes, then the version bytes 1, 0

std::string ShapeTuple(const std::vector<int64_t>& shape) {
  if (shape.size() == 1) return absl::StrCat("(", shape[0], ",)");
  return absl::StrCat("(", absl::StrJoin(shape, ", "), ")");
}

}  // namespace

absl::StatusOr<std::string> EncodeNpy(const HostTensor& tensor) {
  // The array written: the tensor itself, or the rows a row-sparse tensor holds.
  std::vector<int64_t> shape = tensor.shape;
  if (tensor.row_sparse()) {
    if (shape.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", tensor.name, "' is row-sparse but its shape is []"));
    }
    shape[0] = static_cast<int64_t>(tensor.rows->size());
  }
  int64_t n = 1;
  for (const int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "' has shape [",
                                                     absl::StrJoin(tensor.shape, ", "),
                                                     "]; dimensions must be >= 0"));
    }
    n *= d;
  }
  if (static_cast<int64_t>(tensor.values.size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "' has ",
                                                   tensor.values.size(), " values; shape [",
                                                   absl::StrJoin(shape, ", "), "] needs ", n));
  }
  std::string header =
      absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': ", ShapeTuple(shape), ", }");
  const size_t preamble = 6 + 2 + 2;                     // magic, version, header length
  const size_t unpadded = preamble + header.size() + 1;  // + '\n'
  header.append((kAlignment - unpadded % kAlignment) % kAlignment, ' ');
  header.push_back('\n');

  std::string out(kMagic, 6);
  out.push_back('\x01');
  out.push_back('\x00');
  const uint16_t header_len = static_cast<uint16_t>(header.size());  // < 2^16 with <= 8 dims
  out.push_back(static_cast<char>(header_len & 0xff));
  out.push_back(static_cast<char>(header_len >> 8));
  out += header;
  const size_t data_offset = out.size();
  out.resize(data_offset + tensor.values.size() * sizeof(float));
  if (!tensor.values.empty()) {
    std::memcpy(out.data() + data_offset, tensor.values.data(),
                tensor.values.size() * sizeof(float));
  }
  return out;
}

absl::Status WriteNpy(const std::string& path, const HostTensor& tensor) {
  absl::StatusOr<std::string> bytes = EncodeNpy(tensor);
  if (!bytes.ok()) return bytes.status();

  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", tmp));
  const char* p = bytes->data();
  size_t left = bytes->size();
  int error_number = 0;
  while (left > 0) {
    const ssize_t n = write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      error_number = errno;
      break;
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (close(fd) != 0 && error_number == 0) error_number = errno;
  if (error_number != 0) {
    unlink(tmp.c_str());
    return absl::ErrnoToStatus(error_number, absl::StrCat("cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    error_number = errno;
    unlink(tmp.c_str());
    return absl::ErrnoToStatus(error_number, absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

}  // namespace client
}  // namespace optd
