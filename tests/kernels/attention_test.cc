#include "worker/kernels/cpu/attention.h"

#include <gtest/gtest.h>

#include <cmath>

#include "tests/kernels/test_data.h"
#include "worker/kernels/cpu/reference.h"
#include "worker/kernels/cpu/thread_pool.h"

namespace shoal::worker::cpu {
namespace {

using testing::MaxAbsDiff;

// K/V storage of either cache type, filled from f32 values (rounded for f16).
struct KvStore {
  DType dtype;
  std::vector<float> k32, v32;
  std::vector<uint16_t> k16, v16;
  KvStore(DType dt, const std::vector<float>& k, const std::vector<float>& v) : dtype(dt), k32(k), v32(v) {
    if (dt == DType::kF16) {
      k16.resize(k.size());
      v16.resize(v.size());
      StoreHalfRow(k.data(), k16.data(), static_cast<int64_t>(k.size()));
      StoreHalfRow(v.data(), v16.data(), static_cast<int64_t>(v.size()));
    }
  }
  PagedKvLayer Layer(int64_t num_blocks, int block_size, int64_t kv_heads, int64_t d) {
    if (dtype == DType::kF16) return {k16.data(), v16.data(), num_blocks, block_size, kv_heads, d, dtype};
    return {k32.data(), v32.data(), num_blocks, block_size, kv_heads, d, dtype};
  }
};

class PagedAttentionEveryCacheType : public ::testing::TestWithParam<DType> {
 protected:
  // f32: summation order only. f16: a probability whose f16 rounding went the other way
  // in double moves the output by one f16 step of p times |v|.
  float Tolerance() const { return GetParam() == DType::kF16 ? 2e-4f : 2e-5f; }
};

// Two sequences in one step, one continuing at position 9 with 3 new tokens and one
// prefilling 23 tokens from 0, with scattered block tables and grouped-query heads.
// f16: the reference rounds q and the probabilities where the kernel does, so only the
// f32 summation differs (and, rarely, which way a probability's f16 rounding went).
TEST_P(PagedAttentionEveryCacheType, MatchesReferenceForMixedBatch) {
  std::mt19937 rng(9);
  const int64_t heads = 4, kv_heads = 2, d = 16, num_blocks = 16;
  const int block_size = 4;
  std::vector<float> k = testing::RandomFloats(num_blocks * block_size * kv_heads * d, rng);
  std::vector<float> v = testing::RandomFloats(k.size(), rng);
  KvStore store(GetParam(), k, v);
  const PagedKvLayer cache = store.Layer(num_blocks, block_size, kv_heads, d);
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
  EXPECT_LE(MaxAbsDiff(out, ref), Tolerance());
}

// Head sizes that take the wide paths (8 keys at a time, 64 output floats in registers)
// and their tails, with blocks only partly filled.
TEST_P(PagedAttentionEveryCacheType, MatchesReferenceForWideHeadsAndPartialBlocks) {
  for (int64_t d : {64, 80, 128}) {
    std::mt19937 rng(static_cast<unsigned>(d));
    const int64_t heads = 6, kv_heads = 2, num_blocks = 8;
    const int block_size = 16;
    std::vector<float> k = testing::RandomFloats(num_blocks * block_size * kv_heads * d, rng);
    std::vector<float> v = testing::RandomFloats(k.size(), rng);
    KvStore store(GetParam(), k, v);
    const PagedKvLayer cache = store.Layer(num_blocks, block_size, kv_heads, d);
    const std::vector<int32_t> table = {6, 1, 4, 0};
    const AttentionSequence seqs[2] = {{0, 37, 0, table}, {37, 1, 50, table}};
    const int64_t T = 38, ld = heads * d;
    auto q = testing::RandomFloats(T * ld, rng);
    std::vector<float> out(T * ld), ref(T * ld);
    ThreadPool pool(2);
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    PagedAttention(&pool, cache, seqs, q.data(), ld, heads, scale, out.data(), ld);
    reference::PagedAttention(cache, seqs, q.data(), ld, heads, scale, ref.data(), ld);
    EXPECT_LE(MaxAbsDiff(out, ref), Tolerance()) << "head_dim " << d;
  }
}

INSTANTIATE_TEST_SUITE_P(F32AndF16, PagedAttentionEveryCacheType,
                         ::testing::Values(DType::kF32, DType::kF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// The f16 cache costs accuracy only at its rounding points: against exact f32 attention
// on the same (f16-representable) keys and values, the error is that of f16 q and p.
TEST(PagedAttention, HalfCacheStaysCloseToF32Attention) {
  std::mt19937 rng(12);
  const int64_t heads = 4, kv_heads = 1, d = 64, num_blocks = 6;
  const int block_size = 16;
  auto k = testing::RandomFloats(num_blocks * block_size * kv_heads * d, rng);
  auto v = testing::RandomFloats(k.size(), rng);
  KvStore half(DType::kF16, k, v);
  for (size_t i = 0; i < k.size(); ++i) {  // f32 cache holding exactly the f16 values
    k[i] = HalfToFloat(half.k16[i]);
    v[i] = HalfToFloat(half.v16[i]);
  }
  KvStore full(DType::kF32, k, v);
  const std::vector<int32_t> table = {3, 0, 5, 1, 4, 2};
  const AttentionSequence seq{0, 1, 90, table};
  auto q = testing::RandomFloats(heads * d, rng);
  std::vector<float> out16(heads * d), out32(heads * d);
  ThreadPool pool(2);
  const float scale = 0.125f;
  PagedAttention(&pool, half.Layer(num_blocks, block_size, kv_heads, d), {&seq, 1}, q.data(), heads * d, heads,
                 scale, out16.data(), heads * d);
  PagedAttention(&pool, full.Layer(num_blocks, block_size, kv_heads, d), {&seq, 1}, q.data(), heads * d, heads,
                 scale, out32.data(), heads * d);
  const float diff = MaxAbsDiff(out16, out32);
  EXPECT_GT(diff, 0.0f);  // the f16 path really rounds
  EXPECT_LE(diff, 2e-3f);
}

TEST(PagedAttention, WriteKvRoundsToHalfForHalfCache) {
  const int64_t d = 8;
  std::vector<uint16_t> k(2 * d, 0), v(2 * d, 0);
  PagedKvLayer cache{k.data(), v.data(), 1, 2, 1, d, DType::kF16};
  const std::vector<int32_t> table = {0};
  const AttentionSequence seq{0, 1, 1, table};
  std::vector<float> kn(d), vn(d);
  for (int i = 0; i < d; ++i) {
    kn[i] = 1.0f + static_cast<float>(i) / 3000.0f;  // not f16-representable
    vn[i] = -0.1f * static_cast<float>(i);
  }
  WriteKv(cache, seq, kn.data(), d, vn.data(), d);
  for (int i = 0; i < d; ++i) {
    EXPECT_EQ(k[d + i], FloatToHalf(kn[i])) << i;  // slot 1
    EXPECT_EQ(v[d + i], FloatToHalf(vn[i])) << i;
    EXPECT_EQ(k[i], 0) << i;  // slot 0 untouched
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
