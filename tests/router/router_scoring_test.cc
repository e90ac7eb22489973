// The pure routing core: scoring, prefix hashing, prefix affinity, admission/shedding.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <vector>

#include "router/balancer.h"
#include "router/prefix_affinity.h"
#include "router/upstream_scoring.h"

namespace shoal::router {
namespace {

TEST(GroupLoadScore, AddsRequestsTokensQueueAndKvUsage) {
  ScoringWeights w;
  w.tokens_per_request = 100;
  w.waiting_weight = 1;
  w.kv_usage_weight = 2;
  GroupLoad g;
  g.inflight_requests = 3;
  g.inflight_tokens = 250;
  g.waiting_sequences = 4;
  g.kv_cache_usage_ratio = 0.5;
  EXPECT_DOUBLE_EQ(GroupLoadScore(g, w), 3 + 2.5 + 4 + 1.0);
}

TEST(PickGroup, PicksLeastLoaded) {
  std::vector<GroupLoad> groups(3);
  groups[0].inflight_requests = 2;
  groups[1].inflight_requests = 1;
  groups[2].inflight_requests = 3;
  EXPECT_EQ(PickGroup(groups, 0, ScoringWeights{}, 0), 1);
}

TEST(PickGroup, SkipsIneligibleAndReturnsMinusOneWhenNone) {
  std::vector<GroupLoad> groups(2);
  groups[0].eligible = false;
  groups[1].inflight_requests = 10;
  EXPECT_EQ(PickGroup(groups, 0, ScoringWeights{}, 0), 1);
  groups[1].eligible = false;
  EXPECT_EQ(PickGroup(groups, 0, ScoringWeights{}, 0), -1);
  EXPECT_EQ(PickGroup({}, 0, ScoringWeights{}, 0), -1);
}

TEST(PickGroup, RotatesAmongExactTies) {
  std::vector<GroupLoad> groups(3);
  EXPECT_EQ(PickGroup(groups, 0, ScoringWeights{}, 0), 0);
  EXPECT_EQ(PickGroup(groups, 0, ScoringWeights{}, 1), 1);
  EXPECT_EQ(PickGroup(groups, 0, ScoringWeights{}, 2), 2);
  EXPECT_EQ(PickGroup(groups, 0, ScoringWeights{}, 3), 0);
}

TEST(PickGroup, PrefixMatchWinsWhileLoadGapIsBelowTheBonus) {
  ScoringWeights w;
  w.affinity_bonus = 4;
  std::vector<GroupLoad> groups(2);
  groups[0].matched_prefix_blocks = 8;  // full match, 8 of 8 blocks
  // Group 0 carries 3 more requests than group 1: 3 - 4 < 0, it still wins.
  groups[0].inflight_requests = 3;
  EXPECT_EQ(PickGroup(groups, 8, w, 1), 0);
  // At 5 more (5 - 4 > 0) the hot prefix spills to the idle group.
  groups[0].inflight_requests = 5;
  EXPECT_EQ(PickGroup(groups, 8, w, 0), 1);
}

TEST(PickGroup, PartialOverlapEarnsAProportionalBonus) {
  ScoringWeights w;
  w.affinity_bonus = 4;
  std::vector<GroupLoad> groups(2);
  groups[0].matched_prefix_blocks = 2;  // 2 of 8 blocks: bonus 1
  groups[0].inflight_requests = 1;
  groups[1].inflight_requests = 0;
  // 1 - 1 = 0 vs 0: a tie, rotation decides.
  EXPECT_EQ(PickGroup(groups, 8, w, 0), 0);
  EXPECT_EQ(PickGroup(groups, 8, w, 1), 1);
  groups[0].inflight_requests = 2;  // 2 - 1 = 1 > 0
  EXPECT_EQ(PickGroup(groups, 8, w, 0), 1);
}

TEST(PrefixBlockHashes, EqualPrefixesGiveEqualLeadingHashes) {
  PrefixOptions options;
  options.block_chars = 4;
  v1::GenerateRequest a, b;
  a.set_prompt("abcdefghXYZW-tail");
  b.set_prompt("abcdefghQQQQ");
  const auto ha = PrefixBlockHashes(a, options);
  const auto hb = PrefixBlockHashes(b, options);
  ASSERT_EQ(ha.size(), 4u);  // 17 bytes: 4 whole blocks
  ASSERT_EQ(hb.size(), 3u);
  EXPECT_EQ(ha[0], hb[0]);
  EXPECT_EQ(ha[1], hb[1]);
  EXPECT_NE(ha[2], hb[2]);
}

TEST(PrefixBlockHashes, HashChainsSoSameBlockAtDifferentPrefixDiffers) {
  PrefixOptions options;
  options.block_chars = 4;
  v1::GenerateRequest a, b;
  a.set_prompt("aaaabbbb");
  b.set_prompt("ccccbbbb");
  EXPECT_NE(PrefixBlockHashes(a, options)[1], PrefixBlockHashes(b, options)[1]);
}

TEST(PrefixBlockHashes, ModelAndChatAndTokenIdsAndCap) {
  PrefixOptions options;
  options.block_chars = 4;
  options.block_tokens = 2;
  options.max_blocks = 2;
  v1::GenerateRequest a, b;
  a.set_prompt("abcdabcdabcd");
  b.set_prompt("abcdabcdabcd");
  b.set_model("other");
  EXPECT_EQ(PrefixBlockHashes(a, options).size(), 2u);  // capped
  EXPECT_NE(PrefixBlockHashes(a, options)[0], PrefixBlockHashes(b, options)[0]);

  v1::GenerateRequest chat;
  auto* m = chat.mutable_chat()->add_messages();
  m->set_role("system");
  m->set_content("you are helpful");
  EXPECT_EQ(PromptBytes(chat), std::string("system\x1fyou are helpful\x1e"));
  EXPECT_EQ(PrefixBlockHashes(chat, options).size(), 2u);

  v1::GenerateRequest ids;
  for (int i : {1, 2, 3, 4, 5}) ids.mutable_token_ids()->add_ids(i);
  EXPECT_EQ(PrefixBlockHashes(ids, options).size(), 2u);
  v1::GenerateRequest short_prompt;
  short_prompt.set_prompt("abc");
  EXPECT_TRUE(PrefixBlockHashes(short_prompt, options).empty());
}

TEST(EstimateRequestTokens, PromptQuarterBytesPlusMaxTokens) {
  v1::GenerateRequest r;
  r.set_prompt(std::string(40, 'x'));
  r.set_max_tokens(100);
  EXPECT_EQ(EstimateRequestTokens(r, 256), 10 + 100);
  r.set_max_tokens(0);
  EXPECT_EQ(EstimateRequestTokens(r, 256), 10 + 256);
  v1::GenerateRequest ids;
  ids.mutable_token_ids()->add_ids(7);
  ids.set_max_tokens(5);
  EXPECT_EQ(EstimateRequestTokens(ids, 256), 6);
}

TEST(PrefixAffinityTable, MatchedBlocksIsDeepestOwnedBlock) {
  PrefixAffinityTable table(100);
  const std::vector<uint64_t> long_prompt = {11, 12, 13, 14};
  table.Record(std::vector<uint64_t>{11, 12}, 7);
  EXPECT_EQ(table.MatchedBlocks(long_prompt, 7), 2);
  EXPECT_EQ(table.MatchedBlocks(long_prompt, 8), 0);
  table.Record(long_prompt, 8);  // group 8 served the longer prompt: it now owns all four
  EXPECT_EQ(table.MatchedBlocks(long_prompt, 8), 4);
  EXPECT_EQ(table.MatchedBlocks(long_prompt, 7), 0);
  table.ForgetGroup(8);
  EXPECT_EQ(table.size(), 0u);
}

TEST(PrefixAffinityTable, EvictsLeastRecentlyUsedBlock) {
  PrefixAffinityTable table(2);
  table.Record(std::vector<uint64_t>{1}, 1);
  table.Record(std::vector<uint64_t>{2}, 1);
  table.Record(std::vector<uint64_t>{1}, 1);  // 1 is fresh again; 2 is the oldest
  table.Record(std::vector<uint64_t>{3}, 1);
  EXPECT_EQ(table.MatchedBlocks(std::vector<uint64_t>{1}, 1), 1);
  EXPECT_EQ(table.MatchedBlocks(std::vector<uint64_t>{2}, 1), 0);
  EXPECT_EQ(table.MatchedBlocks(std::vector<uint64_t>{3}, 1), 1);
}

// --- Balancer: admission, shedding, health, models ---------------------------------------

class BalancerTest : public ::testing::Test {
 protected:
  void AddHealthy(Balancer& b, uint64_t id, std::vector<std::string> models = {"m"}) {
    b.UpsertGroup(id, "g" + std::to_string(id));
    b.SetModels(id, std::move(models));
    b.SetHealthy(id, true);
  }
  static RouteRequest Req(std::string model = "m") {
    RouteRequest r;
    r.model = std::move(model);
    r.estimated_tokens = 10;
    return r;
  }
  static Balancer::AdmitCallback Record(std::vector<absl::StatusOr<Lease>>& out) {
    return [&out](absl::StatusOr<Lease> lease) { out.push_back(std::move(lease)); };
  }
};

TEST_F(BalancerTest, NoGroupsOrNoneHealthyIsUnavailable) {
  Balancer b(BalancerOptions{});
  auto a = b.Acquire(Req(), nullptr);
  EXPECT_EQ(a.kind, Balancer::Admission::kRejected);
  EXPECT_EQ(a.status.code(), absl::StatusCode::kUnavailable);
  b.UpsertGroup(1, "g1");
  a = b.Acquire(Req(), nullptr);
  EXPECT_EQ(a.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(a.status.message().find("1 known, 0 healthy"), absl::string_view::npos);
}

TEST_F(BalancerTest, UnknownModelIsNotFoundAndListsServedModels) {
  Balancer b(BalancerOptions{});
  AddHealthy(b, 1, {"smollm2"});
  auto a = b.Acquire(Req("gpt-9"), nullptr);
  EXPECT_EQ(a.status.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(a.status.message().find("smollm2"), absl::string_view::npos);
  EXPECT_EQ(b.Acquire(Req(""), nullptr).kind, Balancer::Admission::kAdmitted);  // "" = default
}

TEST_F(BalancerTest, SpreadsUniformLoadEvenly) {
  Balancer b(BalancerOptions{});
  for (uint64_t id = 1; id <= 3; ++id) AddHealthy(b, id);
  std::map<uint64_t, int> count;
  for (int i = 0; i < 9; ++i) {
    auto a = b.Acquire(Req(), nullptr);
    ASSERT_EQ(a.kind, Balancer::Admission::kAdmitted);
    ++count[a.lease.group_id];
  }
  EXPECT_EQ(count[1], 3);
  EXPECT_EQ(count[2], 3);
  EXPECT_EQ(count[3], 3);
}

TEST_F(BalancerTest, SharedPrefixStaysOnOneGroupUntilLoadGapExceedsBonus) {
  BalancerOptions options;
  options.weights.affinity_bonus = 4.5;      // half-integer: no exact ties with request counts
  options.weights.tokens_per_request = 1e9;  // requests only, for exact arithmetic
  Balancer b(options);
  for (uint64_t id = 1; id <= 2; ++id) AddHealthy(b, id);
  RouteRequest r = Req();
  r.prefix_hashes = {101, 102, 103};
  std::vector<uint64_t> picks;
  for (int i = 0; i < 6; ++i) picks.push_back(b.Acquire(r, nullptr).lease.group_id);
  // First lands anywhere; the next ones follow it while its extra load < 4.5.
  for (int i = 1; i < 5; ++i) EXPECT_EQ(picks[i], picks[0]) << i;
  // Fifth follower: the prefix group has 5 in flight vs 0; 5 - 4.5 > 0, it spills.
  EXPECT_NE(picks[5], picks[0]);
}

TEST_F(BalancerTest, SheddingQueuesThenRejectsWithResourceExhausted) {
  BalancerOptions options;
  options.max_inflight = 2;
  options.max_inflight_per_group = 10;
  options.max_queued = 1;
  Balancer b(options);
  AddHealthy(b, 1);
  std::vector<absl::StatusOr<Lease>> admitted;
  auto a1 = b.Acquire(Req(), Record(admitted));
  auto a2 = b.Acquire(Req(), Record(admitted));
  auto a3 = b.Acquire(Req(), Record(admitted));
  auto a4 = b.Acquire(Req(), Record(admitted));
  EXPECT_EQ(a1.kind, Balancer::Admission::kAdmitted);
  EXPECT_EQ(a2.kind, Balancer::Admission::kAdmitted);
  EXPECT_EQ(a3.kind, Balancer::Admission::kQueued);
  ASSERT_EQ(a4.kind, Balancer::Admission::kRejected);
  EXPECT_EQ(a4.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(a4.status.message().find("2 requests in flight"), absl::string_view::npos);
  EXPECT_TRUE(admitted.empty());
  b.Release(a1.lease);  // frees a slot: the waiter is admitted
  ASSERT_EQ(admitted.size(), 1u);
  ASSERT_TRUE(admitted[0].ok());
  EXPECT_EQ(admitted[0]->group_id, 1u);
  EXPECT_EQ(b.inflight(), 2);
  EXPECT_EQ(b.queued(), 0u);
}

TEST_F(BalancerTest, PerGroupLimitSendsWorkElsewhereThenQueues) {
  BalancerOptions options;
  options.max_inflight_per_group = 1;
  options.max_queued = 5;
  Balancer b(options);
  AddHealthy(b, 1);
  AddHealthy(b, 2);
  std::vector<absl::StatusOr<Lease>> admitted;
  auto a1 = b.Acquire(Req(), Record(admitted));
  auto a2 = b.Acquire(Req(), Record(admitted));
  auto a3 = b.Acquire(Req(), Record(admitted));
  EXPECT_EQ(a1.kind, Balancer::Admission::kAdmitted);
  EXPECT_EQ(a2.kind, Balancer::Admission::kAdmitted);
  EXPECT_NE(a1.lease.group_id, a2.lease.group_id);
  EXPECT_EQ(a3.kind, Balancer::Admission::kQueued);
  b.Release(a2.lease);
  ASSERT_EQ(admitted.size(), 1u);
  EXPECT_EQ(admitted[0]->group_id, a2.lease.group_id);
}

TEST_F(BalancerTest, CancelledWaiterIsNeverAdmittedAndExpiredWaiterIsExhausted) {
  BalancerOptions options;
  options.max_inflight = 1;
  options.max_queue_wait = std::chrono::milliseconds(100);
  Balancer b(options);
  AddHealthy(b, 1);
  std::vector<absl::StatusOr<Lease>> admitted;
  auto a1 = b.Acquire(Req(), Record(admitted));
  auto a2 = b.Acquire(Req(), Record(admitted));
  auto a3 = b.Acquire(Req(), Record(admitted));
  ASSERT_EQ(a2.kind, Balancer::Admission::kQueued);
  EXPECT_TRUE(b.CancelWaiter(a2.waiter_id));
  EXPECT_FALSE(b.CancelWaiter(a2.waiter_id));
  b.ExpireWaiters(std::chrono::steady_clock::now() + std::chrono::milliseconds(200));
  ASSERT_EQ(admitted.size(), 1u);  // a3 expired; a2 was cancelled and never called
  EXPECT_EQ(admitted[0].status().code(), absl::StatusCode::kResourceExhausted);
  b.Release(a1.lease);
  EXPECT_EQ(admitted.size(), 1u);
  EXPECT_EQ(b.inflight(), 0);
}

TEST_F(BalancerTest, UnhealthyGroupLeavesRotationAndHealthyReturns) {
  Balancer b(BalancerOptions{});
  AddHealthy(b, 1);
  AddHealthy(b, 2);
  b.SetHealthy(1, false);
  for (int i = 0; i < 4; ++i) {
    auto a = b.Acquire(Req(), nullptr);
    EXPECT_EQ(a.lease.group_id, 2u);
    b.Release(a.lease);
  }
  b.SetHealthy(1, true);
  std::set<uint64_t> seen;
  for (int i = 0; i < 4; ++i) seen.insert(b.Acquire(Req(), nullptr).lease.group_id);
  EXPECT_EQ(seen.size(), 2u);
}

TEST_F(BalancerTest, RetryExcludesTheFailedGroup) {
  Balancer b(BalancerOptions{});
  AddHealthy(b, 1);
  AddHealthy(b, 2);
  RouteRequest r = Req();
  r.excluded_groups = {1};
  for (int i = 0; i < 3; ++i) EXPECT_EQ(b.Acquire(r, nullptr).lease.group_id, 2u);
  r.excluded_groups = {1, 2};
  auto a = b.Acquire(r, nullptr);
  EXPECT_EQ(a.kind, Balancer::Admission::kRejected);
  EXPECT_EQ(a.status.code(), absl::StatusCode::kUnavailable);
}

TEST_F(BalancerTest, TokensInFlightSteerAwayFromTheBusyGroup) {
  BalancerOptions options;
  options.weights.tokens_per_request = 100;
  Balancer b(options);
  AddHealthy(b, 1);
  AddHealthy(b, 2);
  RouteRequest big = Req();
  big.estimated_tokens = 1000;  // 10 request units
  auto a = b.Acquire(big, nullptr);
  RouteRequest small = Req();
  small.estimated_tokens = 10;
  // Group `a` has 1 request + 10 units; the other takes the next several small requests.
  for (int i = 0; i < 5; ++i) EXPECT_NE(b.Acquire(small, nullptr).lease.group_id, a.lease.group_id);
  b.ConsumeTokens(a.lease, 1000);  // the big request is done computing
  EXPECT_EQ(a.lease.tokens, 0);
}

}  // namespace
}  // namespace shoal::router
