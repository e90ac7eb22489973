#include "worker/engine/scheduler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <numeric>

namespace shoal::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

// Owns the sequences and plays the engine's part: after each step every chunk that asked
// for logits gets a sampled token appended.
class SchedulerFixture {
 public:
  SchedulerFixture(int64_t num_blocks, int block_size, int max_num_seqs, int max_tokens,
                   bool prefix_caching = true)
      : pool(num_blocks, block_size, prefix_caching),
        scheduler({max_num_seqs, max_tokens}, &pool) {}

  Sequence* Add(std::vector<int32_t> prompt) {
    seqs.push_back(std::make_unique<Sequence>(static_cast<int64_t>(seqs.size()),
                                              "r" + std::to_string(seqs.size()), std::move(prompt)));
    scheduler.Add(seqs.back().get());
    return seqs.back().get();
  }
  SchedulePlan Step(int32_t sampled = 1000) {
    SchedulePlan plan = scheduler.Schedule();
    scheduler.OnStepComputed(plan);
    for (const ScheduledChunk& c : plan.chunks) {
      if (c.want_logits) c.seq->tokens.push_back(sampled);
    }
    return plan;
  }

  KvBlockPool pool;
  Scheduler scheduler;
  std::vector<std::unique_ptr<Sequence>> seqs;
};

std::vector<int32_t> Range(int32_t begin, int32_t end) {
  std::vector<int32_t> v(end - begin);
  std::iota(v.begin(), v.end(), begin);
  return v;
}

struct ChunkView {
  Sequence* seq;
  int64_t start, n;
  bool logits;
  bool operator==(const ChunkView&) const = default;
};
std::vector<ChunkView> Chunks(const SchedulePlan& p) {
  std::vector<ChunkView> out;
  for (const auto& c : p.chunks) out.push_back({c.seq, c.start_pos, c.num_tokens, c.want_logits});
  return out;
}

TEST(Scheduler, LongPromptIsPrefilledInChunksUnderTheTokenBudget) {
  SchedulerFixture f(16, 4, 8, 8);
  Sequence* a = f.Add(Range(0, 20));
  SchedulePlan p1 = f.Step();
  EXPECT_THAT(Chunks(p1), ElementsAre(ChunkView{a, 0, 8, false}));
  EXPECT_THAT(a->block_table, ElementsAre(0, 1));
  EXPECT_EQ(a->num_computed_tokens, 8);
  EXPECT_THAT(Chunks(f.Step()), ElementsAre(ChunkView{a, 8, 8, false}));
  EXPECT_THAT(Chunks(f.Step()), ElementsAre(ChunkView{a, 16, 4, true}));
  EXPECT_THAT(a->block_table, ElementsAre(0, 1, 2, 3, 4));
  EXPECT_EQ(a->num_tokens(), 21);
  // Decoding: one token a step, a new block when position 20 starts block 5.
  EXPECT_THAT(Chunks(f.Step()), ElementsAre(ChunkView{a, 20, 1, true}));
  EXPECT_THAT(a->block_table, ElementsAre(0, 1, 2, 3, 4, 5));
}

TEST(Scheduler, RunningSequencesComeBeforeWaitingOnes) {
  SchedulerFixture f(16, 4, 8, 8);
  Sequence* a = f.Add(Range(0, 4));
  EXPECT_THAT(Chunks(f.Step()), ElementsAre(ChunkView{a, 0, 4, true}));
  Sequence* b = f.Add(Range(100, 110));
  SchedulePlan p = f.Step();
  EXPECT_THAT(Chunks(p), ElementsAre(ChunkView{a, 4, 1, true}, ChunkView{b, 0, 7, false}));
  EXPECT_EQ(p.num_batched_tokens, 8);
  EXPECT_THAT(b->block_table, ElementsAre(2, 3));
  EXPECT_THAT(Chunks(f.Step()), ElementsAre(ChunkView{a, 5, 1, true}, ChunkView{b, 7, 3, true}));
}

TEST(Scheduler, AdmitsAtMostMaxNumSeqs) {
  SchedulerFixture f(16, 4, 2, 64);
  Sequence* a = f.Add(Range(0, 3));
  Sequence* b = f.Add(Range(10, 13));
  f.Add(Range(20, 23));
  EXPECT_THAT(Chunks(f.Step()), ElementsAre(ChunkView{a, 0, 3, true}, ChunkView{b, 0, 3, true}));
  EXPECT_EQ(f.scheduler.num_running(), 2);
  EXPECT_EQ(f.scheduler.num_waiting(), 1);
}

TEST(Scheduler, SharedPrefixIsServedFromTheCache) {
  SchedulerFixture f(16, 4, 8, 64);
  std::vector<int32_t> prefix = Range(0, 8);
  std::vector<int32_t> pa = prefix, pb = prefix;
  pa.insert(pa.end(), {50, 51});
  pb.insert(pb.end(), {60, 61, 62});
  Sequence* a = f.Add(pa);
  f.Step();
  EXPECT_THAT(a->block_table, ElementsAre(0, 1, 2));
  EXPECT_EQ(a->block_hashes.size(), 2u);  // the partial third block is not committed
  Sequence* b = f.Add(pb);
  SchedulePlan p = f.Step();
  EXPECT_THAT(Chunks(p), ElementsAre(ChunkView{a, 10, 1, true}, ChunkView{b, 8, 3, true}));
  EXPECT_THAT(b->block_table, ElementsAre(0, 1, 3));
  EXPECT_EQ(f.pool.ref_count(0), 2);
  EXPECT_EQ(p.num_cache_hit_tokens, 8);
  EXPECT_EQ(p.num_cache_query_tokens, 10);
  EXPECT_EQ(b->num_cached_prompt_tokens, 8);
}

TEST(Scheduler, FullyCachedPromptStillComputesItsLastBlock) {
  SchedulerFixture f(8, 4, 8, 64);
  Sequence* a = f.Add(Range(0, 8));
  f.Step();
  EXPECT_THAT(a->block_table, ElementsAre(0, 1));
  f.scheduler.Remove(a);
  EXPECT_THAT(f.pool.FreeQueueForTesting(), ElementsAre(2, 3, 4, 5, 6, 7, 1, 0));
  Sequence* b = f.Add(Range(0, 8));
  SchedulePlan p = f.Step();
  // Only the first block is taken: the lookup stops short of the last token.
  EXPECT_THAT(Chunks(p), ElementsAre(ChunkView{b, 4, 4, true}));
  EXPECT_THAT(b->block_table, ElementsAre(0, 2));
  EXPECT_EQ(b->num_cached_prompt_tokens, 4);
}

TEST(Scheduler, PreemptsTheMostRecentlyAdmittedByRecompute) {
  SchedulerFixture f(4, 2, 8, 64);
  Sequence* a = f.Add({1, 2, 3, 4});
  Sequence* b = f.Add({5, 6, 7, 8});
  f.Step();
  EXPECT_THAT(a->block_table, ElementsAre(0, 1));
  EXPECT_THAT(b->block_table, ElementsAre(2, 3));
  EXPECT_EQ(f.pool.num_free_blocks(), 0);

  // Both now need a third block; there is none, so b (admitted last) gives its up.
  SchedulePlan p = f.Step();
  EXPECT_THAT(Chunks(p), ElementsAre(ChunkView{a, 4, 1, true}));
  EXPECT_THAT(p.preempted, ElementsAre(b));
  EXPECT_EQ(b->status, SequenceStatus::kWaiting);
  EXPECT_EQ(b->num_computed_tokens, 0);
  EXPECT_THAT(b->block_table, IsEmpty());
  EXPECT_EQ(b->num_preemptions, 1);
  EXPECT_THAT(a->block_table, ElementsAre(0, 1, 3));  // b's tail block, freed first
  EXPECT_THAT(f.scheduler.waiting(), ElementsAre(b));

  // b would need 3 blocks (one of them its cached first block); only that one is free.
  SchedulePlan p3 = f.Step();
  EXPECT_THAT(Chunks(p3), ElementsAre(ChunkView{a, 5, 1, true}));
  EXPECT_THAT(f.scheduler.waiting(), ElementsAre(b));

  // Once a is gone b comes back, its first block still cached.
  f.scheduler.Remove(a);
  SchedulePlan p4 = f.Step();
  EXPECT_THAT(Chunks(p4), ElementsAre(ChunkView{b, 2, 3, true}));
  EXPECT_THAT(b->block_table, ElementsAre(2, 3, 1));
  EXPECT_EQ(b->num_cached_prompt_tokens, 0);  // usage counts the first admission only
  EXPECT_EQ(p4.num_cache_hit_tokens, 2);
}

TEST(Scheduler, NoAdmissionInAStepThatPreempted) {
  SchedulerFixture f(4, 2, 8, 64);
  Sequence* a = f.Add({1, 2, 3, 4});
  Sequence* b = f.Add({5, 6, 7, 8});
  f.Step();
  Sequence* c = f.Add({9});
  SchedulePlan p = f.Step();
  EXPECT_THAT(p.preempted, ElementsAre(b));
  EXPECT_THAT(f.scheduler.waiting(), ElementsAre(b, c));
  EXPECT_EQ(a->status, SequenceStatus::kRunning);
}

TEST(Scheduler, SeveralPreemptionsKeepTheOldestFirstInLine) {
  SchedulerFixture f(6, 2, 8, 64);
  Sequence* a = f.Add({1, 2, 3, 4});
  Sequence* b = f.Add({5, 6});
  Sequence* c = f.Add({7, 8});
  f.Step();  // a: 0 1, b: 2, c: 3 ; free 4 5
  // a needs 1 block, b needs 1, c needs 1: a and b get 4 and 5, c is preempted.
  SchedulePlan p = f.Step();
  EXPECT_THAT(p.preempted, ElementsAre(c));
  f.Step();  // a and b decode inside their blocks; c's cached block alone is free
  // a's 7th token needs a fourth block: it takes c's freed one, then b finds none and
  // preempts itself.
  SchedulePlan p2 = f.Step();
  EXPECT_THAT(p2.preempted, ElementsAre(b));
  EXPECT_THAT(f.scheduler.waiting(), ElementsAre(b, c));
  EXPECT_EQ(a->status, SequenceStatus::kRunning);
}

TEST(Scheduler, WaitingQueueIsFirstComeFirstServed) {
  SchedulerFixture f(4, 2, 8, 64);
  Sequence* a = f.Add({1, 2, 3});     // 2 blocks
  f.Step();
  Sequence* b = f.Add({4, 5, 6, 7, 8});  // 3 blocks: does not fit
  Sequence* c = f.Add({9});           // would fit, but waits behind b
  SchedulePlan p = f.Step();
  EXPECT_THAT(Chunks(p), ElementsAre(ChunkView{a, 3, 1, true}));
  EXPECT_THAT(f.scheduler.waiting(), ElementsAre(b, c));
}

TEST(Scheduler, RemoveFreesEveryBlock) {
  SchedulerFixture f(8, 2, 8, 64, /*prefix_caching=*/false);
  Sequence* a = f.Add({1, 2, 3, 4, 5});
  f.Step();
  EXPECT_EQ(f.pool.num_free_blocks(), 5);
  f.scheduler.Remove(a);
  EXPECT_EQ(f.pool.num_free_blocks(), 8);
  EXPECT_FALSE(f.scheduler.has_work());
  EXPECT_EQ(a->status, SequenceStatus::kFinished);
}

}  // namespace
}  // namespace shoal::worker
