#include "server/persist/checkpointer.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "base/fake_clock.h"
#include "base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/persist/persist_testing.h"

namespace optd {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class Recorder : public CheckpointObserver {
 public:
  void OnCheckpointWritten(absl::string_view id, int64_t bytes, absl::Duration,
                           absl::Time) override {
    absl::MutexLock lock(&mu);
    written.push_back(std::string(id));
  }
  void OnCheckpointFailed(absl::string_view id, absl::string_view error) override {
    absl::MutexLock lock(&mu);
    failed.push_back(std::string(error));
  }
  void OnCheckpointSkipped(absl::string_view id) override {
    absl::MutexLock lock(&mu);
    skipped.push_back(std::string(id));
  }
  absl::Mutex mu;
  std::vector<std::string> written ABSL_GUARDED_BY(mu), failed ABSL_GUARDED_BY(mu),
      skipped ABSL_GUARDED_BY(mu);
};

class CheckpointerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("optd-ckptr-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<Checkpointer> Open(SessionStore* store, int keep = 3,
                                     absl::Duration interval = absl::ZeroDuration()) {
    CheckpointerOptions options;
    options.dir = dir_.string();
    options.keep = keep;
    options.interval = interval;
    auto c = Checkpointer::Open(options, store, &codec_, "inc", &clock_, &recorder_);
    EXPECT_OK(c);
    return c.ok() ? *std::move(c) : nullptr;
  }

  std::shared_ptr<Session> Create(SessionStore& store, const std::string& id) {
    auto s = store.Create(id, RichConfig(), tensors_.Model(1.0f));
    EXPECT_OK(s);
    return *s;
  }

  void Step(Session& s, float g) {
    StepInput in;
    in.gradients = grads_.emplace_back(tensors_.Model(g));
    in.loss = 1.0;
    ASSERT_OK(s.StepAndWait(in));
  }

  fs::path dir_;
  TableCodec codec_;
  FakeClock clock_;
  Recorder recorder_;
  TestTensors tensors_;
  std::deque<std::vector<WireTensorView>> grads_;
};

TEST_F(CheckpointerTest, ARestartRestoresEverySessionAtItsCheckpointedVersion) {
  {
    SessionStore store;
    auto checkpointer = Open(&store);
    auto a = Create(store, "a");
    auto b = Create(store, "b");
    Step(*a, 0.5f);
    Step(*a, 0.25f);
    Step(*b, 1.0f);
    absl::StatusOr<CheckpointResult> result =
        checkpointer->Checkpoint(*a, CheckpointReason::kRequest);
    ASSERT_OK(result);
    EXPECT_EQ(result->version, 2);
    EXPECT_THAT(result->path, HasSubstr("session-a/00000000000000000002.ckpt"));
    checkpointer->CheckpointAll(CheckpointReason::kShutdown);  // b; a is unchanged
    EXPECT_EQ(checkpointer->DurableVersion("b"), 1);
  }
  SessionStore store;
  auto checkpointer = Open(&store);
  ASSERT_THAT(checkpointer->Restore(), IsOkAndHolds(2));
  EXPECT_EQ((*store.Find("a"))->Info().version, 2);
  EXPECT_EQ((*store.Find("b"))->Info().version, 1);
  EXPECT_EQ(checkpointer->DurableVersion("a"), 2);
}

TEST_F(CheckpointerTest, KeepsTheNewestAndFallsBackWhenTheNewestIsCorrupt) {
  {
    SessionStore store;
    auto checkpointer = Open(&store, /*keep=*/2);
    auto a = Create(store, "a");
    for (int i = 0; i < 3; ++i) {
      Step(*a, 0.1f * (i + 1));
      ASSERT_OK(checkpointer->Checkpoint(*a, CheckpointReason::kRequest));
    }
  }
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir_ / "session-a")) {
    files.push_back(e.path().filename().string());
  }
  std::sort(files.begin(), files.end());
  EXPECT_THAT(files,
              ::testing::ElementsAre("00000000000000000002.ckpt", "00000000000000000003.ckpt"));
  // The newest is torn: restore takes the one before, and says so.
  const fs::path newest = dir_ / "session-a" / "00000000000000000003.ckpt";
  fs::resize_file(newest, fs::file_size(newest) / 2);
  SessionStore store;
  auto checkpointer = Open(&store);
  ASSERT_THAT(checkpointer->Restore(), IsOkAndHolds(1));
  EXPECT_EQ((*store.Find("a"))->Info().version, 2);
  absl::MutexLock lock(&recorder_.mu);
  EXPECT_THAT(recorder_.skipped, ::testing::ElementsAre("a"));
}

// UpdateSessionRequest.restore_version: the session at a checkpointed version takes the place of
// the loaded one, whose later checkpoints are removed; steps to the old object are ABORTED.
TEST_F(CheckpointerTest, ASessionGoesBackToACheckpointedVersion) {
  SessionStore store;
  auto checkpointer = Open(&store, /*keep=*/5);
  auto a = Create(store, "a");
  for (int i = 0; i < 4; ++i) {
    Step(*a, 0.5f);
    if (i % 2 == 1) ASSERT_OK(checkpointer->Checkpoint(*a, CheckpointReason::kRequest));
  }
  EXPECT_THAT(checkpointer->Versions("a"), ::testing::ElementsAre(4, 2));
  EXPECT_THAT(checkpointer->ReadVersion("a", 3),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("it has 4, 2)")));
  absl::StatusOr<SessionState> state = checkpointer->ReadVersion("a", 2);
  ASSERT_OK(state);
  absl::StatusOr<std::shared_ptr<Session>> restored =
      store.Replace(*std::move(state), absl::AbortedError("restored"));
  ASSERT_OK(restored);
  checkpointer->ForgetAfter(**restored, 2);
  EXPECT_EQ((*store.Find("a"))->Info().version, 2);
  EXPECT_THAT(checkpointer->Versions("a"), ::testing::ElementsAre(2));
  EXPECT_EQ(checkpointer->DurableVersion("a"), 2);
  StepInput in;
  in.gradients = grads_.emplace_back(tensors_.Model(0.5f));
  EXPECT_THAT(a->StepAndWait(in), StatusIs(absl::StatusCode::kAborted));  // the replaced object
  Step(**restored, 0.5f);
  EXPECT_EQ((*restored)->Info().version, 3);
}

TEST_F(CheckpointerTest, ADeletedSessionIsForgotten) {
  {
    SessionStore store;
    auto checkpointer = Open(&store);
    auto a = Create(store, "a");
    ASSERT_OK(checkpointer->Checkpoint(*a, CheckpointReason::kRequest));
    checkpointer->Forget("a");
    EXPECT_FALSE(fs::exists(dir_ / "session-a"));
  }
  SessionStore store;
  auto checkpointer = Open(&store);
  EXPECT_THAT(checkpointer->Restore(), IsOkAndHolds(0));
}

// A client names the file a fork starts from: optd reads only its own checkpoints for it.
TEST_F(CheckpointerTest, ReadsOnlyCheckpointsOfItsOwnFolder) {
  SessionStore store;
  auto checkpointer = Open(&store);
  auto a = Create(store, "a");
  absl::StatusOr<CheckpointResult> written =
      checkpointer->Checkpoint(*a, CheckpointReason::kRequest);
  ASSERT_OK(written);
  EXPECT_OK(checkpointer->Read(written->path));
  const std::string relative = fs::relative(written->path, dir_).string();
  EXPECT_OK(checkpointer->Read(relative));  // relative to the folder

  // Outside the folder, by name, through "..", or through a symbolic link: refused unread.
  const fs::path outside = dir_.parent_path() / (dir_.filename().string() + "-outside.ckpt");
  fs::copy_file(written->path, outside, fs::copy_options::overwrite_existing);
  fs::create_symlink(outside, dir_ / "session-a" / "link.ckpt");
  for (const std::string& path : {outside.string(), "../" + outside.filename().string(),
                                  (dir_ / "session-a" / "link.ckpt").string(),
                                  std::string("/etc/passwd"), (dir_ / "session-a").string()}) {
    SCOPED_TRACE(path);
    EXPECT_THAT(checkpointer->Read(path),
                StatusIs(absl::StatusCode::kPermissionDenied,
                         HasSubstr("is not a checkpoint file in --checkpoint_dir")));
  }
  fs::remove(outside);
  EXPECT_THAT(checkpointer->Read("session-a/00000000000000000099.ckpt"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no such checkpoint")));
}

TEST_F(CheckpointerTest, AFolderThatCannotBeUsedIsAClearError) {
  fs::create_directories(dir_);
  std::ofstream(dir_ / "file") << "x";
  SessionStore store;
  CheckpointerOptions options;
  options.dir = (dir_ / "file").string();
  EXPECT_THAT(Checkpointer::Open(options, &store, &codec_, "inc", &clock_, nullptr),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("--checkpoint_dir")));
}

TEST_F(CheckpointerTest, CheckpointsPeriodicallyWhatMoved) {
  SessionStore store;
  auto checkpointer = Open(&store, 3, absl::Minutes(5));
  auto a = Create(store, "a");
  Create(store, "idle");
  Step(*a, 0.5f);
  checkpointer->Start();
  clock_.BlockUntilWaiters(1);
  clock_.Advance(absl::Minutes(5));
  absl::MutexLock lock(&recorder_.mu);
  auto two = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(recorder_.mu) {
    return recorder_.written.size() >= 2;
  };
  ASSERT_TRUE(recorder_.mu.AwaitWithTimeout(absl::Condition(&two), absl::Seconds(30)));
  EXPECT_THAT(recorder_.written, ::testing::UnorderedElementsAre("a", "idle"));
}

TEST_F(CheckpointerTest, AFailedCheckpointIsReportedAndTrainingGoesOn) {
  SessionStore store;
  auto checkpointer = Open(&store);
  auto a = Create(store, "a");
  ASSERT_OK(checkpointer->Checkpoint(*a, CheckpointReason::kRequest));
  // The session's folder is replaced by a file: writes into it fail.
  fs::remove_all(dir_ / "session-a");
  std::ofstream(dir_ / "session-a") << "in the way";
  Step(*a, 0.5f);
  EXPECT_FALSE(checkpointer->Checkpoint(*a, CheckpointReason::kRequest).ok());
  Step(*a, 0.5f);  // training goes on
  EXPECT_EQ(a->Info().version, 2);
  absl::MutexLock lock(&recorder_.mu);
  EXPECT_EQ(recorder_.failed.size(), 1u);
}

}  // namespace
}  // namespace optd
