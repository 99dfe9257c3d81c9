#include "server/session/session_store.h"

#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "base/fake_clock.h"
#include "base/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

class SessionStoreTest : public ::testing::Test {
 protected:
  SessionStoreTest() { EncodeFloats(WireDType::kF32, {1.0f, 2.0f}, &data_); }

  absl::StatusOr<std::shared_ptr<Session>> Create(SessionStore& store, std::string id) {
    WireTensorView view{"w", shape_, WireDType::kF32, TensorBytes::Borrowed(data_)};
    return store.Create(std::move(id), SessionConfig{AdamOptions{}}, absl::MakeConstSpan(&view, 1));
  }

  std::vector<int64_t> shape_ = {2};
  std::string data_;
};

TEST_F(SessionStoreTest, CreateThenFindReturnsTheSameSession) {
  SessionStore store;
  auto created = Create(store, "a");
  ASSERT_TRUE(created.ok());
  auto found = store.Find("a");
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(created->get(), found->get());
  EXPECT_EQ(store.size(), 1);
}

TEST_F(SessionStoreTest, EmptyIdGetsAGeneratedOne) {
  SessionStore store;
  auto a = Create(store, "");
  auto b = Create(store, "");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_THAT((*a)->id(), MatchesRegex("s-[0-9a-f]{16}"));
  EXPECT_NE((*a)->id(), (*b)->id());
}

TEST_F(SessionStoreTest, DuplicateIdIsAlreadyExists) {
  SessionStore store;
  ASSERT_TRUE(Create(store, "a").ok());
  EXPECT_EQ(Create(store, "a").status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(SessionStoreTest, UnknownIdIsNotFound) {
  SessionStore store;
  EXPECT_EQ(store.Find("x").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store.Delete("x").code(), absl::StatusCode::kNotFound);
}

TEST_F(SessionStoreTest, DeleteRemovesButHoldersKeepTheirSession) {
  SessionStore store;
  auto held = Create(store, "a");
  ASSERT_TRUE(held.ok());
  ASSERT_TRUE(store.Delete("a").ok());
  EXPECT_EQ(store.Find("a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*held)->Info().id, "a");    // still usable by whoever was stepping it
  EXPECT_TRUE(Create(store, "a").ok());  // and the id is free again
}

TEST_F(SessionStoreTest, MaxSessionsIsResourceExhausted) {
  SessionStore store(SessionStoreOptions{.max_sessions = 2});
  ASSERT_TRUE(Create(store, "a").ok());
  ASSERT_TRUE(Create(store, "b").ok());
  absl::Status s = Create(store, "c").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("--max_sessions"));
}

TEST_F(SessionStoreTest, ListPagesInIdOrder) {
  SessionStore store;
  for (const char* id : {"c", "a", "b", "d"}) ASSERT_TRUE(Create(store, id).ok());
  auto page = store.List("", 3);
  ASSERT_EQ(page.size(), 3u);
  EXPECT_EQ(page[0]->id(), "a");
  EXPECT_EQ(page[2]->id(), "c");
  page = store.List("c", 3);
  ASSERT_EQ(page.size(), 1u);
  EXPECT_EQ(page[0]->id(), "d");
}

TEST_F(SessionStoreTest, ConcurrentCreateFindDeleteOnManySessions) {
  SessionStore store;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        const std::string id = "t" + std::to_string(t) + "-" + std::to_string(i % 10);
        auto created = Create(store, id);
        if (created.ok()) {
          ASSERT_TRUE(store.Find(id).ok());
          ASSERT_TRUE(store.Delete(id).ok());
        }
        store.List("", 5);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(store.size(), 0);
}

}  // namespace
}  // namespace optd

namespace optd {
namespace {

// Tells a test when the store unloads a session.
class UnloadObserver : public SessionObserver {
 public:
  void OnSessionUnloaded(absl::string_view id) override {
    absl::MutexLock lock(&mu);
    unloaded.push_back(std::string(id));
  }
  absl::Mutex mu;
  std::vector<std::string> unloaded ABSL_GUARDED_BY(mu);
};

TEST(SessionStoreIdleTest, UnloadsSessionsNothingHasUsedForTheTimeout) {
  FakeClock clock;
  UnloadObserver observer;
  SessionStoreOptions options;
  options.idle_timeout = absl::Minutes(10);
  SessionStore store(options, &observer, &clock);
  std::string data;
  EncodeFloats(WireDType::kF32, {1.0f, 2.0f}, &data);
  const std::vector<int64_t> shape = {2};
  WireTensorView view{"w", shape, WireDType::kF32, TensorBytes::Borrowed(data)};
  SgdOptions sgd;
  sgd.lr = 0.1;
  for (const char* id : {"idle", "busy"}) {
    ASSERT_TRUE(store.Create(id, SessionConfig{sgd}, absl::MakeConstSpan(&view, 1)).ok());
  }
  clock.Advance(absl::Minutes(6));
  StepInput step;
  step.gradients = absl::MakeConstSpan(&view, 1);
  ASSERT_TRUE((*store.Find("busy"))->StepAndWait(step).ok());  // a use
  (void)(*store.Find("idle"))->Info();                         // not a use
  clock.Advance(absl::Minutes(6));  // idle: 12 minutes without use; busy: 6
  {
    absl::MutexLock lock(&observer.mu);
    auto unloaded = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(observer.mu) {
      return !observer.unloaded.empty();
    };
    ASSERT_TRUE(observer.mu.AwaitWithTimeout(absl::Condition(&unloaded), absl::Seconds(30)));
    EXPECT_THAT(observer.unloaded, ::testing::ElementsAre("idle"));
  }
  EXPECT_TRUE(store.Find("busy").ok());
  EXPECT_THAT(store.Find("idle").status(),
              StatusIs(absl::StatusCode::kNotFound,
                       HasSubstr("was unloaded at 2001-09-09T01:58:40+00:00 after 10m without use "
                                 "(--session_idle_timeout)")));
}

}  // namespace
}  // namespace optd
