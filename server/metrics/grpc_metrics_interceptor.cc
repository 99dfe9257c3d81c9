#include "server/metrics/grpc_metrics_interceptor.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"

namespace optd {
namespace {

using grpc::experimental::InterceptionHookPoints;
using prometheus::Histogram;

// Go's prometheus.DefBuckets {.005 ... 10} plus finer buckets below 5 ms, where optd's calls live.
const Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* const kBuckets =
      new Histogram::BucketBoundaries{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                      0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
  return *kBuckets;
}

constexpr absl::string_view kGoCodeNames[kNumGrpcCodes] = {
    "OK",       "Canceled",       "Unknown",          "InvalidArgument",   "DeadlineExceeded",
    "NotFound", "AlreadyExists",  "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
    "Aborted",  "OutOfRange",     "Unimplemented",    "Internal",          "Unavailable",
    "DataLoss", "Unauthenticated"};

int64_t NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// One per RPC (gRPC creates it with the call and deletes it when the call is done): maps gRPC's
// hooks onto a GrpcCallRecorder.
class MetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit MetricsInterceptor(const GrpcServerMetrics::MethodMetrics* method) : call_(method) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      call_.Start();
    }
    // At the end of a stream the hook runs without a message (GetRecvMessage() is null).
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() != nullptr) {
      call_.Received();
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      call_.Sent();
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      call_.Finished(methods->GetSendStatus().error_code());
    }
    methods->Proceed();
  }

 private:
  GrpcCallRecorder call_;
};

class MetricsInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit MetricsInterceptorFactory(const GrpcServerMetrics* metrics) : metrics_(metrics) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    if (info->method() == nullptr) return nullptr;
    const GrpcServerMetrics::MethodMetrics* method = metrics_->Find(info->method());
    if (method == nullptr || method->recording != GrpcServerMetrics::Recording::kInterceptor) {
      return nullptr;
    }
    return new MetricsInterceptor(method);
  }

 private:
  const GrpcServerMetrics* const metrics_;
};

}  // namespace

absl::string_view GrpcTypeName(GrpcType type) {
  switch (type) {
    case GrpcType::kUnary:
      return "unary";
    case GrpcType::kClientStream:
      return "client_stream";
    case GrpcType::kServerStream:
      return "server_stream";
    case GrpcType::kBidiStream:
      return "bidi_stream";
  }
  return "unary";
}

absl::string_view GrpcCodeName(int code) {
  if (code < 0 || code >= kNumGrpcCodes) return "Unknown";
  return kGoCodeNames[code];
}

GrpcServerMetrics::GrpcServerMetrics(prometheus::Registry& registry)
    : started_(prometheus::BuildCounter()
                   .Name("grpc_server_started_total")
                   .Help("Total number of RPCs started on the server.")
                   .Register(registry)),
      handled_(prometheus::BuildCounter()
                   .Name("grpc_server_handled_total")
                   .Help("Total number of RPCs completed on the server, regardless of success or "
                         "failure.")
                   .Register(registry)),
      msg_received_(prometheus::BuildCounter()
                        .Name("grpc_server_msg_received_total")
                        .Help("Total number of RPC stream messages received on the server.")
                        .Register(registry)),
      msg_sent_(prometheus::BuildCounter()
                    .Name("grpc_server_msg_sent_total")
                    .Help("Total number of gRPC stream messages sent by the server.")
                    .Register(registry)),
      handling_seconds_(prometheus::BuildHistogram()
                            .Name("grpc_server_handling_seconds")
                            .Help("Histogram of response latency (seconds) of gRPC that had been "
                                  "application-level handled by the server.")
                            .Register(registry)),
      stream_message_seconds_(
          prometheus::BuildHistogram()
              .Name("optd_stream_message_handling_seconds")
              .Help("Server time from receiving a message of a bidirectional stream to sending "
                    "the next message (for StreamSteps: one step), in seconds.")
              .Register(registry)) {}

void GrpcServerMetrics::InitializeMethod(absl::string_view service, absl::string_view method,
                                         GrpcType type, Recording recording) {
  std::string full_method = absl::StrCat("/", service, "/", method);
  absl::MutexLock lock(&mu_);
  if (methods_.contains(full_method)) return;
  const prometheus::Labels labels = {{"grpc_type", std::string(GrpcTypeName(type))},
                                     {"grpc_service", std::string(service)},
                                     {"grpc_method", std::string(method)}};
  auto m = std::make_unique<MethodMetrics>();
  m->type = type;
  m->recording = recording;
  m->started = &started_.Add(labels);
  m->msg_received = &msg_received_.Add(labels);
  m->msg_sent = &msg_sent_.Add(labels);
  for (int code = 0; code < kNumGrpcCodes; ++code) {
    prometheus::Labels with_code = labels;
    with_code.emplace("grpc_code", std::string(GrpcCodeName(code)));
    m->handled[code] = &handled_.Add(with_code);
  }
  m->handling_seconds = &handling_seconds_.Add(labels, LatencyBuckets());
  m->stream_message_seconds = type == GrpcType::kBidiStream
                                  ? &stream_message_seconds_.Add(labels, LatencyBuckets())
                                  : nullptr;
  methods_.emplace(std::move(full_method), std::move(m));
}

const GrpcServerMetrics::MethodMetrics* GrpcServerMetrics::Find(
    absl::string_view full_method) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = methods_.find(full_method);
  return it == methods_.end() ? nullptr : it->second.get();
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
GrpcServerMetrics::NewInterceptorFactory() {
  return std::make_unique<MetricsInterceptorFactory>(this);
}

GrpcCallRecorder::~GrpcCallRecorder() {
  // Started but never finished: the call was cancelled under the handler.
  if (started_.load(std::memory_order_acquire))
    Finished(static_cast<int>(grpc::StatusCode::CANCELLED));
}

void GrpcCallRecorder::Start() {
  if (method_ == nullptr) return;
  start_nanos_.store(NowNanos(), std::memory_order_relaxed);
  started_.store(true, std::memory_order_release);
  method_->started->Increment();
}

void GrpcCallRecorder::Received() {
  if (method_ == nullptr) return;
  method_->msg_received->Increment();
  if (method_->stream_message_seconds != nullptr) {
    last_receive_nanos_.store(NowNanos(), std::memory_order_relaxed);
  }
}

void GrpcCallRecorder::Sent() {
  if (method_ == nullptr) return;
  method_->msg_sent->Increment();
  if (method_->stream_message_seconds != nullptr) {
    const int64_t received = last_receive_nanos_.exchange(0, std::memory_order_relaxed);
    if (received != 0) method_->stream_message_seconds->Observe((NowNanos() - received) * 1e-9);
  }
}

void GrpcCallRecorder::Finished(int code) {
  if (method_ == nullptr || finished_.exchange(true)) return;
  if (code < 0 || code >= kNumGrpcCodes) code = static_cast<int>(grpc::StatusCode::UNKNOWN);
  method_->handled[code]->Increment();
  const int64_t start = start_nanos_.load(std::memory_order_relaxed);
  method_->handling_seconds->Observe(start == 0 ? 0 : (NowNanos() - start) * 1e-9);
}

}  // namespace optd
