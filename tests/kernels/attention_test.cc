#include "worker/kernels/cpu/attention.h"

#include <gtest/gtest.h>

#include <cmath>

#include "tests/kernels/test_data.h"
#include "worker/kernels/cpu/reference.h"
#include "worker/kernels/cpu/thread_pool.h"

namespace shoal::worker::cpu {
namespace {

using testing::MaxAbsDiff;

// Two sequences in one step, one continuing at position 9 with 3 new tokens and one
// prefilling 23 tokens from 0, with scattered block tables and grouped-query heads.
TEST(PagedAttention, MatchesReferenceForMixedBatch) {
  std::mt19937 rng(9);
  const int64_t heads = 4, kv_heads = 2, d = 16, num_blocks = 16;
  const int block_size = 4;
  std::vector<float> k = testing::RandomFloats(num_blocks * block_size * kv_heads * d, rng);
  std::vector<float> v = testing::RandomFloats(k.size(), rng);
  PagedKvLayer cache{k.data(), v.data(), num_blocks, block_size, kv_heads, d};
  const std::vector<int32_t> table_a = {5, 2, 11};           // positions 0..11
  const std::vector<int32_t> table_b = {0, 15, 3, 7, 1, 9};  // positions 0..23
  const AttentionSequence seqs[2] = {{0, 3, 9, table_a}, {3, 23, 0, table_b}};
  const int64_t T = 26, ld = heads * d;
  auto q = testing::RandomFloats(T * ld, rng, 2.0f);
  std::vector<float> out(T * ld), ref(T * ld);
  ThreadPool pool(3);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  PagedAttention(&pool, cache, seqs, q.data(), ld, heads, scale, out.data(), ld);
  reference::PagedAttention(cache, seqs, q.data(), ld, heads, scale, ref.data(), ld);
  EXPECT_LE(MaxAbsDiff(out, ref), 2e-5f);
}

// Head sizes that take the wide paths (8 keys at a time, 64 output floats in registers)
// and their tails, with blocks only partly filled.
TEST(PagedAttention, MatchesReferenceForWideHeadsAndPartialBlocks) {
  for (int64_t d : {64, 80, 128}) {
    std::mt19937 rng(static_cast<unsigned>(d));
    const int64_t heads = 6, kv_heads = 2, num_blocks = 8;
    const int block_size = 16;
    std::vector<float> k = testing::RandomFloats(num_blocks * block_size * kv_heads * d, rng);
    std::vector<float> v = testing::RandomFloats(k.size(), rng);
    PagedKvLayer cache{k.data(), v.data(), num_blocks, block_size, kv_heads, d};
    const std::vector<int32_t> table = {6, 1, 4, 0};
    const AttentionSequence seqs[2] = {{0, 37, 0, table}, {37, 1, 50, table}};
    const int64_t T = 38, ld = heads * d;
    auto q = testing::RandomFloats(T * ld, rng);
    std::vector<float> out(T * ld), ref(T * ld);
    ThreadPool pool(2);
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    PagedAttention(&pool, cache, seqs, q.data(), ld, heads, scale, out.data(), ld);
    reference::PagedAttention(cache, seqs, q.data(), ld, heads, scale, ref.data(), ld);
    EXPECT_LE(MaxAbsDiff(out, ref), 2e-5f) << "head_dim " << d;
  }
}

TEST(PagedAttention, FirstTokenReturnsItsOwnValue) {
  const int64_t d = 8;
  std::vector<float> k(2 * 2 * d, 0.0f), v(2 * 2 * d, 0.0f);
  PagedKvLayer cache{k.data(), v.data(), 2, 2, 1, d};
  const std::vector<int32_t> table = {1};
  const AttentionSequence seq{0, 1, 0, table};
  std::vector<float> kn(d, 1.0f), vn(d);
  for (int i = 0; i < d; ++i) vn[i] = static_cast<float>(i);
  WriteKv(cache, seq, kn.data(), d, vn.data(), d);
  EXPECT_EQ(v[2 * d + 3], 3.0f);  // block 1, slot 0
  std::vector<float> q(d, 0.3f), out(d);
  ThreadPool pool(1);
  PagedAttention(&pool, cache, {&seq, 1}, q.data(), d, 1, 1.0f, out.data(), d);
  for (int i = 0; i < d; ++i) EXPECT_FLOAT_EQ(out[i], static_cast<float>(i));
}

TEST(PagedAttention, LargeScoresStayFinite) {
  std::mt19937 rng(10);
  const int64_t d = 32, blocks = 8;
  const int bs = 16;
  auto k = testing::RandomFloats(blocks * bs * d, rng, 30.0f);
  auto v = testing::RandomFloats(k.size(), rng);
  PagedKvLayer cache{k.data(), v.data(), blocks, bs, 1, d};
  std::vector<int32_t> table(blocks);
  for (int i = 0; i < blocks; ++i) table[i] = blocks - 1 - i;
  const AttentionSequence seq{0, 1, blocks * bs - 1, table};
  auto q = testing::RandomFloats(d, rng, 30.0f);
  std::vector<float> out(d), ref(d);
  ThreadPool pool(2);
  PagedAttention(&pool, cache, {&seq, 1}, q.data(), d, 1, 1.0f, out.data(), d);
  reference::PagedAttention(cache, {&seq, 1}, q.data(), d, 1, 1.0f, ref.data(), d);
  for (int i = 0; i < d; ++i) {
    ASSERT_TRUE(std::isfinite(out[i]));
    EXPECT_NEAR(out[i], ref[i], 1e-4f);
  }
}

}  // namespace
}  // namespace shoal::worker::cpu
