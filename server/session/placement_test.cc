#include "server/session/placement.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "server/optim/clip.h"
#include "server/optim/optimizer_options.h"
#include "server/session/tensor_spec.h"

namespace optd {
namespace {

struct Slice {
  std::string name;
  int64_t begin;
  int64_t end;
  int shard;
};

std::vector<Slice> Slices(const Placement& p) {
  std::vector<Slice> out;
  for (const PlacedSlice& s : p.slices) out.push_back({s.name, s.row_begin, s.row_end, s.shard});
  return out;
}

bool operator==(const Slice& a, const Slice& b) {
  return a.name == b.name && a.begin == b.begin && a.end == b.end && a.shard == b.shard;
}

void PrintTo(const Slice& s, std::ostream* os) {
  *os << s.name << " [" << s.begin << ", " << s.end << ") on " << s.shard;
}

const std::vector<ModelTensor> kModel = {
    {"emb", {100, 10}}, {"w", {10, 20}}, {"b", {20}}, {"out", {20, 3}}, {"scale", {}}};

TEST(PlanPlacementTest, SplitsLargeTensorsIntoRowRangesAndBalancesTheRestLargestFirst) {
  absl::StatusOr<Placement> p = PlanPlacement(kModel, AdamOptions{}, ClipOptions{}, 3, 1000);
  ASSERT_TRUE(p.ok()) << p.status();
  // emb (1000 elements) is cut in three: 330, 330 and 340 elements on shards 0, 1, 2. Then the
  // whole tensors, largest first, each on the least-loaded shard (ties: the lowest): w (200) on
  // shard 0 (loads 530, 330, 340), out (60) on 1 (530, 390, 340), b (20) on 2 (530, 390, 360),
  // scale (1) on 2. Slices are listed in model order.
  const std::vector<Slice> want = {{"emb:rows:0:33", 0, 33, 0},
                                   {"emb:rows:33:66", 33, 66, 1},
                                   {"emb:rows:66:100", 66, 100, 2},
                                   {"w", 0, 10, 0},
                                   {"b", 0, 20, 2},
                                   {"out", 0, 20, 1},
                                   {"scale", 0, 1, 2}};
  EXPECT_EQ(Slices(*p), want);
  EXPECT_EQ(p->shards, 3);
  EXPECT_NE(p->fingerprint, 0u);
  EXPECT_EQ(p->fingerprint, PlacementFingerprint(*p));
  EXPECT_EQ(p->slices[2].SliceShape(), (std::vector<int64_t>{34, 10}));
  EXPECT_EQ(p->slices[6].SliceShape(), (std::vector<int64_t>{}));
}

TEST(PlanPlacementTest, IsDeterministicAndTheFingerprintCoversEveryField) {
  absl::StatusOr<Placement> a = PlanPlacement(kModel, AdamOptions{}, ClipOptions{}, 3, 1000);
  absl::StatusOr<Placement> b = PlanPlacement(kModel, AdamOptions{}, ClipOptions{}, 3, 1000);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->fingerprint, b->fingerprint);
  Placement moved = *a;
  moved.slices[0].row_end = 34;
  EXPECT_NE(PlacementFingerprint(moved), a->fingerprint);
  Placement renamed = *a;
  renamed.slices[3].name = "w2";
  EXPECT_NE(PlacementFingerprint(renamed), a->fingerprint);
  Placement other_shard = *a;
  other_shard.shard = 2;  // which copy it is does not change the map
  EXPECT_EQ(PlacementFingerprint(other_shard), a->fingerprint);
}

TEST(PlanPlacementTest, PerTensorOptimizersKeepTensorsWhole) {
  for (const OptimizerOptions& o :
       {OptimizerOptions(LambOptions{}), OptimizerOptions(LarsOptions{}),
        OptimizerOptions(MuonOptions{}), OptimizerOptions(AdafactorOptions{})}) {
    absl::StatusOr<Placement> p = PlanPlacement(kModel, o, ClipOptions{}, 2, 1);
    ASSERT_TRUE(p.ok()) << OptimizerName(o) << ": " << p.status();
    for (const PlacedSlice& s : p->slices) EXPECT_TRUE(s.whole()) << s.name;
  }
  NormalizedGdOptions per_tensor;
  per_tensor.norm = NormalizedGdOptions::Norm::kPerTensor;
  absl::StatusOr<Placement> p = PlanPlacement(kModel, per_tensor, ClipOptions{}, 2, 1);
  ASSERT_TRUE(p.ok());
  for (const PlacedSlice& s : p->slices) EXPECT_TRUE(s.whole()) << s.name;
}

TEST(PlanPlacementTest, RefusesWhatNoShardCanCompute) {
  for (const OptimizerOptions& o :
       {OptimizerOptions(NormalizedGdOptions{}), OptimizerOptions(ProdigyOptions{}),
        OptimizerOptions(DAdaptAdamOptions{}), OptimizerOptions(DAdaptSgdOptions{}),
        OptimizerOptions(DogOptions{})}) {
    absl::StatusOr<Placement> p = PlanPlacement(kModel, o, ClipOptions{}, 2, 0);
    EXPECT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition) << OptimizerName(o);
    EXPECT_NE(p.status().message().find("whole model"), std::string::npos) << p.status();
  }
  ClipOptions by_norm;
  by_norm.max_norm = 1.0;
  EXPECT_EQ(PlanPlacement(kModel, AdamOptions{}, by_norm, 2, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ClipOptions by_value;
  by_value.clip_value = 1.0;
  EXPECT_TRUE(PlanPlacement(kModel, AdamOptions{}, by_value, 2, 0).ok());
}

TEST(PlanPlacementTest, BadArgumentsNameTheField) {
  auto message = [](absl::StatusOr<Placement> p) { return std::string(p.status().message()); };
  EXPECT_EQ(message(PlanPlacement(kModel, AdamOptions{}, ClipOptions{}, 1, 0)),
            "shards = 1 is out of range: must be 2 to 64");
  EXPECT_EQ(message(PlanPlacement(kModel, AdamOptions{}, ClipOptions{}, 65, 0)),
            "shards = 65 is out of range: must be 2 to 64");
  EXPECT_NE(message(PlanPlacement(kModel, AdamOptions{}, ClipOptions{}, 2, -5))
                .find("split_min_elements = -5"),
            std::string::npos);
  EXPECT_NE(message(PlanPlacement({}, AdamOptions{}, ClipOptions{}, 2, 0)).find("tensors has 0"),
            std::string::npos);
  EXPECT_NE(message(PlanPlacement({{"a", {2}}, {"a", {3}}}, AdamOptions{}, ClipOptions{}, 2, 0))
                .find("tensors[1].name \"a\" is repeated"),
            std::string::npos);
  // Two whole tensors cannot fill three shards.
  EXPECT_NE(message(PlanPlacement({{"a", {2}}, {"b", {3}}}, AdamOptions{}, ClipOptions{}, 3, 0))
                .find("leaves shard 2 without a tensor"),
            std::string::npos);
}

TensorSpecs SpecsOf(const Placement& p, int shard) {
  std::vector<TensorSpec> specs;
  for (const PlacedSlice& s : p.SlicesOf(shard)) {
    int64_t n = 1;
    for (int64_t d : s.SliceShape()) n *= d;
    specs.push_back({s.name, s.SliceShape(), n});
  }
  return TensorSpecs(std::move(specs));
}

TEST(CheckShardTest, AcceptsItsOwnSlicesAndRefusesAnythingElse) {
  absl::StatusOr<Placement> plan = PlanPlacement(kModel, AdamOptions{}, ClipOptions{}, 3, 1000);
  ASSERT_TRUE(plan.ok());
  for (int shard = 0; shard < 3; ++shard) {
    Placement p = *plan;
    p.shard = shard;
    EXPECT_TRUE(CheckShard(p, AdamOptions{}, ClipOptions{}, SpecsOf(p, shard)).ok()) << shard;
  }
  Placement p = *plan;
  p.shard = 1;
  EXPECT_EQ(CheckShard(p, AdamOptions{}, ClipOptions{}, SpecsOf(p, 0)).message(),
            "tensors lacks emb:rows:33:66, shard 1's slice of emb in the placement");
  Placement shifted = *plan;
  shifted.slices[0].row_end = 34;
  shifted.slices[1].row_begin = 34;
  shifted.fingerprint = PlacementFingerprint(shifted);
  EXPECT_NE(CheckShard(shifted, AdamOptions{}, ClipOptions{}, SpecsOf(shifted, 0))
                .message()
                .find("is not the plan of its own model"),
            std::string::npos);
  Placement bad_shard = *plan;
  bad_shard.shard = 3;
  EXPECT_EQ(CheckShard(bad_shard, AdamOptions{}, ClipOptions{}, SpecsOf(*plan, 0)).code(),
            absl::StatusCode::kInvalidArgument);
  // The plan was for an element-wise optimizer: a per-tensor one cannot run its split tensors.
  EXPECT_EQ(CheckShard(*plan, LambOptions{}, ClipOptions{}, SpecsOf(*plan, 0)).code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace optd
