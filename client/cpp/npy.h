// File: npy.h
//
// Writes a HostTensor as a NumPy .npy file (format version 1.0): dtype '<f4' (little-endian
// float32), C order, the tensor's shape (a scalar is shape ()); a row-sparse tensor is written as
// the rows it holds, shape (len(rows), *shape[1:]). numpy.load reads it back exactly.
//
// Who may call it: optctl pull, and any C++ code that hands tensors to Python tooling.
//
// Thread safety: pure functions; WriteNpy touches only `path` and a temporary file beside it.
//
// Errors: InvalidArgument if the tensor's values do not match its shape (or a dimension is
// negative); WriteNpy returns the errno-derived status of a failed open, write or rename (e.g.
// NotFound for a missing directory, PermissionDenied). A failed WriteNpy leaves no file at `path`
// that was not there before.

#ifndef OPTD_CLIENT_CPP_NPY_H_
#define OPTD_CLIENT_CPP_NPY_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/cpp/host_tensor.h"

namespace optd {
namespace client {

// The complete contents of the .npy file for `tensor`.
absl::StatusOr<std::string> EncodeNpy(const HostTensor& tensor);

// Writes EncodeNpy(tensor) to `path` atomically: to a temporary file in the same directory, then
// renamed over `path`.
absl::Status WriteNpy(const std::string& path, const HostTensor& tensor);

}  // namespace client
}  // namespace optd

#endif  // OPTD_CLIENT_CPP_NPY_H_
