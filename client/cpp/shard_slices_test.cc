// ShardSlices (shard_slices.h): cutting whole tensors along a placement and putting them back,
// without a server.

#include "client/cpp/shard_slices.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::SizeIs;

void AddSlice(v1::Placement* p, const std::string& tensor, std::vector<int64_t> shape,
              int64_t begin, int64_t end, int shard) {
  v1::PlacedSlice* s = p->add_slices();
  s->set_tensor(tensor);
  s->mutable_shape()->Add(shape.begin(), shape.end());
  s->set_row_begin(begin);
  s->set_row_end(end);
  s->set_shard(shard);
  const int64_t rows = shape.empty() ? 1 : shape[0];
  s->set_name(begin == 0 && end == rows
                  ? tensor
                  : tensor + ":rows:" + std::to_string(begin) + ":" + std::to_string(end));
}

// "m" [5, 2] cut into rows [0, 2) on shard 1 and [2, 5) on shard 0; "b" [3] whole on shard 1;
// the scalar "s" whole on shard 0.
v1::Placement TwoShards() {
  v1::Placement p;
  p.set_shards(2);
  p.set_fingerprint(42);
  AddSlice(&p, "m", {5, 2}, 0, 2, 1);
  AddSlice(&p, "m", {5, 2}, 2, 5, 0);
  AddSlice(&p, "b", {3}, 0, 3, 1);
  AddSlice(&p, "s", {}, 0, 1, 0);
  return p;
}

std::vector<HostTensor> Whole() {
  return {{"b", {3}, {7, 8, 9}}, {"m", {5, 2}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}}, {"s", {}, {3.5}}};
}

TEST(ShardSlicesTest, CutsRowRangesAndPutsThemBack) {
  absl::StatusOr<ShardSlices> slices = ShardSlices::FromPlacement(TwoShards());
  ASSERT_TRUE(slices.ok()) << slices.status();
  EXPECT_EQ(slices->fingerprint(), 42u);
  EXPECT_THAT(slices->tensor_names(), ElementsAre("m", "b", "s"));
  absl::StatusOr<std::vector<std::vector<HostTensor>>> parts = slices->Split(Whole());
  ASSERT_TRUE(parts.ok()) << parts.status();
  ASSERT_THAT((*parts)[0], SizeIs(2));
  EXPECT_EQ((*parts)[0][0].name, "m:rows:2:5");
  EXPECT_THAT((*parts)[0][0].shape, ElementsAre(3, 2));
  EXPECT_THAT((*parts)[0][0].values, ElementsAre(4, 5, 6, 7, 8, 9));
  EXPECT_EQ((*parts)[0][1].name, "s");
  ASSERT_THAT((*parts)[1], SizeIs(2));
  EXPECT_THAT((*parts)[1][0].values, ElementsAre(0, 1, 2, 3));
  EXPECT_EQ((*parts)[1][1].name, "b");

  absl::StatusOr<std::vector<HostTensor>> back = slices->Assemble(*parts);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_THAT(*back, SizeIs(3));
  EXPECT_EQ((*back)[0].name, "m");
  EXPECT_THAT((*back)[0].shape, ElementsAre(5, 2));
  EXPECT_THAT((*back)[0].values, ElementsAre(0, 1, 2, 3, 4, 5, 6, 7, 8, 9));
  EXPECT_THAT((*back)[1].values, ElementsAre(7, 8, 9));
  EXPECT_THAT((*back)[2].values, ElementsAre(3.5));
}

TEST(ShardSlicesTest, RowSparseRowsGoToTheirSliceRenumbered) {
  absl::StatusOr<ShardSlices> slices = ShardSlices::FromPlacement(TwoShards());
  ASSERT_TRUE(slices.ok());
  std::vector<HostTensor> grads = Whole();
  grads[1] = RowSparse("m", {5, 2}, {4, 1, 4}, {40, 41, 10, 11, 42, 43});
  absl::StatusOr<std::vector<std::vector<HostTensor>>> parts = slices->Split(grads);
  ASSERT_TRUE(parts.ok()) << parts.status();
  EXPECT_THAT(*(*parts)[0][0].rows, ElementsAre(2, 2));  // rows 4, 4 of [2, 5)
  EXPECT_THAT((*parts)[0][0].values, ElementsAre(40, 41, 42, 43));
  EXPECT_THAT(*(*parts)[1][0].rows, ElementsAre(1));
  // A row-sparse slice a shard left out (no rows) is fine; a dense one is not.
  (*parts)[1].erase((*parts)[1].begin());
  absl::StatusOr<std::vector<HostTensor>> back = slices->Assemble(*parts);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_THAT(*(*back)[0].rows, ElementsAre(4, 4));
  absl::StatusOr<std::vector<std::vector<HostTensor>>> dense = slices->Split(Whole());
  (*dense)[1].erase((*dense)[1].begin());
  EXPECT_EQ(slices->Assemble(*dense).status().code(), absl::StatusCode::kInternal);

  absl::StatusOr<HostTensor> ordered =
      ReorderRows(RowSparse("m", {5, 2}, {1, 4}, {10, 11, 40, 41}), std::vector<int64_t>{4, 1, 4});
  ASSERT_TRUE(ordered.ok()) << ordered.status();
  EXPECT_THAT(ordered->values, ElementsAre(40, 41, 10, 11, 40, 41));
}

TEST(ShardSlicesTest, TensorsThatDoNotFitAreInvalidArguments) {
  absl::StatusOr<ShardSlices> slices = ShardSlices::FromPlacement(TwoShards());
  ASSERT_TRUE(slices.ok());
  std::vector<HostTensor> grads = Whole();
  grads.push_back({"extra", {1}, {0}});
  EXPECT_THAT(slices->Split(grads).status().message(), HasSubstr("name [extra] unknown"));
  grads = Whole();
  grads[1].values.pop_back();
  EXPECT_EQ(slices->Split(grads).status().code(), absl::StatusCode::kInvalidArgument);
  grads = Whole();
  grads[1] = RowSparse("m", {5, 2}, {5}, {0, 0});
  EXPECT_THAT(slices->Split(grads).status().message(), HasSubstr("outside [0, 5)"));

  PullOptions state;
  state.optimizer_state = true;
  EXPECT_EQ(slices->SplitPull(state).status().code(), absl::StatusCode::kInvalidArgument);
  PullOptions rows;
  rows.rows = {{"m", {4, 0}}};
  absl::StatusOr<std::vector<std::optional<PullOptions>>> asks = slices->SplitPull(rows);
  ASSERT_TRUE(asks.ok()) << asks.status();
  EXPECT_THAT((*asks)[0]->names, ElementsAre("m:rows:2:5", "s"));
  EXPECT_THAT((*asks)[0]->rows[0].indices, ElementsAre(2));
  EXPECT_THAT((*asks)[1]->rows[0].indices, ElementsAre(0));
}

TEST(ShardSlicesTest, PlacementsThatAreNotOneAreRefused) {
  v1::Placement one = TwoShards();
  one.set_shards(1);
  EXPECT_EQ(ShardSlices::FromPlacement(one).status().code(), absl::StatusCode::kInvalidArgument);
  v1::Placement gap = TwoShards();
  gap.mutable_slices(1)->set_row_begin(3);
  EXPECT_THAT(ShardSlices::FromPlacement(gap).status().message(), HasSubstr("in order"));
  v1::Placement short_end = TwoShards();
  short_end.mutable_slices(1)->set_row_end(4);
  EXPECT_THAT(ShardSlices::FromPlacement(short_end).status().message(),
              HasSubstr("do not reach its last row"));
  v1::Placement far = TwoShards();
  far.mutable_slices(2)->set_shard(2);
  EXPECT_EQ(ShardSlices::FromPlacement(far).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace client
}  // namespace optd
