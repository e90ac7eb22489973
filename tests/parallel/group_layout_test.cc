// GroupLayout is a pure function of (tensor, pipeline, layers): which stage and tensor
// rank each process is, and which layers each stage holds.
#include <gtest/gtest.h>

#include "worker/parallel/group_layout.h"

namespace shoal::worker {
namespace {

TEST(GroupLayout, RanksAreTensorMajorWithinStages) {
  auto g = GroupLayout::Make(2, 3, 30);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->world_size(), 6);
  EXPECT_EQ(g->stage_of(0), 0);
  EXPECT_EQ(g->tp_rank_of(1), 1);
  EXPECT_EQ(g->stage_of(3), 1);
  EXPECT_EQ(g->tp_rank_of(3), 1);
  EXPECT_EQ(g->rank_of(2, 1), 5);
  EXPECT_TRUE(g->is_last_stage(4));
  EXPECT_EQ(g->Describe(3), "group rank 3 (pipeline stage 1, tensor rank 1)");
}

TEST(GroupLayout, BalancedStagesGiveTheRemainderToTheFirst) {
  auto g = GroupLayout::Make(1, 4, 30);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->stage_begin, (std::vector<int64_t>{0, 8, 16, 23, 30}));
  const ShardSpec s = g->shard_of(2);
  EXPECT_EQ(s.first_layer, 16);
  EXPECT_EQ(s.end_layer, 23);
  EXPECT_EQ(s.tp_size, 1);
}

TEST(GroupLayout, GivenLayerCountsAreUsedAndChecked) {
  auto g = GroupLayout::Make(2, 2, 30, {18, 12});
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->stage_begin, (std::vector<int64_t>{0, 18, 30}));
  EXPECT_EQ(g->shard_of(3).first_layer, 18);
  EXPECT_EQ(g->shard_of(3).tp_rank, 1);
  EXPECT_EQ(GroupLayout::Make(1, 2, 30, {18, 11}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GroupLayout::Make(1, 2, 30, {30, 0}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GroupLayout::Make(1, 3, 30, {15, 15}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GroupLayout, MoreStagesThanLayersIsAnError) {
  auto g = GroupLayout::Make(1, 4, 3);
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(g.status().message()).find("more stages than the model's 3 layers"), std::string::npos);
}

}  // namespace
}  // namespace shoal::worker
