// optd-echo: the raw gRPC echo server (service optd.bench.v1.Echo) that optd-bench measures optd
// against. It is built like optd (callback API, same message size limit, same signal handling), so
// the two differ only in what a call does: optd decodes, steps and encodes; the echo moves the
// request's bytes into the reply and does nothing else.
//
// Usage: optd-echo [--listen=127.0.0.1:0] [--max_message_bytes=268435456]
// Prints "optd-echo listening on HOST:PORT" once serving; SIGTERM or SIGINT stops it cleanly.

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/echo.grpc.pb.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "server/malloc_tuning.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0",
          "host:port to listen on; port 0 picks a free port, printed at start-up.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate: serve TLS (with --tls_key), as optd --tls_cert does.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(int64_t, max_message_bytes, 256 << 20,
          "Largest request or reply in bytes; the same default as optd's.");

namespace optd {
namespace bench {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

using v1::EchoReply;
using v1::EchoRequest;

// Moves the request's payload into `reply` (no copy) and sizes it as EchoRequest.reply_bytes says.
// The request is not used afterwards.
void EchoInto(EchoRequest* request, EchoReply* reply) {
  std::string* payload = reply->mutable_payload();
  payload->swap(*request->mutable_payload());
  if (!request->has_reply_bytes()) return;
  const uint64_t want = request->reply_bytes() < 0 ? 0 : request->reply_bytes();
  if (want <= payload->size()) {
    payload->resize(want);  // shrinking never reallocates
  } else {
    reply->mutable_padding()->resize(want - payload->size());
  }
}

// One EchoStream call: read a request, write its echo, read the next. One message in flight.
class EchoStreamReactor final : public grpc::ServerBidiReactor<EchoRequest, EchoReply> {
 public:
  EchoStreamReactor() { StartRead(&request_); }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client half-closed (or the call ended)
      Finish(grpc::Status::OK);
      return;
    }
    reply_.Clear();
    EchoInto(&request_, &reply_);
    StartWrite(&reply_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream closed while writing a reply"));
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  EchoRequest request_;
  EchoReply reply_;
};

class EchoServiceImpl final : public v1::Echo::CallbackService {
 public:
  grpc::ServerUnaryReactor* Echo(grpc::CallbackServerContext* context, const EchoRequest* request,
                                 EchoReply* reply) override {
    // gRPC allocates the request as a mutable message and drops it after the call: moving its
    // payload out is what makes this a zero-copy echo.
    EchoInto(const_cast<EchoRequest*>(request), reply);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerBidiReactor<EchoRequest, EchoReply>* EchoStream(
      grpc::CallbackServerContext* context) override {
    return new EchoStreamReactor();
  }
};

}  // namespace
}  // namespace bench
}  // namespace optd

int main(int argc, char** argv) {
  optd::TuneMallocForLargeMessages();  // as optd does: both servers allocate alike
  absl::SetProgramUsageMessage(
      "raw gRPC echo server (optd.bench.v1.Echo), the transport ceiling of optd-bench.\n"
      "Usage: optd-echo [--listen=127.0.0.1:0] [--max_message_bytes=N]");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "bench/echo_server.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);

  const std::string listen = absl::GetFlag(FLAGS_listen);
  const int64_t max_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  if (max_bytes < 1024 || max_bytes > (int64_t{1} << 31) - 1) {
    std::fprintf(stderr, "optd-echo: --max_message_bytes=%lld must be in [1024, 2^31 - 1]\n",
                 static_cast<long long>(max_bytes));
    return 1;
  }

  // Block the shutdown signals in every thread (gRPC's included); one thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  optd::bench::EchoServiceImpl service;
  int port = 0;
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (const std::string cert = absl::GetFlag(FLAGS_tls_cert); !cert.empty()) {
    grpc::SslServerCredentialsOptions tls;
    tls.pem_key_cert_pairs.push_back(
        {optd::bench::ReadFile(absl::GetFlag(FLAGS_tls_key)), optd::bench::ReadFile(cert)});
    credentials = grpc::SslServerCredentials(tls);
  }
  builder.AddListeningPort(listen, credentials, &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(max_bytes));
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "optd-echo: cannot listen on %s\n", listen.c_str());
    return 1;
  }
  const std::string host = listen.substr(0, listen.rfind(':'));
  // optd-bench reads the bound port from this line.
  std::printf("optd-echo listening on %s:%d\n", host.c_str(), port);
  std::fflush(stdout);

  std::thread waiter([&] {
    int signal = 0;
    sigwait(&signals, &signal);
    server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  });
  server->Wait();
  waiter.join();
  return 0;
}
