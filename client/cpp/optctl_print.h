// File: optctl_print.h
//
// How optctl prints sessions on stdout: `describe` (and create, update) one session with every
// hyperparameter, `list` a table (with a TENANT column when the server has tenants, i.e. runs with
// an access file; an admin's list holds every tenant's sessions, named tenant:id).

#ifndef OPTD_CLIENT_CPP_OPTCTL_PRINT_H_
#define OPTD_CLIENT_CPP_OPTCTL_PRINT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "google/protobuf/repeated_field.h"
#include "optd/v1/optd.pb.h"

namespace optd {
namespace client {
namespace optctl {

// "[784, 10]".
std::string Shape(const google::protobuf::RepeatedField<int64_t>& shape);

// "2026-12-03T08:00:00Z" (UTC), or "-" for 0.
std::string FormatTime(double unix_seconds);

// Every field of the session, one per line (hyperparameters indented), its tenant if it has one.
void PrintSession(const v1::Session& session);

// One line per session under a header; a TENANT column when any session names its tenant.
void PrintSessionList(const std::vector<v1::Session>& sessions);

}  // namespace optctl
}  // namespace client
}  // namespace optd

#endif  // OPTD_CLIENT_CPP_OPTCTL_PRINT_H_
