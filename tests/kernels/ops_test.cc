#include "worker/kernels/cpu/ops.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "tests/kernels/test_data.h"
#include "worker/kernels/cpu/reference.h"

namespace shoal::worker::cpu {
namespace {

using testing::MaxAbsDiff;

TEST(Ops, RmsNormMatchesReference) {
  std::mt19937 rng(1);
  const int64_t T = 3, n = 77;
  auto x = testing::RandomFloats(T * n, rng, 2.0f);
  auto w = testing::RandomFloats(n, rng);
  std::vector<float> y(T * n), ref(T * n);
  RmsNorm(x.data(), w.data(), y.data(), T, n, 1e-5f);
  reference::RmsNorm(x.data(), w.data(), ref.data(), T, n, 1e-5f);
  EXPECT_LE(MaxAbsDiff(y, ref), 1e-5f);
  RmsNorm(x.data(), w.data(), x.data(), T, n, 1e-5f);  // in place
  EXPECT_EQ(x, y);
}

TEST(Ops, RopeTableFrequenciesFollowTheta) {
  RopeTable table(16, 10000.0, RopeScaling{}, 4);
  for (int i = 0; i < 8; ++i) EXPECT_DOUBLE_EQ(table.inv_freq()[i], std::pow(10000.0, -2.0 * i / 16));
  EXPECT_FLOAT_EQ(table.cos(3)[1], static_cast<float>(std::cos(3 * table.inv_freq()[1])));
  table.Reserve(100);
  // Angles are f32 products (as GGML computes them): a few ulps of the angle off exact.
  EXPECT_NEAR(table.sin(99)[2], std::sin(99 * table.inv_freq()[2]), 2e-6);
}

// Over a long context the f32 angles stay within the f32 resolution of the angle itself.
TEST(Ops, RopeTableStaysCloseToExactAnglesOverLongContexts) {
  RopeTable table(64, 100000.0, RopeScaling{}, 8192);
  double worst = 0;
  for (int64_t p : {1, 255, 4095, 8191}) {
    for (int i = 0; i < 32; ++i) {
      const double a = p * table.inv_freq()[i];
      worst = std::max(worst, std::fabs(table.cos(p)[i] - std::cos(a)));
      worst = std::max(worst, std::fabs(table.sin(p)[i] - std::sin(a)));
    }
  }
  EXPECT_LT(worst, 8191 * 4e-7);  // ~ulp(8191) per unit of angle
}

TEST(Ops, RopeLinearScalingDividesEveryFrequency) {
  RopeScaling s;
  s.type = RopeScaling::Type::kLinear;
  s.factor = 4.0;
  RopeTable plain(8, 500.0, RopeScaling{}, 1), scaled(8, 500.0, s, 1);
  for (int i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(scaled.inv_freq()[i], plain.inv_freq()[i] / 4.0);
}

TEST(Ops, RopeLlama3KeepsHighAndSlowsLowFrequencies) {
  RopeScaling s;
  s.type = RopeScaling::Type::kLlama3;
  s.factor = 8.0;
  s.low_freq_factor = 1.0;
  s.high_freq_factor = 4.0;
  s.original_max_position_embeddings = 64;
  RopeTable plain(16, 10000.0, RopeScaling{}, 1), scaled(16, 10000.0, s, 1);
  // wavelength 2π/f: i=0 is 6.3 (< 64/4: kept), i=3 is 199 (> 64: divided by 8),
  // i=1 (19.9) lies in between and is blended.
  EXPECT_DOUBLE_EQ(scaled.inv_freq()[0], plain.inv_freq()[0]);
  EXPECT_DOUBLE_EQ(scaled.inv_freq()[3], plain.inv_freq()[3] / 8.0);
  EXPECT_LT(scaled.inv_freq()[1], plain.inv_freq()[1]);
  EXPECT_GT(scaled.inv_freq()[1], plain.inv_freq()[1] / 8.0);
}

TEST(Ops, RopeBothPairingsMatchReference) {
  std::mt19937 rng(2);
  const int64_t T = 5, heads = 3, d = 32, ld = heads * d + 7;
  RopeTable table(d, 10000.0, RopeScaling{}, 64);
  const int64_t pos[T] = {0, 1, 17, 40, 63};
  for (bool interleaved : {false, true}) {
    auto x = testing::RandomFloats(T * ld, rng);
    auto ref = x;
    ApplyRope(table, x.data(), T, ld, pos, heads, d, interleaved);
    reference::Rope(ref.data(), T, ld, pos, heads, d, table.inv_freq(), interleaved);
    EXPECT_LE(MaxAbsDiff(x, ref), 1e-5f) << "interleaved=" << interleaved;
  }
}

TEST(Ops, RopeInterleavedEqualsRotateHalfOnPermutedDims) {
  // The GGUF layout is the HF layout with each head's dims permuted so pairs (i, i+d/2)
  // become (2i, 2i+1); the two rotations must agree under that permutation.
  std::mt19937 rng(4);
  const int64_t d = 16;
  RopeTable table(d, 10000.0, RopeScaling{}, 32);
  auto hf = testing::RandomFloats(d, rng);
  std::vector<float> gg(d);
  for (int i = 0; i < d / 2; ++i) {
    gg[2 * i] = hf[i];
    gg[2 * i + 1] = hf[i + d / 2];
  }
  const int64_t pos = 29;
  ApplyRope(table, hf.data(), 1, d, &pos, 1, d, false);
  ApplyRope(table, gg.data(), 1, d, &pos, 1, d, true);
  for (int i = 0; i < d / 2; ++i) {
    EXPECT_FLOAT_EQ(gg[2 * i], hf[i]);
    EXPECT_FLOAT_EQ(gg[2 * i + 1], hf[i + d / 2]);
  }
}

TEST(Ops, SiluMulMatchesReference) {
  std::mt19937 rng(3);
  auto g = testing::RandomFloats(203, rng, 6.0f);
  auto u = testing::RandomFloats(203, rng);
  g[0] = -100.0f;  // saturates without NaN
  g[1] = 100.0f;
  std::vector<float> y(203), ref(203);
  SiluMul(g.data(), u.data(), y.data(), 203);
  reference::SiluMul(g.data(), u.data(), ref.data(), 203);
  for (int i = 0; i < 203; ++i) ASSERT_NEAR(y[i], ref[i], 1e-5f * (1 + std::fabs(ref[i]))) << i;
}

TEST(Ops, SoftmaxMatchesReferenceAndSumsToOne) {
  std::mt19937 rng(4);
  auto x = testing::RandomFloats(1001, rng, 20.0f);
  x[5] = 1000.0f;  // large values must not overflow
  auto ref = x;
  Softmax(x.data(), x.size());
  reference::Softmax(ref.data(), ref.size());
  double sum = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_NEAR(x[i], ref[i], 1e-6f) << i;
    sum += x[i];
  }
  EXPECT_NEAR(sum, 1.0, 1e-5);
}

TEST(Ops, AddInPlace) {
  std::vector<float> y = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, x(10, 0.5f);
  AddInPlace(y.data(), x.data(), 10);
  EXPECT_EQ(y[0], 1.5f);
  EXPECT_EQ(y[9], 10.5f);
}

TEST(Ops, EmbeddingLookupDequantizesTheRowOfEachId) {
  std::mt19937 rng(6);
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1}) {
    const int64_t vocab = 10, dim = 64;
    auto bytes = testing::RandomWeights(dt, vocab, dim, rng);
    WeightMatrix table{dt, bytes.data(), vocab, dim, RowBytes(dt, dim)};
    const int32_t ids[3] = {7, 0, 7};
    std::vector<float> out(3 * dim), ref(dim);
    EmbeddingLookup(table, ids, 3, out.data());
    reference::DequantizeRow(dt, table.row(7), ref.data(), dim);
    for (int i = 0; i < dim; ++i) {
      ASSERT_NEAR(out[i], ref[i], 1e-6f) << DTypeName(dt);
      ASSERT_EQ(out[2 * dim + i], out[i]);
    }
  }
}

}  // namespace
}  // namespace shoal::worker::cpu
