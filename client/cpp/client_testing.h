// File: client_testing.h
//
// Test-only helpers shared by the C++ client's tests (client_test.cc, worker_test.cc,
// retry_test.cc): a gtest fixture that runs one real optd server (optd::OptdServer, in process, on
// 127.0.0.1:0) for a whole suite, and short builders of session configs.
//
// Who may call it: the client's tests only (it links optd::service).
//
// Thread safety: the fixture's server and client are thread-safe; tests may step them from
// several threads.

#ifndef OPTD_CLIENT_CPP_CLIENT_TESTING_H_
#define OPTD_CLIENT_CPP_CLIENT_TESTING_H_

#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/cpp/client.h"
#include "gtest/gtest.h"
#include "server/service/server.h"

namespace optd {
namespace client {
namespace testing {

inline v1::SessionConfig Sgd(double lr) {
  v1::SessionConfig config;
  config.mutable_optimizer()->mutable_sgd()->set_lr(lr);
  return config;
}

inline v1::SessionConfig Adam() {
  v1::SessionConfig config;
  config.mutable_optimizer()->mutable_adam();
  return config;
}

// SGD(lr) with a SYNC barrier of `workers` gradients (mean), waiting at most `barrier_seconds`.
inline v1::SessionConfig SyncSgd(double lr, int workers, double barrier_seconds = 20) {
  v1::SessionConfig config = Sgd(lr);
  v1::Consistency* consistency = config.mutable_consistency();
  consistency->set_mode(v1::Consistency::MODE_SYNC);
  consistency->set_workers(workers);
  consistency->set_barrier_timeout_seconds(barrier_seconds);
  return config;
}

// SGD(lr) that refuses (ABORTED) a gradient more than `max_staleness` versions old.
inline v1::SessionConfig BoundedSgd(double lr, int64_t max_staleness) {
  v1::SessionConfig config = Sgd(lr);
  config.mutable_consistency()->set_mode(v1::Consistency::MODE_BOUNDED);
  config.mutable_consistency()->set_max_staleness(max_staleness);
  return config;
}

// One optd server for the whole suite (starting one costs more than most tests); every test uses
// its own session ids. client_ talks to it in process; TcpClient() over 127.0.0.1.
class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    absl::StatusOr<std::unique_ptr<OptdServer>> server = OptdServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }

  static void TearDownTestSuite() {
    if (server_ == nullptr) return;
    server_->Shutdown(absl::Now() + absl::Seconds(5));
    delete server_;
    server_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    client_ = std::make_unique<Client>(server_->InProcessChannel());
  }

  static std::string TcpAddress() { return absl::StrCat("127.0.0.1:", server_->port()); }

  static std::unique_ptr<Client> TcpClient(ClientOptions options = {}) {
    absl::StatusOr<std::unique_ptr<Client>> client =
        Client::Connect(TcpAddress(), std::move(options));
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  static inline OptdServer* server_ = nullptr;
  std::unique_ptr<Client> client_;
};

}  // namespace testing
}  // namespace client
}  // namespace optd

#endif  // OPTD_CLIENT_CPP_CLIENT_TESTING_H_
