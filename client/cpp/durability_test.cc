// Durability (issue #12) from the C++ client, against the real optd binary (OPTD_BINARY_PATH, or
// $OPTD_BINARY): each test starts optd with --checkpoint_dir in a temporary folder, kills it
// (SIGKILL, or a graceful SIGTERM) and starts it again on the same port while a Worker (unary
// steps) or a WorkerStream keeps stepping, and checks that the worker loop finishes its steps on
// the restored session. Also Checkpoint, CreateSessionFromCheckpoint, the optimizer state in Pull
// and the server incarnation of replies and errors.

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cpp/client.h"
#include "client/cpp/worker.h"
#include "gtest/gtest.h"

namespace optd {
namespace client {
namespace {

namespace fs = std::filesystem;

std::string OptdBinary() {
  if (const char* env = std::getenv("OPTD_BINARY"); env != nullptr && *env != '\0') return env;
#ifdef OPTD_BINARY_PATH
  return OPTD_BINARY_PATH;
#else
  return "build/server/optd";
#endif
}

// One optd process with a checkpoint folder, restartable on the same address. Stopped by its pid
// (SIGKILL) when destroyed.
class OptdProcess {
 public:
  explicit OptdProcess(fs::path dir) : dir_(std::move(dir)) {}
  ~OptdProcess() { Kill(SIGKILL); }

  // Starts optd on `listen` and waits (bounded) for its "optd listening on HOST:PORT" line.
  bool Start(const std::string& listen) {
    int out[2];
    if (pipe(out) != 0) return false;
    std::vector<std::string> args = {OptdBinary(),
                                     "--listen=" + listen,
                                     "--metrics_listen=",
                                     "--checkpoint_dir=" + dir_.string(),
                                     "--checkpoint_interval=0",
                                     "--shutdown_grace=300ms"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t pid = fork();
    if (pid < 0) return false;
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      dup2(out[1], STDOUT_FILENO);
      close(out[0]);
      close(out[1]);
      const int null = open("/dev/null", O_WRONLY);
      if (null >= 0) dup2(null, STDERR_FILENO);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out[1]);
    pid_ = pid;
    // Read up to the listen line (bounded by the child: it exits or prints it).
    std::string line;
    char c;
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline && read(out[0], &c, 1) == 1) {
      if (c != '\n') {
        line.push_back(c);
        continue;
      }
      constexpr char kPrefix[] = "optd listening on ";
      if (absl::StartsWith(line, kPrefix)) {
        address_ = line.substr(sizeof(kPrefix) - 1);
        break;
      }
      line.clear();
    }
    // The rest of stdout goes nowhere: close our end (optd prints nothing more that matters).
    close(out[0]);
    return !address_.empty();
  }

  // Sends `sig` to the process and waits for it to exit (SIGKILL after 10 s).
  void Kill(int sig) {
    if (pid_ <= 0) return;
    kill(pid_, sig);
    for (int i = 0; i < 1000; ++i) {
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  const std::string& address() const { return address_; }

 private:
  const fs::path dir_;
  pid_t pid_ = -1;
  std::string address_;
};

class DurabilityTest : public ::testing::Test {
 public:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           absl::StrCat("optd-client-durability-", getpid(), "-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    optd_ = std::make_unique<OptdProcess>(dir_);
    ASSERT_TRUE(optd_->Start("127.0.0.1:0")) << "cannot start " << OptdBinary();
    address_ = optd_->address();
    ClientOptions options;
    options.timeout = absl::Seconds(5);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(address_, options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  void TearDown() override {
    done_.Notify();
    if (restarter_.joinable()) restarter_.join();
    optd_.reset();
    fs::remove_all(dir_);
  }

  // Kills optd with `sig`, then starts it again on the same address after `pause`, in the
  // background (the caller's worker keeps stepping meanwhile).
  void RestartInBackground(int sig, absl::Duration pause) {
    // A SIGKILL lands before this returns, whatever the load: the next step cannot reach the old
    // process. A SIGTERM is sent from the thread, so that steps overlap the graceful shutdown.
    if (sig == SIGKILL) optd_->Kill(SIGKILL);
    restarter_ = std::thread([this, sig, pause] {
      optd_->Kill(sig);
      absl::SleepFor(pause);
      const absl::Time begin = absl::Now();
      OptdProcess* next = new OptdProcess(dir_);
      int tries = 1;
      for (; tries < 50 && !next->Start(address_); ++tries) {
        absl::SleepFor(absl::Milliseconds(50));  // the port is being released
      }
      if (tries > 1) {
        std::printf("optd restarted on %s in %.2f s (%d tries)\n", address_.c_str(),
                    absl::ToDoubleSeconds(absl::Now() - begin), tries);
      }
      optd_.reset(next);
      // The restarted optd dies with the thread that forked it (PR_SET_PDEATHSIG): stay alive
      // until the test ends.
      done_.WaitForNotification();
    });
  }

  // Kills optd with `sig` and restarts it in the background after 300 ms.
  void Restart(int sig) {
    RestartInBackground(sig, absl::Milliseconds(300));
  }

  void CreateQuadratic(const std::string& id) {
    v1::SessionConfig config;
    config.mutable_optimizer()->mutable_sgd()->set_lr(0.05);
    ASSERT_TRUE(
        client_->CreateSession(id, config, {HostTensor{"w", {4}, std::vector<float>(4)}}).ok());
  }

  static HostTensor Gradient(const std::vector<float>& w) {
    HostTensor g{"w", {4}, std::vector<float>(4)};
    for (int i = 0; i < 4; ++i) g.values[i] = w[i] - static_cast<float>(i + 1);
    return g;
  }

  // A worker loop of 60 steps (the documented pattern: on ABORTED pull and recompute). After 10
  // steps the session is checkpointed; after 20 the server is killed with `sig` and restarted.
  // SIGKILL loses the 10 steps after the checkpoint (the session ends at 50); a graceful SIGTERM
  // checkpoints everything (it ends at 60).
  void RunLoopAcrossRestart(bool stream, int sig) {
    const std::string id = absl::StrCat("loop-", stream, "-", sig);
    CreateQuadratic(id);
    WorkerOptions options;
    options.worker_id = "w0";
    Worker worker(client_.get(), id, options);
    std::unique_ptr<WorkerStream> ws = stream ? worker.OpenStream() : nullptr;
    absl::StatusOr<PullResult> pulled = worker.Pull();
    ASSERT_TRUE(pulled.ok()) << pulled.status();
    const std::string first_incarnation = pulled->server_incarnation;
    std::vector<float> w = pulled->tensors[0].values;
    int applied = 0, aborted = 0, restarted_errors = 0;
    const absl::Time start = absl::Now();
    absl::Time restart_at;
    for (int i = 0; applied < 60 && i < 200; ++i) {
      if (applied == 10 && aborted == 0 && i == 10) {
        absl::StatusOr<CheckpointResult> cp = client_->Checkpoint(id);
        ASSERT_TRUE(cp.ok()) << cp.status();
        EXPECT_EQ(cp->version, 10);
        EXPECT_GT(cp->bytes, 0);
        EXPECT_TRUE(absl::StartsWith(cp->path, dir_.string())) << cp->path;
      }
      if (applied == 20 && restart_at == absl::Time()) {
        restart_at = absl::Now();
        RestartInBackground(sig, absl::Milliseconds(300));
      }
      if (sig == SIGTERM && applied >= 20) absl::SleepFor(absl::Milliseconds(20));
      StepOptions step;
      absl::StatusOr<StepResult> r =
          ws ? ws->Step({Gradient(w)}, step) : worker.Step({Gradient(w)});
      if (CurrentVersion(r.status()).has_value()) {  // stale: pull, recompute
        ++aborted;
        if (ServerRestarted(r.status())) ++restarted_errors;
        EXPECT_NE(ServerIncarnation(r.status()), "");
        pulled = worker.Pull();
        ASSERT_TRUE(pulled.ok()) << pulled.status();
        w = pulled->tensors[0].values;
        continue;
      }
      ASSERT_TRUE(r.ok()) << "step " << applied << ": " << r.status();
      w = r->parameters[0].values;
      ++applied;
    }
    std::printf(
        "%s loop, %s at step 20: 60 steps done %.2f s after the restart began (%.2f s in "
        "all), %d aborted, %d reconnects\n",
        stream ? "stream" : "unary", sig == SIGKILL ? "SIGKILL" : "SIGTERM",
        absl::ToDoubleSeconds(absl::Now() - restart_at), absl::ToDoubleSeconds(absl::Now() - start),
        aborted, ws ? ws->reconnects() : 0);
    EXPECT_EQ(applied, 60);
    EXPECT_EQ(worker.server_restarts(), 1);
    EXPECT_NE(worker.server_incarnation(), first_incarnation);
    if (ws) {
      EXPECT_TRUE(ws->Close().ok());
    }
    absl::StatusOr<PullResult> after = client_->Pull(id);
    ASSERT_TRUE(after.ok()) << after.status();
    EXPECT_EQ(after->server_incarnation, worker.server_incarnation());
    if (sig == SIGKILL) {
      EXPECT_EQ(after->version, 50);
      EXPECT_GE(aborted, 1);
      EXPECT_EQ(restarted_errors, 1);
      EXPECT_EQ(worker.durable_version(), 10);
    } else {
      EXPECT_EQ(after->version, 60);
    }
  }

  fs::path dir_;
  std::unique_ptr<OptdProcess> optd_;
  std::string address_;
  std::unique_ptr<Client> client_;
  std::thread restarter_;
  absl::Notification done_;
};

TEST_F(DurabilityTest, WorkerOutlastsACrash) { RunLoopAcrossRestart(false, SIGKILL); }
TEST_F(DurabilityTest, WorkerStreamOutlastsACrash) { RunLoopAcrossRestart(true, SIGKILL); }
TEST_F(DurabilityTest, WorkerOutlastsAGracefulRestart) { RunLoopAcrossRestart(false, SIGTERM); }
TEST_F(DurabilityTest, WorkerStreamOutlastsAGracefulRestart) {
  RunLoopAcrossRestart(true, SIGTERM);
}

TEST_F(DurabilityTest, CheckpointForkAndOptimizerState) {
  v1::SessionConfig adam;
  adam.mutable_optimizer()->mutable_adam()->set_lr(0.1);
  ASSERT_TRUE(client_->CreateSession("base", adam, {HostTensor{"w", {3}, {1, 2, 3}}}).ok());
  ASSERT_TRUE(client_->Step("base", {HostTensor{"w", {3}, {0.1f, -0.2f, 0.3f}}}).ok());
  absl::StatusOr<CheckpointResult> cp = client_->Checkpoint("base");
  ASSERT_TRUE(cp.ok()) << cp.status();
  EXPECT_EQ(cp->version, 1);
  EXPECT_TRUE(fs::exists(cp->path));

  v1::SessionConfig slower;
  slower.mutable_optimizer()->mutable_adam()->set_lr(0.01);
  absl::StatusOr<v1::Session> fork =
      client_->CreateSessionFromCheckpoint("fork", CheckpointSource{cp->path, ""}, slower);
  ASSERT_TRUE(fork.ok()) << fork.status();
  EXPECT_EQ(fork->version(), 1);
  EXPECT_DOUBLE_EQ(fork->config().optimizer().adam().lr(), 0.01);
  EXPECT_TRUE(client_->CreateSessionFromCheckpoint("fork2", CheckpointSource{"", "base"}).ok());
  EXPECT_EQ(client_->CreateSessionFromCheckpoint("bad", CheckpointSource{}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      client_->CreateSessionFromCheckpoint("bad", CheckpointSource{"", "none"}).status().code(),
      absl::StatusCode::kNotFound);

  PullOptions with_state;
  with_state.optimizer_state = true;
  absl::StatusOr<PullResult> p = client_->Pull("base", with_state);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE(p->optimizer_state.has_value());
  ASSERT_EQ(p->optimizer_state->tensors_size(), 1);
  EXPECT_EQ(p->optimizer_state->tensors(0).step(), 1);
  EXPECT_EQ(p->optimizer_state->tensors(0).arrays_size(), 2);
  EXPECT_EQ(p->durable_version, 1);
  EXPECT_FALSE(p->server_incarnation.empty());
  EXPECT_FALSE(client_->Pull("base").value().optimizer_state.has_value());

  // Step errors carry the answering server's incarnation.
  absl::StatusOr<StepResult> missing = client_->Step("none", {HostTensor{"w", {3}, {1, 2, 3}}});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ServerIncarnation(missing.status()), p->server_incarnation);
  EXPECT_FALSE(ServerRestarted(missing.status()));
}

// The checkpoint predates the worker's join: the restarted server does not know its incarnation
// and refuses the retried step with rejoin. The worker joins again and resends (nothing of that
// incarnation is in the restored session: no step-outcome-unknown error); the resend is stale
// (ABORTED, marked ServerRestarted), and the loop pulls and finishes.
void RunRejoinAcrossRestart(DurabilityTest* test, Client* client, bool stream) {
  const std::string id = absl::StrCat("rejoin-", stream);
  v1::SessionConfig config;
  config.mutable_optimizer()->mutable_sgd()->set_lr(0.05);
  ASSERT_TRUE(
      client->CreateSession(id, config, {HostTensor{"w", {4}, std::vector<float>(4)}}).ok());
  ASSERT_TRUE(client->Checkpoint(id).ok());  // version 0, before the join
  WorkerOptions options;
  options.worker_id = "late";
  Worker worker(client, id, options);
  std::unique_ptr<WorkerStream> ws = stream ? worker.OpenStream() : nullptr;
  absl::StatusOr<PullResult> pulled = worker.Pull();
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  std::vector<float> w = pulled->tensors[0].values;
  int applied = 0, aborted = 0, restarted = 0, rejoins = 0;
  for (int i = 0; applied < 30 && i < 100; ++i) {
    if (applied == 10 && aborted == 0 && i == 10) test->Restart(SIGKILL);
    HostTensor g{"w", {4}, std::vector<float>(4)};
    for (int k = 0; k < 4; ++k) g.values[k] = w[k] - static_cast<float>(k + 1);
    absl::StatusOr<StepResult> r = ws ? ws->Step({g}) : worker.Step({g});
    ASSERT_FALSE(IsStepOutcomeUnknown(r.status())) << r.status();
    if (CurrentVersion(r.status()).has_value()) {
      ++aborted;
      restarted += ServerRestarted(r.status()) ? 1 : 0;
      pulled = worker.Pull();
      ASSERT_TRUE(pulled.ok()) << pulled.status();
      w = pulled->tensors[0].values;
      continue;
    }
    ASSERT_TRUE(r.ok()) << "step " << applied << ": " << r.status();
    rejoins += r->rejoins;
    w = r->parameters[0].values;
    ++applied;
  }
  EXPECT_EQ(applied, 30);
  EXPECT_EQ(aborted, 1);
  EXPECT_EQ(restarted, 1);
  EXPECT_EQ(worker.server_restarts(), 1);
  absl::StatusOr<PullResult> after = client->Pull(id);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->version, 20);  // the 10 steps before the crash were lost
}

TEST_F(DurabilityTest, WorkerRejoinsARestartedServerThatLostItsJoin) {
  RunRejoinAcrossRestart(this, client_.get(), false);
}
TEST_F(DurabilityTest, WorkerStreamRejoinsARestartedServerThatLostItsJoin) {
  RunRejoinAcrossRestart(this, client_.get(), true);
}

// The channel finds a restarted server about a second after it is back (the reconnect backoff
// and the resolver's re-resolution interval are capped at ClientOptions::max_reconnect_backoff;
// with gRPC's defaults this took ~5 s).
TEST_F(DurabilityTest, TheChannelReachesARestartedServerWithinASecondOrSo) {
  ASSERT_TRUE(client_->Health().ok());
  RestartInBackground(SIGKILL, absl::Milliseconds(300));
  absl::SleepFor(absl::Milliseconds(50));
  const absl::Time start = absl::Now();
  bool up = false;
  for (int i = 0; i < 100 && !up; ++i) {
    up = client_->Health().ok();  // not retried
    if (!up) absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(up);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2.5));
}

}  // namespace
}  // namespace client
}  // namespace optd
