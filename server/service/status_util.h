// File: status_util.h
//
// The one place where absl::Status becomes grpc::Status. absl's canonical codes are gRPC's codes,
// so the conversion keeps the code number and the message. Pure function, thread-safe.

#ifndef OPTD_SERVER_SERVICE_STATUS_UTIL_H_
#define OPTD_SERVER_SERVICE_STATUS_UTIL_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace optd {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace optd

#endif  // OPTD_SERVER_SERVICE_STATUS_UTIL_H_
