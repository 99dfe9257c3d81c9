// File: call_tracker.h
//
// CallTracker: counts the gRPC calls open on a server, and of them the streams that wait for their
// next request, so that its shutdown knows when nothing is left to finish. gRPC's own shutdown
// waits for every call, a stream included, however long its client keeps it open, and then for
// each client to answer the GOAWAY, which an idle channel of a C++ or Python client answers only
// when it next polls (seconds later) or never. OptdServer::Shutdown cancels the rest as soon as
// every call left is an idle stream.
//
// Who calls it: OptdServer (server.cc) installs NewInterceptorFactory() on its ServerBuilder and
// calls WaitForIdle during Shutdown; the StreamSteps reactor calls EnterIdle/LeaveIdle around
// each read. gRPC creates one interceptor with every call and deletes it
// with the call, from its own threads.
//
// Thread safety: every method is safe from any thread; the count is guarded by mu_. No errors.

#ifndef OPTD_SERVER_SERVICE_CALL_TRACKER_H_
#define OPTD_SERVER_SERVICE_CALL_TRACKER_H_

#include <cstdint>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/support/server_interceptor.h"

namespace optd {

class CallTracker {
 public:
  // Calls of these methods are not counted: they never end by themselves (a health Watch is open
  // for as long as its client wants), so waiting for them would only wait for the deadline.
  static constexpr const char* kUncounted[] = {"/grpc.health.v1.Health/Watch"};

  // A factory for ServerBuilder::experimental().SetInterceptorCreators. It refers to this tracker,
  // which must outlive the server.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewInterceptorFactory();

  // A stream (StreamSteps) waits for its next request from now on (EnterIdle), or no longer
  // (LeaveIdle, when the read completes, whether a request came or the call ended).
  void EnterIdle();
  void LeaveIdle();

  // Blocks until every open call is an idle stream, or until `deadline`; returns whether every
  // one is (then nothing is lost by cancelling them all).
  bool WaitForIdle(absl::Time deadline) const;

 private:
  friend class CountingInterceptor;
  void Opened();
  void Closed();
  bool Idle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  int64_t open_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t idle_ ABSL_GUARDED_BY(mu_) = 0;  // of them, streams waiting for a request
};

}  // namespace optd

#endif  // OPTD_SERVER_SERVICE_CALL_TRACKER_H_
