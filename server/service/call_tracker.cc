#include "server/service/call_tracker.h"

#include <cstring>

namespace optd {

// gRPC creates one with each call and deletes it with the call.
class CountingInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit CountingInterceptor(CallTracker* tracker) : tracker_(tracker) { tracker_->Opened(); }
  ~CountingInterceptor() override { tracker_->Closed(); }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    methods->Proceed();
  }

 private:
  CallTracker* const tracker_;
};

namespace {

class CountingInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit CountingInterceptorFactory(CallTracker* tracker) : tracker_(tracker) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    if (info->method() != nullptr) {
      for (const char* uncounted : CallTracker::kUncounted) {
        if (std::strcmp(info->method(), uncounted) == 0) return nullptr;
      }
    }
    return new CountingInterceptor(tracker_);
  }

 private:
  CallTracker* const tracker_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
CallTracker::NewInterceptorFactory() {
  return std::make_unique<CountingInterceptorFactory>(this);
}

bool CallTracker::WaitForIdle(absl::Time deadline) const {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithDeadline(absl::Condition(this, &CallTracker::Idle), deadline);
}

bool CallTracker::Idle() const { return open_ == idle_; }

void CallTracker::EnterIdle() {
  absl::MutexLock lock(&mu_);
  ++idle_;
}

void CallTracker::LeaveIdle() {
  absl::MutexLock lock(&mu_);
  --idle_;
}

void CallTracker::Opened() {
  absl::MutexLock lock(&mu_);
  ++open_;
}

void CallTracker::Closed() {
  absl::MutexLock lock(&mu_);
  --open_;
}

}  // namespace optd
