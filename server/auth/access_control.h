// File: access_control.h
//
// AccessControl: who the caller is (Authenticate), what it may do (Authorize), and its tenant's
// quotas (CheckSessionQuota, AdmitStep), from the access file (access_file.h, --auth_tokens_file).
// Knows nothing of gRPC: the service hands it the call's `authorization` metadata and the verified
// identities of the peer's client certificate.
//
//   - Without an access file, every caller is the anonymous principal: tenant "", role admin (optd
//     as it was before tokens; with --tls_client_ca only verified peers get that far).
//   - With one, a call needs a bearer token listed in it, or (mTLS) a client certificate whose
//     identity a `cert:` line lists; a token, when sent, is what counts.
//   - The file is re-read when it changes (polled every `reload_interval`) and on Reload() (main.cc
//     calls it on SIGHUP). A file that no longer parses is reported and the previous one kept.
//
// Token hashes are compared in constant time (CRYPTO_memcmp, every entry, no early exit); a token
// is never stored, logged or put in a message.
//
// Who uses it: the service (server/service) and main.cc. Thread-safe: mu_ guards the current file
// (replaced whole on reload), rate_mu_ the step-rate buckets.
// Errors: Unauthenticated (no token, an unknown one, a malformed authorization value),
// PermissionDenied (the role does not allow the call), ResourceExhausted (a quota, with the use
// and the limit), and from Open/Reload those of ReadAccessFile.

#ifndef OPTD_SERVER_AUTH_ACCESS_CONTROL_H_
#define OPTD_SERVER_AUTH_ACCESS_CONTROL_H_

#include <sys/stat.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/clock.h"
#include "server/auth/access_file.h"

namespace optd {

struct AccessControlOptions {
  // --auth_tokens_file; empty: no authentication (every caller is the anonymous admin).
  std::string tokens_file;
  // How often the file's inode, size and modification time are looked at. Zero: never (Reload
  // only).
  absl::Duration reload_interval = absl::Seconds(1);
};

// What a caller asks to do: one per RPC of optd.v1.Optimizer.
enum class Action {
  kCreateSession,
  kGetSession,
  kListSessions,
  kUpdateSession,
  kDeleteSession,
  kPull,
  kJoinSession,
  kStep,
  kCheckpoint,
  kPlanPlacement,
};

absl::string_view ActionName(Action action);  // the RPC's name

// An authenticated caller.
struct Principal {
  std::string tenant;  // "": the anonymous tenant (no authentication)
  Role role = Role::kAdmin;
  std::string name = "anonymous";  // for the audit log; never a secret
  bool authenticated = false;      // false: the server has no access file
};

class AccessControl {
 public:
  // Reads the access file (if any) and starts watching it. `clock` (step rates) must outlive it.
  static absl::StatusOr<std::unique_ptr<AccessControl>> Open(AccessControlOptions options,
                                                             Clock* clock = Clock::Real());
  ~AccessControl();

  AccessControl(const AccessControl&) = delete;
  AccessControl& operator=(const AccessControl&) = delete;

  // Whether calls need a token or a listed certificate.
  bool enabled() const { return !options_.tokens_file.empty(); }

  // The caller of a call with `authorization` metadata (nullopt: none sent) from a peer whose
  // client certificate has the verified `identities` (empty without mTLS).
  absl::StatusOr<Principal> Authenticate(std::optional<absl::string_view> authorization,
                                         absl::Span<const std::string> identities) const;

  // OK if `who`'s role allows `action` (on its own tenant's sessions; an admin's on any).
  static absl::Status Authorize(const Principal& who, Action action);

  // OK if `who`'s tenant may hold one more session of `new_bytes` (parameters + optimizer state)
  // beside the `sessions` sessions of `bytes` it holds now.
  absl::Status CheckSessionQuota(const Principal& who, int64_t sessions, int64_t bytes,
                                 int64_t new_bytes) const;

  // Takes one step from `who`'s tenant's steps_per_second budget (a token bucket holding one
  // second's worth); ResourceExhausted when it is empty.
  absl::Status AdmitStep(const Principal& who);

  // Re-reads the file now. On an error the previous contents stay in force.
  absl::Status Reload();

  // Incremented by every successful reload: a stream re-authenticates its caller when it moved.
  int64_t generation() const;

 private:
  AccessControl(AccessControlOptions options, Clock* clock) : options_(options), clock_(clock) {}

  TenantQuota QuotaOf(absl::string_view tenant) const;
  void Watch();

  const AccessControlOptions options_;
  Clock* const clock_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const AccessFile> file_ ABSL_GUARDED_BY(mu_);
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  struct stat seen_ ABSL_GUARDED_BY(mu_) {};  // the file as last read (or last failed to read)
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  struct Bucket {
    double tokens = 0;
    absl::Time refilled;
    absl::Time window_start;  // the use shown in messages: steps admitted since then (< 1 s ago)
    int64_t window_steps = 0;
  };
  absl::Mutex rate_mu_;
  absl::flat_hash_map<std::string, Bucket> buckets_ ABSL_GUARDED_BY(rate_mu_);

  std::thread watcher_;  // last: started after everything it reads
};

}  // namespace optd

#endif  // OPTD_SERVER_AUTH_ACCESS_CONTROL_H_
