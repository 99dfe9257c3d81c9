#include "server/service/server.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "google/protobuf/descriptor.h"
#include "grpc/grpc.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "server/service/config_codec.h"
#include "server/service/optimizer_service.h"

namespace optd {
namespace {

// How often Shutdown looks again whether the calls have ended.
constexpr absl::Duration kShutdownPoll = absl::Milliseconds(20);

}  // namespace

GrpcType GrpcTypeOf(const google::protobuf::MethodDescriptor& method) {
  if (method.client_streaming()) {
    return method.server_streaming() ? GrpcType::kBidiStream : GrpcType::kClientStream;
  }
  return method.server_streaming() ? GrpcType::kServerStream : GrpcType::kUnary;
}

bool IsLoopbackAddress(absl::string_view listen) {
  if (absl::StartsWith(listen, "unix:")) return true;
  absl::string_view host = listen.substr(0, listen.rfind(':'));
  if (absl::ConsumePrefix(&host, "[")) absl::ConsumeSuffix(&host, "]");
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

absl::StatusOr<std::unique_ptr<OptdServer>> OptdServer::Start(const ServerOptions& options) {
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (options.tls.enabled()) {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> tls =
        TlsServerCredentialsFor(options.tls);
    if (!tls.ok()) return tls.status();
    credentials = *std::move(tls);
  } else if (options.tls.mutual()) {
    return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
  } else if (!IsLoopbackAddress(options.listen)) {
    if (!options.insecure) {
      return absl::InvalidArgumentError(absl::StrCat(
          "listening on ", options.listen,
          " without TLS: give --tls_cert and --tls_key (and --tls_client_ca for client "
          "certificates), or --insecure to serve plaintext to anyone who reaches that address"));
    }
    std::fprintf(stderr,
                 "optd: WARNING: serving plaintext (--insecure) on %s: anyone who reaches it can "
                 "read and change what the calls carry%s\n",
                 options.listen.c_str(),
                 options.access.tokens_file.empty() ? ", and call every method"
                                                    : ", bearer tokens included");
  }
  if (options.max_message_bytes < 1024 || options.max_message_bytes > (int64_t{1} << 31) - 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_message_bytes = ", options.max_message_bytes,
                     " is out of range: must be in [1024, 2^31 - 1]"));
  }
  if (options.store.max_sessions < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_sessions = ", options.store.max_sessions,
                                                   " is out of range: must be >= 1"));
  }
  std::unique_ptr<OptdServer> server(new OptdServer());
  SessionObserver* observer = nullptr;
  if (options.metrics.has_value()) {
    absl::StatusOr<std::unique_ptr<Metrics>> metrics = Metrics::Create(*options.metrics);
    if (!metrics.ok()) return metrics.status();
    server->metrics_ = *std::move(metrics);
    observer = server->metrics_->session_observer();
    // Zero-valued series for every method served here, as go-grpc-prometheus's InitializeMetrics.
    GrpcServerMetrics& grpc_metrics = server->metrics_->grpc();
    const google::protobuf::ServiceDescriptor* optimizer =
        google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
            v1::Optimizer::service_full_name());
    if (optimizer == nullptr) return absl::InternalError("no descriptor for optd.v1.Optimizer");
    // optd's own methods are recorded by the service (cheaper than gRPC's interceptor path);
    // health and reflection by the interceptor.
    for (int i = 0; i < optimizer->method_count(); ++i) {
      const google::protobuf::MethodDescriptor& method = *optimizer->method(i);
      grpc_metrics.InitializeMethod(optimizer->full_name(), method.name(), GrpcTypeOf(method),
                                    GrpcServerMetrics::Recording::kByService);
    }
    grpc_metrics.InitializeMethod("grpc.health.v1.Health", "Check", GrpcType::kUnary);
    grpc_metrics.InitializeMethod("grpc.health.v1.Health", "Watch", GrpcType::kServerStream);
    grpc_metrics.InitializeMethod("grpc.reflection.v1alpha.ServerReflection",
                                  "ServerReflectionInfo", GrpcType::kBidiStream);
  }
  if (options.max_memory_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_memory_bytes = ", options.max_memory_bytes,
                                                   " is out of range: must be >= 1"));
  }
  server->budget_ = std::make_unique<MemoryBudget>(options.max_memory_bytes);
  server->incarnation_ = absl::StrFormat("%016x", absl::Uniform<uint64_t>(absl::BitGen()));
  server->codec_ = std::make_unique<ProtoJsonConfigCodec>();
  absl::StatusOr<std::unique_ptr<AccessControl>> access = AccessControl::Open(options.access);
  if (!access.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--auth_tokens_file: ", access.status().message()));
  }
  server->access_ = *std::move(access);
  if (!options.audit_log.empty()) {
    absl::StatusOr<std::unique_ptr<AuditLog>> audit = AuditLog::Open(options.audit_log);
    if (!audit.ok()) return audit.status();
    server->audit_ = *std::move(audit);
  }
  SessionStoreOptions store_options = options.store;
  store_options.max_reply_bytes = options.max_message_bytes;
  OptdServer* const raw = server.get();
  if (options.checkpoints.has_value()) {
    store_options.before_unload = [raw](const Session& session) {
      return raw->checkpointer_->Checkpoint(session, CheckpointReason::kIdle).status();
    };
    store_options.reload = [raw](absl::string_view id) -> absl::StatusOr<SessionState> {
      absl::StatusOr<std::string> path = raw->checkpointer_->NewestFile(id);
      if (!path.ok()) return path.status();
      // Reading it takes about its file's size, before the session reserves its own memory: paid
      // for from the budget meanwhile, so that requests naming a session too large to load are
      // refused before anything is read.
      std::error_code error;
      const auto bytes = std::filesystem::file_size(*path, error);
      absl::StatusOr<MemoryReservation> reading = raw->budget_->Reserve(
          error ? 0 : static_cast<int64_t>(bytes), absl::StrCat("loading session ", id));
      if (!reading.ok()) return reading.status();
      return raw->checkpointer_->ReadNewest(id);
    };
    store_options.stored = [raw](absl::string_view id) {
      return raw->checkpointer_->NewestFile(id).ok();
    };
    store_options.reloaded = [raw](const Session& session) { raw->checkpointer_->Adopt(session); };
    store_options.forget = [raw](absl::string_view id) { raw->checkpointer_->Forget(id); };
    store_options.aligned_checkpoint = [raw](const Session& session, SessionState state) {
      // A failure is logged and counted by the checkpointer; the step stands.
      raw->checkpointer_->Write(session, std::move(state), CheckpointReason::kAligned)
          .IgnoreError();
    };
  }
  server->store_ =
      std::make_unique<SessionStore>(store_options, observer, Clock::Real(), server->budget_.get());
  if (options.checkpoints.has_value()) {
    absl::StatusOr<std::unique_ptr<Checkpointer>> checkpointer = Checkpointer::Open(
        *options.checkpoints, server->store_.get(), server->codec_.get(), server->incarnation_,
        Clock::Real(),
        server->metrics_ != nullptr ? server->metrics_->checkpoint_observer() : nullptr);
    if (!checkpointer.ok()) return checkpointer.status();
    server->checkpointer_ = *std::move(checkpointer);
    absl::StatusOr<int> restored = server->checkpointer_->Restore();
    if (!restored.ok()) return restored.status();
    server->restored_ = *restored;
  }
  OptimizerServiceOptions service_options;
  service_options.budget = server->budget_.get();
  service_options.max_reply_bytes = options.max_message_bytes;
  service_options.checkpointer = server->checkpointer_.get();
  service_options.server_incarnation = server->incarnation_;
  service_options.access = server->access_.get();
  service_options.audit = server->audit_.get();
  service_options.calls = &server->calls_;
  server->service_ = std::make_unique<OptimizerServiceImpl>(
      server->store_.get(), server->metrics_ != nullptr ? &server->metrics_->grpc() : nullptr,
      std::move(service_options));
  server->max_message_bytes_ = options.max_message_bytes;

  // Both are process-wide switches; they must be set before the first server is built.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  grpc::ServerBuilder builder;
  // One server per port: with SO_REUSEPORT (gRPC's default) a second optd would bind the same
  // port and clients would alternate between two sets of sessions.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // A client may not open more streams on one connection than this at once (each holds buffers).
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, kMaxConcurrentStreams);
  builder.AddListeningPort(options.listen, credentials, &server->port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  builder.RegisterService(server->service_.get());
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  creators.push_back(server->calls_.NewInterceptorFactory());
  if (server->metrics_ != nullptr)
    creators.push_back(server->metrics_->grpc().NewInterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(creators));
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", options.listen,
        ": the address is not valid here, or another process (another optd?) is listening on it"));
  }
  server->server_->GetHealthCheckService()->SetServingStatus(kServiceName, true);
  if (server->checkpointer_ != nullptr) server->checkpointer_->Start();
  return server;
}

OptdServer::~OptdServer() {
  if (server_ != nullptr && !shut_down_) Shutdown(absl::Now());
}

std::shared_ptr<grpc::Channel> OptdServer::InProcessChannel() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(max_message_bytes_));
  args.SetMaxSendMessageSize(static_cast<int>(max_message_bytes_));
  return server_->InProcessChannel(args);
}

void OptdServer::Shutdown(absl::Time deadline, const std::function<void()>& calls_ended) {
  shut_down_ = true;
  // Health checkers see NOT_SERVING first, so load balancers drain us.
  server_->GetHealthCheckService()->Shutdown();
  // Calls waiting at SYNC barriers would otherwise hold shutdown until the deadline.
  store_->CloseSyncSessions(absl::UnavailableError("the server is shutting down"));
  absl::Notification grpc_shut_down;
  std::thread grpc_shutdown([&] {
    server_->Shutdown(absl::ToChronoTime(deadline));
    grpc_shut_down.Notify();
  });
  // gRPC's shutdown waits for every call, streams included however long their clients keep them
  // open, then for every connection to close, which a client does when it answers the GOAWAY:
  // an idle client only when it next polls its socket (seconds later, or never). Once every call
  // left is a stream waiting for its next request, nothing is lost by cancelling them and
  // closing the connections (as gRPC does at the deadline): the clients see UNAVAILABLE and
  // reopen to the next server. Again each poll, as connections made just before gRPC's shutdown
  // began may still open calls. A step that starts in between is cancelled, applied or not; its
  // client retries it, and the shutdown checkpoint (after gRPC's shutdown) holds what it did.
  while (!grpc_shut_down.WaitForNotificationWithTimeout(kShutdownPoll)) {
    if (calls_.WaitForIdle(std::min(deadline, absl::Now() + kShutdownPoll))) {
      grpc_server_cancel_all_calls(server_->c_server());
    }
  }
  grpc_shutdown.join();
  if (calls_ended) calls_ended();
  // No call runs any more: the last steps are made durable.
  if (checkpointer_ != nullptr) checkpointer_->CheckpointAll(CheckpointReason::kShutdown);
}

void OptdServer::Wait() { server_->Wait(); }

}  // namespace optd
