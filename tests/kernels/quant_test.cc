#include "worker/kernels/cpu/quant.h"

#include <gtest/gtest.h>

#include <cstring>

#include "tests/kernels/test_data.h"
#include "worker/kernels/cpu/reference.h"

namespace shoal::worker::cpu {
namespace {

TEST(Quant, HalfConversionMatchesBitLevelDecoding) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float a = HalfToFloat(static_cast<uint16_t>(h));
    const float b = reference::HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(b)) {
      EXPECT_TRUE(std::isnan(a));
    } else {
      ASSERT_EQ(a, b) << "h=" << h;
    }
  }
}

TEST(Quant, Q4_0LowNibblesAreTheFirstSixteenElements) {
  BlockQ4_0 b;
  b.d = FloatToHalf(0.5f);
  for (int j = 0; j < 16; ++j) b.q[j] = static_cast<uint8_t>((15 - j) << 4 | j);
  float out[32];
  DequantizeRow(DType::kQ4_0, reinterpret_cast<const std::byte*>(&b), out, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], 0.5f * (j - 8));
    EXPECT_EQ(out[16 + j], 0.5f * (15 - j - 8));
  }
}

TEST(Quant, Q4_1AddsTheMinimum) {
  BlockQ4_1 b;
  b.d = FloatToHalf(0.25f);
  b.m = FloatToHalf(-1.0f);
  for (int j = 0; j < 16; ++j) b.q[j] = static_cast<uint8_t>(3 << 4 | 15);
  float out[32];
  DequantizeRow(DType::kQ4_1, reinterpret_cast<const std::byte*>(&b), out, 32);
  EXPECT_EQ(out[0], 0.25f * 15 - 1.0f);
  EXPECT_EQ(out[31], 0.25f * 3 - 1.0f);
}

class DequantizeEveryType : public ::testing::TestWithParam<DType> {};

TEST_P(DequantizeEveryType, MatchesScalarReference) {
  std::mt19937 rng(7);
  const DType dt = GetParam();
  const int64_t n = 32 * 9 + (IsQuantized(dt) ? 0 : 5);  // odd tails for plain types
  auto w = testing::RandomWeights(dt, 1, n, rng);
  std::vector<float> fast(n), ref(n);
  DequantizeRow(dt, w.data(), fast.data(), n);
  reference::DequantizeRow(dt, w.data(), ref.data(), n);
  for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(fast[i], ref[i], 1e-6f * std::fabs(ref[i]) + 1e-7f) << i;
}

INSTANTIATE_TEST_SUITE_P(AllWeightTypes, DequantizeEveryType,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0,
                                           DType::kQ4_0, DType::kQ4_1),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST(Quant, ActivationBlocksMatchReferenceAndCarryTheirSums) {
  std::mt19937 rng(3);
  auto x = testing::RandomFloats(32 * 12, rng, 3.0f);
  std::fill(x.begin() + 64, x.begin() + 96, 0.0f);  // an all-zero block must give d = 0
  std::vector<BlockQ8Act> fast(12), ref(12);
  QuantizeRowQ8Act(x.data(), fast.data(), x.size());
  reference::QuantizeRowQ8Act(x.data(), ref.data(), x.size());
  for (int b = 0; b < 12; ++b) {
    EXPECT_EQ(fast[b].d, ref[b].d) << b;
    EXPECT_FLOAT_EQ(fast[b].s, ref[b].s) << b;
    for (int j = 0; j < 32; ++j) ASSERT_EQ(fast[b].q[j], ref[b].q[j]) << b << "," << j;
  }
  EXPECT_EQ(fast[2].d, 0.0f);
  // Rounding to 8 bits loses at most half a step, plus the f16 rounding of the scale
  // (relative 2^-11) over at most 127 steps.
  for (size_t i = 0; i < x.size(); ++i) {
    const BlockQ8Act& b = fast[i / 32];
    EXPECT_LE(std::fabs(b.d * b.q[i % 32] - x[i]), 0.5f * b.d + 127.0f * b.d / 2048.0f + 1e-6f);
  }
}

// The scale and the block sum are f16 values (GGML's Q8_0/Q8_1 blocks): d is amax/127
// rounded to f16, s is the unrounded amax/127 times the sum of q, rounded to f16.
TEST(Quant, ActivationScaleAndSumAreRoundedToHalf) {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = 0.01f * static_cast<float>(j) - 0.1f;
  x[7] = 1.2345f;  // amax
  BlockQ8Act b;
  QuantizeRowQ8Act(x.data(), &b, 32);
  const float d = 1.2345f / 127.0f;
  EXPECT_EQ(b.d, HalfToFloat(FloatToHalf(d)));
  EXPECT_NE(b.d, d);  // the rounding is visible for this amax
  int sum = 0;
  for (int j = 0; j < 32; ++j) sum += b.q[j];
  EXPECT_EQ(b.s, HalfToFloat(FloatToHalf(d * static_cast<float>(sum))));
  EXPECT_EQ(b.q[7], 127);
}

}  // namespace
}  // namespace shoal::worker::cpu
