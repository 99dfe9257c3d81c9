// File: grpc_metrics_interceptor.h
//
// GrpcServerMetrics: the gRPC server metrics of go-grpc-prometheus, with its exact names, labels
// and label values, so that existing gRPC dashboards and alerts work unchanged:
//
//   grpc_server_started_total{grpc_type,grpc_service,grpc_method}            RPCs started
//   grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}  RPCs finished
//   grpc_server_msg_received_total{grpc_type,grpc_service,grpc_method}       messages received
//   grpc_server_msg_sent_total{grpc_type,grpc_service,grpc_method}           messages sent
//   grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}         start to status
//
// grpc_type is unary | client_stream | server_stream | bidi_stream; grpc_code is Go's
// codes.Code.String() spelling (OK, Canceled, InvalidArgument, ...). As in Go, a unary RPC counts a
// sent message only when it finishes OK, and the histogram has no grpc_code label. Its buckets are
// Go's DefBuckets plus finer ones below 5 ms (Go allows custom buckets; a superset keeps every
// le-based query of a Go dashboard valid).
//
// One optd addition, outside the grpc_ namespace:
//   optd_stream_message_handling_seconds{grpc_type,grpc_service,grpc_method}  histogram: for a
//   bidirectional stream, the server time from receiving a message to sending the next message
//   (for StreamSteps: the server-side latency of one step).
//
// How: NewInterceptorFactory() returns a grpc::experimental::ServerInterceptorFactoryInterface for
// ServerBuilder::experimental().SetInterceptorCreators. Its interceptor hooks, in gRPC 1.51 for
// both callback-API and sync services (verified by grpc_metrics_interceptor_test.cc):
//   POST_RECV_INITIAL_METADATA  started; starts a steady clock
//   POST_RECV_MESSAGE           msg_received (only when a message arrived, not at end of stream)
//   PRE_SEND_MESSAGE            msg_sent
//   PRE_SEND_STATUS             handled{grpc_code} and the histogram
// As in Go, handled_total carries the status the handler finished with: a stream the client
// cancels is counted with the code the reactor then finishes with (StreamSteps: OK). An RPC that
// ends without the server sending any status is counted as handled{grpc_code="Canceled"} when gRPC
// destroys the interceptor.
//
// Cost: gRPC C++ runs every batch of an intercepted call through its interceptor machinery, and
// each batch that received something takes one extra trip through the completion queue. That, not
// this code, is most of the price (an interceptor that only calls Proceed() costs about as much):
// a few microseconds per unary call and per received stream message; bench/metrics_overhead
// measures it. A hot method can instead be recorded by its own handler or reactor through a
// GrpcCallRecorder: initialise it with Recording::kByService (the interceptor then leaves it
// alone) and drive the recorder from the handler; the series are the same. optd's own service
// (server/service/optimizer_service.h) records all of its methods so; the interceptor records
// health and reflection.
//
// Only methods named by InitializeMethod are counted: they get zero-valued series
// up front (handled_total for all 17 codes), like Go's InitializeMetrics, so that rate() sees the
// first increment, and the label values stay bounded whatever method names clients send.
//
// Thread safety: GrpcServerMetrics is thread-safe. InitializeMethod takes a writer lock; the
// interceptors look their method up under a reader lock once per RPC and then only touch cached
// Counter and Histogram references (no Family::Add on the request path). Initialize every method
// before the server starts. The object must outlive every server that uses its factory.
// GrpcCallRecorder is thread-safe too (one per call; gRPC may run hooks of one call concurrently).

#ifndef OPTD_SERVER_METRICS_GRPC_METRICS_INTERCEPTOR_H_
#define OPTD_SERVER_METRICS_GRPC_METRICS_INTERCEPTOR_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/support/server_interceptor.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace optd {

// go-grpc-prometheus's grpc_type values.
enum class GrpcType { kUnary, kClientStream, kServerStream, kBidiStream };

// "unary", "client_stream", "server_stream" or "bidi_stream".
absl::string_view GrpcTypeName(GrpcType type);

// Go's codes.Code.String() for a canonical gRPC status code 0-16 ("OK", "Canceled", ...,
// "Unauthenticated"); "Unknown" for anything else.
absl::string_view GrpcCodeName(int code);

// The number of canonical gRPC status codes (0 OK ... 16 UNAUTHENTICATED).
inline constexpr int kNumGrpcCodes = 17;

class GrpcServerMetrics {
 public:
  // Who records a method's calls.
  enum class Recording {
    kInterceptor,  // the interceptor (the default)
    kByService,    // the service, through a GrpcCallRecorder; the interceptor skips the method
  };

  // Registers the families in `registry`, which must outlive this object. Throws
  // std::invalid_argument (from prometheus-cpp) if a family of the same name and another type is
  // already registered: a start-up bug.
  explicit GrpcServerMetrics(prometheus::Registry& registry);

  GrpcServerMetrics(const GrpcServerMetrics&) = delete;
  GrpcServerMetrics& operator=(const GrpcServerMetrics&) = delete;

  // Counts calls of "/<service>/<method>" from now on and creates its zero-valued series.
  // Idempotent (a repeated call keeps the first type and recording).
  void InitializeMethod(absl::string_view service, absl::string_view method, GrpcType type,
                        Recording recording = Recording::kInterceptor);

  // A new factory for ServerBuilder::experimental().SetInterceptorCreators; it refers to this
  // object, which must outlive the server.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewInterceptorFactory();

  // The cached series of one method (read by the interceptor and GrpcCallRecorder).
  struct MethodMetrics {
    GrpcType type;
    Recording recording;
    prometheus::Counter* started;
    prometheus::Counter* msg_received;
    prometheus::Counter* msg_sent;
    std::array<prometheus::Counter*, kNumGrpcCodes> handled;
    prometheus::Histogram* handling_seconds;
    prometheus::Histogram* stream_message_seconds;  // null unless bidi_stream
  };

  // The series of `full_method` ("/pkg.Service/Method"), or null if it was not initialised.
  // Stable for the life of this object (for a GrpcCallRecorder).
  const MethodMetrics* Find(absl::string_view full_method) const;

 private:
  prometheus::Family<prometheus::Counter>& started_;
  prometheus::Family<prometheus::Counter>& handled_;
  prometheus::Family<prometheus::Counter>& msg_received_;
  prometheus::Family<prometheus::Counter>& msg_sent_;
  prometheus::Family<prometheus::Histogram>& handling_seconds_;
  prometheus::Family<prometheus::Histogram>& stream_message_seconds_;

  mutable absl::Mutex mu_;
  // "/service/method" -> its series. Entries are never removed, so the pointers stay valid.
  absl::flat_hash_map<std::string, std::unique_ptr<MethodMetrics>> methods_ ABSL_GUARDED_BY(mu_);
};

// The record of one call of one method: what the interceptor does with gRPC's hooks, for a
// reactor to do itself. Call Start() when the call starts (started_total, and the clock),
// Received() for each message read, Sent() for each message written and Finished(code) when the
// reactor finishes. A recorder destroyed after Start() but unfinished counts
// handled{grpc_code="Canceled"}.
class GrpcCallRecorder {
 public:
  // `method` may be null (metrics off): then nothing is recorded.
  explicit GrpcCallRecorder(const GrpcServerMetrics::MethodMetrics* method) : method_(method) {}
  ~GrpcCallRecorder();

  GrpcCallRecorder(const GrpcCallRecorder&) = delete;
  GrpcCallRecorder& operator=(const GrpcCallRecorder&) = delete;

  void Start();
  void Received();
  void Sent();
  // Counts handled{code} (a canonical code 0-16, else Unknown) and observes the handling time;
  // only the first call counts.
  void Finished(int code);

 private:
  const GrpcServerMetrics::MethodMetrics* const method_;
  std::atomic<int64_t> start_nanos_{0};
  std::atomic<int64_t> last_receive_nanos_{0};  // 0: no message waiting for its reply
  std::atomic<bool> started_{false};
  std::atomic<bool> finished_{false};
};

}  // namespace optd

#endif  // OPTD_SERVER_METRICS_GRPC_METRICS_INTERCEPTOR_H_
