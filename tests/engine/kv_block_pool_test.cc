#include "worker/engine/kv_block_pool.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace shoal::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::vector<int32_t> Alloc(KvBlockPool& pool, int64_t n) {
  std::vector<int32_t> out;
  EXPECT_TRUE(pool.Allocate(n, &out));
  return out;
}

std::vector<int32_t> Find(const KvBlockPool& pool, std::vector<int32_t> tokens) {
  std::vector<int32_t> blocks;
  std::vector<BlockHash> hashes;
  pool.FindCachedPrefix(tokens, &blocks, &hashes);
  EXPECT_EQ(blocks.size(), hashes.size());
  return blocks;
}

TEST(KvBlockPool, AllocatesFromTheHeadInIdOrder) {
  KvBlockPool pool(4, 2, true);
  EXPECT_THAT(Alloc(pool, 3), ElementsAre(0, 1, 2));
  EXPECT_EQ(pool.num_free_blocks(), 1);
  EXPECT_EQ(pool.ref_count(0), 1);
  EXPECT_THAT(pool.FreeQueueForTesting(), ElementsAre(3));
}

TEST(KvBlockPool, DoesNotFitIsAReturnValueAndChangesNothing) {
  KvBlockPool pool(4, 2, true);
  std::vector<int32_t> out;
  EXPECT_FALSE(pool.Allocate(5, &out));
  EXPECT_THAT(out, IsEmpty());
  EXPECT_EQ(pool.num_free_blocks(), 4);
  EXPECT_THAT(pool.FreeQueueForTesting(), ElementsAre(0, 1, 2, 3));
}

TEST(KvBlockPool, UncommittedBlocksReturnToTheHead) {
  KvBlockPool pool(5, 2, true);
  std::vector<int32_t> a = Alloc(pool, 3);  // 0 1 2
  pool.Release(std::vector<int32_t>{2, 1, 0});
  EXPECT_THAT(pool.FreeQueueForTesting(), ElementsAre(0, 1, 2, 3, 4));
}

TEST(KvBlockPool, CommittedBlockIsFoundAfterRelease) {
  KvBlockPool pool(4, 2, true);
  std::vector<int32_t> a = Alloc(pool, 2);
  BlockHash h0 = pool.Commit(a[0], kNoParentHash, std::vector<int32_t>{7, 8});
  pool.Commit(a[1], h0, std::vector<int32_t>{9, 10});
  pool.Release(std::vector<int32_t>{a[1], a[0]});
  EXPECT_EQ(pool.num_free_blocks(), 4);
  // Cached blocks go to the tail, the block table's last block first.
  EXPECT_THAT(pool.FreeQueueForTesting(), ElementsAre(2, 3, 1, 0));
  EXPECT_THAT(Find(pool, {7, 8, 9, 10, 11}), ElementsAre(0, 1));
  EXPECT_THAT(Find(pool, {7, 8, 9}), ElementsAre(0));     // partial block never matches
  EXPECT_THAT(Find(pool, {7, 8, 9, 11}), ElementsAre(0));
  EXPECT_THAT(Find(pool, {1, 8, 9, 10}), IsEmpty());

  std::vector<int32_t> hit = Find(pool, {7, 8, 9, 10});
  EXPECT_EQ(pool.CountUnreferenced(hit), 2);
  pool.Acquire(hit);
  EXPECT_EQ(pool.num_free_blocks(), 2);
  EXPECT_THAT(pool.FreeQueueForTesting(), ElementsAre(2, 3));
  EXPECT_EQ(pool.ref_count(0), 1);
}

TEST(KvBlockPool, EqualBlockAfterADifferentParentIsNotShared) {
  KvBlockPool pool(4, 2, true);
  std::vector<int32_t> a = Alloc(pool, 2);
  BlockHash h0 = pool.Commit(a[0], kNoParentHash, std::vector<int32_t>{1, 2});
  pool.Commit(a[1], h0, std::vector<int32_t>{3, 4});
  EXPECT_THAT(Find(pool, {3, 4}), IsEmpty());
  EXPECT_THAT(Find(pool, {5, 6, 3, 4}), IsEmpty());
  EXPECT_THAT(Find(pool, {1, 2, 3, 4}), ElementsAre(0, 1));
}

TEST(KvBlockPool, SharedBlockIsFreedByItsLastReference) {
  KvBlockPool pool(3, 2, true);
  std::vector<int32_t> a = Alloc(pool, 1);
  pool.Commit(a[0], kNoParentHash, std::vector<int32_t>{1, 2});
  std::vector<int32_t> hit = Find(pool, {1, 2, 3});
  EXPECT_EQ(pool.CountUnreferenced(hit), 0);  // still held by its writer
  pool.Acquire(hit);
  EXPECT_EQ(pool.ref_count(0), 2);
  pool.Release(a);
  EXPECT_EQ(pool.ref_count(0), 1);
  EXPECT_EQ(pool.num_free_blocks(), 2);
  pool.Release(hit);
  EXPECT_EQ(pool.num_free_blocks(), 3);
  EXPECT_THAT(pool.FreeQueueForTesting(), ElementsAre(1, 2, 0));
}

TEST(KvBlockPool, EvictsLeastRecentlyFreedFirst) {
  KvBlockPool pool(4, 2, true);
  std::vector<int32_t> a = Alloc(pool, 2);  // 0 1
  std::vector<int32_t> b = Alloc(pool, 2);  // 2 3
  BlockHash ha = pool.Commit(a[0], kNoParentHash, std::vector<int32_t>{1, 1});
  pool.Commit(a[1], ha, std::vector<int32_t>{1, 2});
  BlockHash hb = pool.Commit(b[0], kNoParentHash, std::vector<int32_t>{2, 1});
  pool.Commit(b[1], hb, std::vector<int32_t>{2, 2});
  pool.Release(std::vector<int32_t>{1, 0});  // a freed first
  pool.Release(std::vector<int32_t>{3, 2});
  EXPECT_THAT(pool.FreeQueueForTesting(), ElementsAre(1, 0, 3, 2));

  EXPECT_THAT(Alloc(pool, 1), ElementsAre(1));  // a's tail goes first
  EXPECT_FALSE(pool.is_cached(1));
  EXPECT_THAT(Find(pool, {1, 1, 1, 2}), ElementsAre(0));
  EXPECT_THAT(Find(pool, {2, 1, 2, 2}), ElementsAre(2, 3));
  EXPECT_THAT(Alloc(pool, 1), ElementsAre(0));
  EXPECT_THAT(Find(pool, {1, 1, 1, 2}), IsEmpty());
  EXPECT_THAT(Alloc(pool, 1), ElementsAre(3));
  EXPECT_THAT(Find(pool, {2, 1, 2, 2}), ElementsAre(2));
}

TEST(KvBlockPool, HitMovesABlockOutOfEvictionOrder) {
  KvBlockPool pool(3, 2, true);
  std::vector<int32_t> a = Alloc(pool, 2);  // 0 1
  pool.Commit(a[0], kNoParentHash, std::vector<int32_t>{5, 5});
  pool.Commit(a[1], kNoParentHash, std::vector<int32_t>{6, 6});
  pool.Release(std::vector<int32_t>{0});
  pool.Release(std::vector<int32_t>{1});
  EXPECT_THAT(pool.FreeQueueForTesting(), ElementsAre(2, 0, 1));
  std::vector<int32_t> hit = Find(pool, {5, 5});
  pool.Acquire(hit);
  pool.Release(hit);  // freed again: now the most recently freed
  EXPECT_THAT(pool.FreeQueueForTesting(), ElementsAre(2, 1, 0));
}

TEST(KvBlockPool, DuplicateContentKeepsTheFirstCachedCopy) {
  KvBlockPool pool(3, 2, true);
  std::vector<int32_t> a = Alloc(pool, 2);
  BlockHash h1 = pool.Commit(a[0], kNoParentHash, std::vector<int32_t>{4, 4});
  BlockHash h2 = pool.Commit(a[1], kNoParentHash, std::vector<int32_t>{4, 4});
  EXPECT_EQ(h1, h2);
  EXPECT_TRUE(pool.is_cached(0));
  EXPECT_FALSE(pool.is_cached(1));
  pool.Release(std::vector<int32_t>{1, 0});
  EXPECT_THAT(pool.FreeQueueForTesting(), ElementsAre(1, 2, 0));
}

TEST(KvBlockPool, PrefixCachingOffCachesNothing) {
  KvBlockPool pool(2, 2, false);
  std::vector<int32_t> a = Alloc(pool, 1);
  pool.Commit(a[0], kNoParentHash, std::vector<int32_t>{1, 2});
  EXPECT_FALSE(pool.is_cached(0));
  pool.Release(a);
  EXPECT_THAT(Find(pool, {1, 2, 3}), IsEmpty());
  EXPECT_THAT(pool.FreeQueueForTesting(), ElementsAre(0, 1));
}

TEST(KvBlockPool, HashDependsOnParentAndEveryToken) {
  std::vector<int32_t> t{1, 2, 3, 4};
  BlockHash h = KvBlockPool::HashBlock(kNoParentHash, t);
  EXPECT_NE(h, KvBlockPool::HashBlock(1, t));
  EXPECT_NE(h, KvBlockPool::HashBlock(kNoParentHash, std::vector<int32_t>{1, 2, 4, 3}));
  EXPECT_EQ(h, KvBlockPool::HashBlock(kNoParentHash, std::vector<int32_t>{1, 2, 3, 4}));
}

}  // namespace
}  // namespace shoal::worker
