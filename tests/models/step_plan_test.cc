// The host plans of a CUDA step (worker/models/step_plan.h): which prompt rows attend tile
// by tile, the sampling records, and where each routed MoE slot goes. Pure functions, so
// they are pinned here on any machine; the GPU kernels that read them are tested in the
// cuda label.
#include "worker/models/step_plan.h"

#include "worker/engine/sampler.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <vector>

namespace shoal::worker {
namespace {

// The host and GPU samplers turn greedy at the same temperature (the engine draws a
// uniform exactly when the host sampler would).
static_assert(kGreedyTemperature == cuda::kGreedyTemperature);

TEST(StepPlan, PromptChunksBecomeTilesAndEveryOtherRowIsListedOnce) {
  const std::vector<int32_t> table = {0};
  const std::vector<cpu::AttentionSequence> seqs = {
      {0, 45, 10, table}, {45, 1, 90, table}, {46, 70, 0, table}, {116, 7, 3, table}};
  std::vector<cuda::QueryTile> tiles;
  std::vector<int32_t> untiled;
  PlanQueryTiles(seqs, 8, &tiles, &untiled);
  ASSERT_EQ(tiles.size(), 5u);
  const std::vector<std::vector<int64_t>> want = {{0, 32, 0, 10}, {32, 13, 0, 42}, {46, 32, 2, 0},
                                                  {78, 32, 2, 32}, {110, 6, 2, 64}};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(tiles[i].first_row, want[i][0]) << i;
    EXPECT_EQ(tiles[i].num_rows, want[i][1]) << i;
    EXPECT_EQ(tiles[i].seq, want[i][2]) << i;
    EXPECT_EQ(tiles[i].first_pos, want[i][3]) << i;
  }
  EXPECT_EQ(untiled, (std::vector<int32_t>{45, 116, 117, 118, 119, 120, 121, 122}));
  // Each of the 123 rows exactly once.
  std::vector<int> seen(123, 0);
  for (const cuda::QueryTile& t : tiles) {
    for (int r = 0; r < t.num_rows; ++r) ++seen[t.first_row + r];
  }
  for (int32_t r : untiled) ++seen[r];
  for (size_t r = 0; r < seen.size(); ++r) EXPECT_EQ(seen[r], 1) << "row " << r;

  // Decode rows only: no tiles, and no list (every row goes as it is).
  const std::vector<cpu::AttentionSequence> decode = {{0, 1, 5, table}, {1, 1, 9, table}};
  PlanQueryTiles(decode, 8, &tiles, &untiled);
  EXPECT_TRUE(tiles.empty());
  EXPECT_TRUE(untiled.empty());
}

TEST(StepPlan, SamplingRowsCarryTheirOptionsAndDistinctPenaltyTokens) {
  const std::vector<int32_t> a = {7, 7, 3, 9, 3, 3, 7};  // prompt 4, output 3, 3, 7
  const std::vector<int32_t> b = {1, 2, 3};
  std::vector<RowSampling> rows(3);
  cuda::SamplingRow& p0 = rows[0].params;
  p0.temperature = 0.8f, p0.top_k = 5, p0.top_p = 0.9f, p0.min_p = 0.1f, p0.uniform = 0.25, p0.frequency_penalty = 0.5f;
  rows[0].tokens = a, rows[0].num_prompt_tokens = 4;
  rows[1].tokens = b, rows[1].num_prompt_tokens = 3;  // no penalty: no tokens
  rows[2].tokens = b, rows[2].num_prompt_tokens = 1, rows[2].params.repetition_penalty = 1.3f;
  std::vector<cuda::SamplingRow> params;
  std::vector<cuda::PenaltyToken> penalties;
  PlanSampling(rows, &params, &penalties);
  ASSERT_EQ(params.size(), 3u);
  EXPECT_EQ(params[0].temperature, 0.8f);
  EXPECT_EQ(params[0].top_k, 5);
  EXPECT_EQ(params[0].top_p, 0.9f);
  EXPECT_EQ(params[0].min_p, 0.1f);
  EXPECT_EQ(params[0].uniform, 0.25);
  EXPECT_EQ(params[0].frequency_penalty, 0.5f);
  auto counts = [&](int r) {
    std::map<int32_t, int32_t> m;
    for (int32_t e = params[r].penalty_begin; e < params[r].penalty_end; ++e) {
      EXPECT_TRUE(m.emplace(penalties[e].token, penalties[e].output_count).second) << "token listed twice";
    }
    return m;
  };
  EXPECT_EQ(counts(0), (std::map<int32_t, int32_t>{{7, 1}, {3, 2}, {9, 0}}));
  EXPECT_EQ(params[1].penalty_begin, params[1].penalty_end);
  EXPECT_EQ(counts(2), (std::map<int32_t, int32_t>{{1, 0}, {2, 1}, {3, 1}}));
  EXPECT_EQ(params[2].repetition_penalty, 1.3f);
}

// Each of T tokens routed to k distinct experts of E at random, weights in [0.1, 1).
Routing RandomRouting(int64_t T, int64_t k, int64_t E, std::mt19937& rng) {
  Routing r;
  r.k = k;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> ids(E);
    for (int32_t e = 0; e < E; ++e) ids[e] = e;
    std::shuffle(ids.begin(), ids.end(), rng);
    for (int64_t j = 0; j < k; ++j) {
      r.ids.push_back(ids[j]);
      r.weights.push_back(std::uniform_real_distribution<float>(0.1f, 1.0f)(rng));
    }
  }
  return r;
}

// Random routings: the gathered rows group each local expert's tokens in token order, a
// token's slots come in expert order with their weights, and combining toy experts
// through the plan gives the direct per-token sum in expert order, exactly.
TEST(StepPlan, ExpertSlotsGroupTokensByExpertAndKeepEachTokensExpertOrder) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 50; ++trial) {
    const int64_t T = 1 + trial % 9, k = 3, E = 8;
    const ExpertRange local{2, 6};
    const Routing r = RandomRouting(T, k, E, rng);
    ExpertSlots plan;
    PlanExpertSlots(r, T, local, &plan);
    ASSERT_EQ(plan.count.size(), 4u);
    ASSERT_EQ(plan.offset.size(), 5u);
    ASSERT_EQ(plan.gathered(), plan.offset.back());
    for (int64_t e = 0; e < 4; ++e) {
      std::vector<int32_t> want;
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t j = 0; j < k; ++j) {
          if (r.ids[t * k + j] == local.begin + e) want.push_back(static_cast<int32_t>(t));
        }
      }
      const std::vector<int32_t> got(plan.gather.begin() + plan.offset[e], plan.gather.begin() + plan.offset[e + 1]);
      EXPECT_EQ(got, want) << "expert " << local.begin + e;
    }
    // Toy experts: expert e maps token t to (t + 1) * (e + 1). The gathered rows' outputs,
    // combined through the plan, against the direct sum.
    std::vector<float> out(plan.gathered());
    for (int64_t e = 0; e < 4; ++e) {
      for (int64_t i = plan.offset[e]; i < plan.offset[e + 1]; ++i) {
        out[i] = static_cast<float>((plan.gather[i] + 1) * (local.begin + e + 1));
      }
    }
    for (int64_t t = 0; t < T; ++t) {
      std::vector<std::pair<int32_t, float>> mine;  // (expert, weight) of the token's local experts
      for (int64_t j = 0; j < k; ++j) {
        if (local.Contains(r.ids[t * k + j])) mine.push_back({r.ids[t * k + j], r.weights[t * k + j]});
      }
      std::sort(mine.begin(), mine.end());
      float want = 0.0f, got = 0.0f;
      for (auto [e, w] : mine) want += w * static_cast<float>((t + 1) * (e + 1));
      int64_t local_slots = 0, last = -1;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t row = plan.slot_rows[t * k + j];
        if (row < 0) continue;
        ++local_slots;
        EXPECT_EQ(plan.gather[row], t);
        // Expert order: the row's expert (from its group) never decreases along the slots.
        const int64_t e = std::upper_bound(plan.offset.begin(), plan.offset.end(), row) - plan.offset.begin() - 1;
        EXPECT_GE(e, last);
        last = e;
        got += plan.slot_weights[t * k + j] * out[row];
      }
      EXPECT_EQ(local_slots, static_cast<int64_t>(mine.size()));
      EXPECT_EQ(got, want) << "token " << t;
    }
  }
}

// Every local expert with rows is in exactly one of the plan's lists: a GroupedGemv group
// naming its rows when it has at most kGroupedGemvMaxRows of them, else the GEMM list.
TEST(StepPlan, ExpertGroupsSendEachExpertWithRowsToTheGemvOrTheGemm) {
  std::mt19937 rng(9);
  for (const int64_t T : {int64_t{1}, int64_t{7}, int64_t{40}, int64_t{100}}) {
    const int64_t k = 3, E = 8;
    const ExpertRange local{1, 7};
    const Routing r = RandomRouting(T, k, E, rng);
    ExpertSlots plan;
    PlanExpertSlots(r, T, local, &plan);
    std::vector<int> seen(6, 0);
    for (const cuda::GemvGroup& g : plan.small) {
      ASSERT_GE(g.matrix, 0);
      ASSERT_LT(g.matrix, 6);
      ++seen[g.matrix];
      EXPECT_EQ(g.first_row, plan.offset[g.matrix]);
      EXPECT_EQ(g.num_rows, plan.count[g.matrix]);
      EXPECT_GT(g.num_rows, 0);
      EXPECT_LE(g.num_rows, cuda::kGroupedGemvMaxRows);
    }
    for (const int64_t e : plan.large) {
      ++seen[e];
      EXPECT_GT(plan.count[e], cuda::kGroupedGemvMaxRows);
    }
    for (int64_t e = 0; e < 6; ++e) EXPECT_EQ(seen[e], plan.count[e] > 0 ? 1 : 0) << "T " << T << " expert " << e;
    if (T == 100) {
      EXPECT_FALSE(plan.large.empty());  // ~37 rows an expert
    }
    if (T <= 7) {
      EXPECT_TRUE(plan.large.empty());
    }
  }
}

}  // namespace
}  // namespace shoal::worker
