#include "server/persist/checkpoint_file.h"

#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/persist/persist_testing.h"

namespace optd {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class CheckpointFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("optd-ckpt-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    auto s = Session::Create("s1", RichConfig(), tensors_.Model(0.5f));
    ASSERT_OK(s);
    session_ = *s;
    for (int i = 1; i <= 3; ++i) Step(i);
  }
  void TearDown() override { fs::remove_all(dir_); }

  void Step(int sequence) {
    StepInput in;
    const std::vector<WireTensorView>& g = grads_.emplace_back(tensors_.Model(0.1f * sequence));
    in.gradients = g;
    in.worker_id = "w1";
    in.sequence = sequence;
    in.loss = 1.0 / sequence;
    ASSERT_OK(session_->StepAndWait(in));
  }

  std::string Path(const char* name) const { return (dir_ / name).string(); }

  static std::vector<float> Values(const Session& s) {
    std::vector<float> all;
    absl::StatusOr<PullOutput> pulled = s.Pull({}, WireDType::kF32);
    EXPECT_TRUE(pulled.ok()) << pulled.status();
    if (!pulled.ok()) return all;
    for (const WireTensor& t : pulled->tensors) {
      all.insert(all.end(), t.data.shared()->begin(), t.data.shared()->end());
    }
    return all;
  }

  fs::path dir_;
  TestTensors tensors_;
  std::deque<std::vector<WireTensorView>> grads_;
  std::shared_ptr<Session> session_;
  TableCodec codec_;
};

TEST_F(CheckpointFileTest, ASessionReadBackContinuesBitForBit) {
  const std::string path = Path("a.ckpt");
  CheckpointMeta meta;
  ASSERT_OK(WriteCheckpointFile(path, session_->Snapshot(), codec_, "inc-1", absl::Now(), &meta));
  EXPECT_EQ(meta.bytes, static_cast<int64_t>(fs::file_size(path)));
  CheckpointMeta read_meta;
  absl::StatusOr<SessionState> state = ReadCheckpointFile(path, codec_, &read_meta);
  ASSERT_OK(state);
  EXPECT_EQ(read_meta.server_incarnation, "inc-1");
  EXPECT_EQ(state->version, 3);
  auto restored = Session::Restore(*std::move(state));
  ASSERT_OK(restored);
  EXPECT_EQ(Values(**restored), Values(*session_));
  EXPECT_EQ((*restored)->Info().learning_rate, session_->Info().learning_rate);
  // A retry of a step inside the checkpoint is still a duplicate.
  StepInput retry;
  retry.gradients = grads_[2];
  retry.worker_id = "w1";
  retry.sequence = 3;
  absl::StatusOr<StepOutput> dup = (*restored)->StepAndWait(retry);
  ASSERT_OK(dup);
  EXPECT_TRUE(dup->duplicate);
  // And both take the same next steps.
  for (int i = 4; i <= 6; ++i) {
    StepInput in;
    in.gradients = grads_.emplace_back(tensors_.Model(-0.2f * i));
    in.loss = 2.0;
    ASSERT_OK(session_->StepAndWait(in));
    ASSERT_OK((*restored)->StepAndWait(in));
  }
  EXPECT_EQ(Values(**restored), Values(*session_));
}

TEST_F(CheckpointFileTest, TheFileIsReadableWithoutOptd) {
  const std::string path = Path("plain.ckpt");
  ASSERT_OK(WriteCheckpointFile(path, session_->Snapshot(), codec_, "inc", absl::Now()));
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_EQ(bytes.substr(0, 8), "OPTDCKPT");
  uint32_t words[4];
  std::memcpy(words, bytes.data() + 8, sizeof(words));
  EXPECT_EQ(words[0], kCheckpointFormatVersion);
  const nlohmann::json manifest = nlohmann::json::parse(bytes.substr(24, words[1]));
  EXPECT_EQ(manifest["session_id"], "s1");
  EXPECT_EQ(manifest["version"], 3);
  bool found = false;
  for (const auto& a : manifest["arrays"]) {
    EXPECT_EQ(a["offset"].get<int64_t>() % 64, 0);
    if (a["kind"] == "parameters" && a["name"] == "b") {
      std::vector<float> b(a["count"].get<int64_t>());
      std::memcpy(b.data(), bytes.data() + a["offset"].get<int64_t>(), b.size() * 4);
      EXPECT_EQ(b, std::vector<float>(session_->Snapshot().parameters[1]->begin(),
                                      session_->Snapshot().parameters[1]->end()));
      found = true;
    }
  }
  EXPECT_TRUE(found);
  std::vector<std::string> names;
  for (const auto& a : manifest["arrays"]) {
    if (a["kind"] == "optimizer") names.push_back(a["name"]);
  }
  EXPECT_THAT(names, ::testing::Contains("exp_avg"));
  EXPECT_THAT(names, ::testing::Contains("max_exp_avg_sq"));
}

TEST_F(CheckpointFileTest, CorruptionIsDetectedNeverRestored) {
  const std::string path = Path("c.ckpt");
  ASSERT_OK(WriteCheckpointFile(path, session_->Snapshot(), codec_, "inc", absl::Now()));
  const std::string good = [&] {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }();
  auto write = [&](const std::string& bytes) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  };
  std::string flipped = good;
  flipped[flipped.size() - 10] ^= 0x20;  // inside the last array
  write(flipped);
  EXPECT_THAT(ReadCheckpointFile(path, codec_),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("does not match")));
  write(good.substr(0, good.size() / 2));
  EXPECT_THAT(ReadCheckpointFile(path, codec_), StatusIs(absl::StatusCode::kDataLoss));
  std::string manifest = good;
  manifest[40] ^= 1;
  write(manifest);
  EXPECT_THAT(ReadCheckpointFile(path, codec_),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("manifest's checksum")));
  write("not a checkpoint at all, but long enough");
  EXPECT_THAT(ReadCheckpointFile(path, codec_),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("OPTDCKPT")));
  write(good);
  EXPECT_OK(ReadCheckpointFile(path, codec_));
}

TEST_F(CheckpointFileTest, AFailedWriteLeavesThePreviousFileIntactAndNoTemporary) {
  const std::string path = Path("full.ckpt");
  ASSERT_OK(WriteCheckpointFile(path, session_->Snapshot(), codec_, "inc", absl::Now()));
  Step(4);
  // A full disk: the file size limit makes write() fail with EFBIG.
  std::signal(SIGXFSZ, SIG_IGN);
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  rlimit small = saved;
  small.rlim_cur = 512;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  const absl::Status failed =
      WriteCheckpointFile(path, session_->Snapshot(), codec_, "inc", absl::Now());
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &saved), 0);
  EXPECT_THAT(failed, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("cannot write")));
  absl::StatusOr<SessionState> old = ReadCheckpointFile(path, codec_);
  ASSERT_OK(old);
  EXPECT_EQ(old->version, 3);
  for (const auto& entry : fs::directory_iterator(dir_)) {
    EXPECT_THAT(entry.path().string(), ::testing::Not(HasSubstr(".tmp-")));
  }
  // A folder that is not there.
  EXPECT_THAT(
      WriteCheckpointFile(Path("missing/x.ckpt"), session_->Snapshot(), codec_, "inc", absl::Now()),
      StatusIs(absl::StatusCode::kNotFound, HasSubstr("missing")));
}

}  // namespace
}  // namespace optd
