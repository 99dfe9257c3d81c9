// Metrics: the whole set in one registry, and the HTTP exporter. One exporter for the whole binary
// (its destructor takes ~2 s).

#include "server/metrics/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/metrics/metrics_testing.h"

namespace optd {
namespace {

using ::testing::HasSubstr;
using ::testing::Optional;
using testing_internal::SampleValue;

// GET http://127.0.0.1:<port><path> over a plain socket; the whole response, headers included.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request =
        "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0) response.append(buf, n);
    }
  }
  close(fd);
  return response;
}

TEST(MetricsTest, ScrapeHasEveryKindOfFamily) {
  absl::StatusOr<std::unique_ptr<Metrics>> metrics = Metrics::Create({});
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ((*metrics)->port(), 0);
  (*metrics)->grpc().InitializeMethod("optd.v1.Optimizer", "Step", GrpcType::kUnary);
  (*metrics)->session_observer()->OnSessionCreated("s", "adam");
  const std::string text = (*metrics)->Scrape();
  EXPECT_THAT(text, HasSubstr("# TYPE grpc_server_handled_total counter"));
  EXPECT_THAT(text, HasSubstr("# TYPE grpc_server_handling_seconds histogram"));
  EXPECT_THAT(text, HasSubstr("# TYPE optd_steps_total counter"));
  EXPECT_THAT(text, HasSubstr("# TYPE process_resident_memory_bytes gauge"));
  EXPECT_THAT(text, HasSubstr("optd_build_info{grpc_version=\""));
  EXPECT_THAT(text, HasSubstr("version=\"" OPTD_VERSION "\"} 1"));
}

TEST(MetricsTest, RejectsANegativeSessionBound) {
  MetricsOptions options;
  options.max_sessions = -1;
  EXPECT_EQ(Metrics::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MetricsTest, ExporterServesMetricsOverHttp) {
  MetricsOptions options;
  options.listen = "127.0.0.1:0";
  absl::StatusOr<std::unique_ptr<Metrics>> metrics = Metrics::Create(options);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  const int port = (*metrics)->port();
  ASSERT_GT(port, 0);
  (*metrics)->session_observer()->OnSessionCreated("http", "sgd");

  const std::string response = HttpGet(port, "/metrics");
  EXPECT_THAT(response, HasSubstr("200 OK"));
  const std::string body = response.substr(response.find("\r\n\r\n") + 4);
  EXPECT_THAT(SampleValue(body, "optd_steps_total", {{"session", "http"}, {"optimizer", "sgd"}}),
              Optional(0.0));
  EXPECT_THAT(SampleValue(body, "optd_sessions", {{"optimizer", "sgd"}}), Optional(1.0));
  EXPECT_GT(SampleValue(body, "process_resident_memory_bytes").value_or(0), 0);
  EXPECT_THAT(SampleValue(body, "optd_build_info",
                          {{"version", OPTD_VERSION}, {"grpc_version", grpc::Version()}}),
              Optional(1.0));

  // A second exporter on the same port cannot start.
  options.listen = "127.0.0.1:" + std::to_string(port);
  EXPECT_EQ(Metrics::Create(options).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace optd
