// metrics_overhead: what the Prometheus metrics cost, measured side by side in one run.
//
// Starts two in-process OptdServers on 127.0.0.1:0: one without metrics, one with everything a
// production optd runs (the gRPC interceptor, the session observer, and the /metrics exporter on
// 127.0.0.1:0, scraped every --scrape_interval by a thread of this program, as Prometheus would).
// Each gets one Adam session of --params floats. Then short timed blocks of a tight loop of --steps
// steps (one worker, one step in flight, over loopback TCP) alternate between the two servers in an
// A-B-B-A order for --rounds rounds, so that the drift of a shared machine hits both alike; each
// round gives one paired ratio (on / off). Prints, for unary Step and for StreamSteps, the steps/s
// of each server over the whole run, and the median of the paired ratios, the headline number.
// The target is a ratio >= 0.95; the program reports, it does not fail on speed. --aa runs the same
// comparison between two servers without metrics: the spread of its ratio is the noise floor.
//
// Usage: metrics_overhead [--params=1000] [--steps=200] [--rounds=150] [--mode=both|unary|stream]
//                         [--scrape_interval=1s] [--aa]

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "optd/v1/optd.grpc.pb.h"
#include "server/malloc_tuning.h"
#include "server/service/server.h"

ABSL_FLAG(int, params, 1000, "Floats in the session (one tensor).");
ABSL_FLAG(int, steps, 200, "Steps per timed block.");
ABSL_FLAG(int, rounds, 150, "A-B-B-A rounds; each round times one block per server.");
ABSL_FLAG(std::string, mode, "both", "unary (Step), stream (StreamSteps) or both.");
ABSL_FLAG(absl::Duration, scrape_interval, absl::Seconds(1),
          "How often the metrics server's /metrics is fetched during the run (0: never).");
ABSL_FLAG(bool, aa, false, "Calibration: both servers without metrics (the ratio's noise).");

namespace optd {
namespace {

using Clock = std::chrono::steady_clock;

// GET /metrics on 127.0.0.1:port; returns the bytes read (0 on failure).
size_t Scrape(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  size_t total = 0;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request =
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buf[16384];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0) total += n;
    }
  }
  close(fd);
  return total;
}

class Target {
 public:
  Target(std::string name, bool metrics, int params) : name_(std::move(name)) {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    if (metrics) {
      options.metrics.emplace();
      options.metrics->listen = "127.0.0.1:0";
    }
    absl::StatusOr<std::unique_ptr<OptdServer>> server = OptdServer::Start(options);
    if (!server.ok()) {
      std::fprintf(stderr, "metrics_overhead: %s\n", server.status().ToString().c_str());
      std::exit(1);
    }
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::Optimizer::NewStub(channel_);

    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    std::vector<float> values(params);
    for (float& v : values) v = normal(rng);
    v1::CreateSessionRequest create;
    create.set_session_id("bench");
    create.mutable_config()->mutable_optimizer()->mutable_adam()->set_lr(1e-3);
    *create.add_tensors() = Tensor(values);
    v1::Session session;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->CreateSession(&ctx, create, &session);
    if (!s.ok()) {
      std::fprintf(stderr, "metrics_overhead: CreateSession: %s\n", s.error_message().c_str());
      std::exit(1);
    }
    for (float& v : values) v = 1e-2f * normal(rng);
    request_.set_session_id("bench");
    *request_.add_gradients() = Tensor(values);
    request_.set_loss(1.0);
  }

  const std::string& name() const { return name_; }
  int metrics_port() const {
    return server_->metrics() == nullptr ? 0 : server_->metrics()->port();
  }

  // Steps per second of `steps` unary Step calls.
  double Unary(int steps) {
    v1::StepResponse reply;
    const Clock::time_point start = Clock::now();
    for (int i = 0; i < steps; ++i) {
      grpc::ClientContext ctx;
      grpc::Status s = stub_->Step(&ctx, request_, &reply);
      if (!s.ok()) Die(s.error_message());
    }
    return steps / std::chrono::duration<double>(Clock::now() - start).count();
  }

  // Steps per second of `steps` messages on one StreamSteps stream.
  double Stream(int steps) {
    grpc::ClientContext ctx;
    auto stream = stub_->StreamSteps(&ctx);
    v1::StreamStepsResponse reply;
    const Clock::time_point start = Clock::now();
    for (int i = 0; i < steps; ++i) {
      if (!stream->Write(request_) || !stream->Read(&reply) || !reply.has_reply()) {
        Die("stream step failed");
      }
    }
    const double rate = steps / std::chrono::duration<double>(Clock::now() - start).count();
    stream->WritesDone();
    grpc::Status s = stream->Finish();
    if (!s.ok()) Die(s.error_message());
    return rate;
  }

 private:
  static v1::Tensor Tensor(const std::vector<float>& values) {
    v1::Tensor t;
    t.set_name("w");
    t.add_shape(static_cast<int64_t>(values.size()));
    t.set_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4));
    return t;
  }

  [[noreturn]] void Die(const std::string& what) {
    std::fprintf(stderr, "metrics_overhead: %s: %s\n", name_.c_str(), what.c_str());
    std::exit(1);
  }

  const std::string name_;
  std::unique_ptr<OptdServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Optimizer::Stub> stub_;
  v1::StepRequest request_;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Alternates timed blocks (A-B-B-A ...) and prints the result; returns the median paired ratio.
template <typename Run>
double Compare(const char* mode, Target& off, Target& on, int rounds, int steps, Run run) {
  run(off, steps);  // warm-up: connections, allocations, first-call paths
  run(on, steps);
  std::vector<double> ratios;
  double off_seconds = 0, on_seconds = 0;
  for (int r = 0; r < rounds; ++r) {
    double off_rate, on_rate;
    if (r % 2 == 0) {
      off_rate = run(off, steps);
      on_rate = run(on, steps);
    } else {
      on_rate = run(on, steps);
      off_rate = run(off, steps);
    }
    off_seconds += steps / off_rate;
    on_seconds += steps / on_rate;
    ratios.push_back(on_rate / off_rate);
  }
  std::sort(ratios.begin(), ratios.end());
  const double ratio = Median(ratios);
  std::printf(
      "%-12s %-14s %8.0f steps/s   %-14s %8.0f steps/s   ratio %.3f "
      "(paired ratios p10 %.3f, p90 %.3f)  %s\n",
      mode, off.name().c_str(), rounds * steps / off_seconds, on.name().c_str(),
      rounds * steps / on_seconds, ratio, ratios[ratios.size() / 10],
      ratios[ratios.size() * 9 / 10], ratio >= 0.95 ? "PASS (>= 0.95)" : "FAIL (< 0.95)");
  return ratio;
}

}  // namespace
}  // namespace optd

int main(int argc, char** argv) {
  optd::TuneMallocForLargeMessages();  // as the optd binary does
  absl::ParseCommandLine(argc, argv);
  const int params = absl::GetFlag(FLAGS_params);
  const int steps = absl::GetFlag(FLAGS_steps);
  const int rounds = absl::GetFlag(FLAGS_rounds);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (params < 1 || steps < 10 || rounds < 1 ||
      (mode != "both" && mode != "unary" && mode != "stream")) {
    std::fprintf(stderr, "metrics_overhead: bad flags (see --help)\n");
    return 2;
  }

  const bool aa = absl::GetFlag(FLAGS_aa);
  optd::Target off("metrics off", /*metrics=*/false, params);
  optd::Target on(aa ? "metrics off'" : "metrics on", /*metrics=*/!aa, params);
  std::printf(
      "metrics_overhead: Adam, %d params, one client, loopback TCP, %d rounds of %d steps "
      "per server (A-B-B-A)",
      params, rounds, steps);
  if (!aa) {
    std::printf("; metrics on: interceptor + observer + exporter on 127.0.0.1:%d",
                on.metrics_port());
  }

  std::atomic<bool> stop{false};
  std::atomic<int> scrapes{0};
  std::thread scraper;
  const absl::Duration interval = absl::GetFlag(FLAGS_scrape_interval);
  if (!aa && interval > absl::ZeroDuration()) {
    std::printf(", scraped every %s", absl::FormatDuration(interval).c_str());
    scraper = std::thread([&] {
      while (!stop.load()) {
        if (optd::Scrape(on.metrics_port()) > 0) ++scrapes;
        const absl::Time until = absl::Now() + interval;
        while (!stop.load() && absl::Now() < until) absl::SleepFor(absl::Milliseconds(10));
      }
    });
  }
  std::printf("\n\n");

  if (mode != "stream") {
    optd::Compare("unary Step", off, on, rounds, steps,
                  [](optd::Target& t, int n) { return t.Unary(n); });
  }
  if (mode != "unary") {
    optd::Compare("StreamSteps", off, on, rounds, steps,
                  [](optd::Target& t, int n) { return t.Stream(n); });
  }
  stop = true;
  if (scraper.joinable()) scraper.join();
  if (!aa) std::printf("/metrics scraped %d times during the run\n", scrapes.load());
  return 0;
}
