// FP8 e4m3fn block-scaled weights (DeepSeek-V3 layout) through Matmul, against a scalar
// reference that decodes the codes with integer arithmetic and sums in double.
#include "worker/kernels/cpu/fp8_matmul.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "tests/kernels/test_data.h"
#include "worker/kernels/cpu/thread_pool.h"

namespace shoal::worker::cpu {
namespace {

using testing::MaxAbs;
using testing::MaxAbsDiff;

// e4m3fn decoded as sign · significand · 2^exponent with integers: normal codes are
// (8 + m) · 2^(e - 10), subnormals m · 2^-9 = m · 2^(1 - 10); 0x7f and 0xff are NaN.
double ReferenceE4M3(uint8_t code) {
  const int e = (code >> 3) & 0xF, m = code & 7;
  if (e == 15 && m == 7) return std::nan("");
  const double mag = e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 10);
  return (code & 0x80) ? -mag : mag;
}

struct Fp8Weights {
  int64_t rows, cols;
  std::vector<uint8_t> codes;  // [rows, cols]
  std::vector<float> scales;   // [ceil(rows/128), ceil(cols/128)]
  int64_t scale_cols() const { return (cols + 127) / 128; }
  WeightMatrix Matrix() const {
    WeightMatrix w{DType::kF8E4M3, reinterpret_cast<const std::byte*>(codes.data()), rows, cols,
                   static_cast<size_t>(cols)};
    w.block_scales = scales.data();
    w.scale_stride = scale_cols();
    return w;
  }
};

// Random finite codes and block scales of the size DeepSeek-V3's weight_scale_inv holds.
Fp8Weights RandomFp8(int64_t rows, int64_t cols, std::mt19937& rng) {
  Fp8Weights w{rows, cols, std::vector<uint8_t>(rows * cols),
               std::vector<float>(((rows + 127) / 128) * ((cols + 127) / 128))};
  std::uniform_int_distribution<int> code(0, 255);
  for (uint8_t& c : w.codes) {
    do c = static_cast<uint8_t>(code(rng));
    while ((c & 0x7f) == 0x7f);
  }
  std::uniform_real_distribution<float> scale(1e-4f, 3e-3f);
  for (float& s : w.scales) s = scale(rng);
  return w;
}

// y[t, r] over rows [r0, r0 + rows) and columns [c0, c0 + cols) of `w`, in double with
// each weight dequantized as the f32 product of its value and its block's scale.
std::vector<float> ReferenceMatmul(const Fp8Weights& w, const std::vector<float>& x, int64_t T,
                                   int64_t r0, int64_t rows, int64_t c0, int64_t cols) {
  std::vector<float> y(T * rows);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      double acc = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t R = r0 + r, C = c0 + c;
        const float s = w.scales[(R / 128) * w.scale_cols() + C / 128];
        const float wv = static_cast<float>(ReferenceE4M3(w.codes[R * w.cols + C])) * s;
        acc += static_cast<double>(wv) * x[t * cols + c];
      }
      y[t * rows + r] = static_cast<float>(acc);
    }
  }
  return y;
}

TEST(E4M3, EveryCodeDecodesAsTheFormatDefines) {
  for (int c = 0; c < 256; ++c) {
    const double want = ReferenceE4M3(static_cast<uint8_t>(c));
    const float got = E4M3ToFloat(static_cast<uint8_t>(c));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << "code " << c;
    } else {
      EXPECT_EQ(got, want) << "code " << c;
    }
  }
  // Landmarks of e4m3fn: no infinity, max 448, smallest subnormal 2^-9, 1.0 = 0x38.
  EXPECT_EQ(E4M3ToFloat(0x7e), 448.0f);
  EXPECT_EQ(E4M3ToFloat(0xfe), -448.0f);
  EXPECT_EQ(E4M3ToFloat(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(E4M3ToFloat(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_EQ(E4M3ToFloat(0x08), std::ldexp(1.0f, -6));
  EXPECT_EQ(E4M3ToFloat(0x38), 1.0f);
  EXPECT_TRUE(std::isnan(E4M3ToFloat(0x7f)));
  EXPECT_TRUE(std::isnan(E4M3ToFloat(0xff)));
  EXPECT_TRUE(std::signbit(E4M3ToFloat(0x80)));
}

// The vectorized decode, code by code: a row holding every finite code once, dotted with a one-hot
// x, gives exactly the f32 product code value · scale (what `fp8.float() * scale` gives).
TEST(Fp8Matmul, EachCodeTimesScaleIsExactThroughTheVectorPath) {
  ThreadPool pool(1);
  for (float scale : {1.0f, 0.0123f, 3.7e-5f, 1e-38f}) {
    std::vector<uint8_t> codes(256);
    // NaN codes would poison every dot product of the row (NaN · 0 is NaN); they have
    // their own test below.
    for (int c = 0; c < 256; ++c) codes[c] = (c & 0x7f) == 0x7f ? 0 : static_cast<uint8_t>(c);
    std::vector<float> scales(2, scale);
    WeightMatrix w{DType::kF8E4M3, reinterpret_cast<const std::byte*>(codes.data()), 1, 256, 256};
    w.block_scales = scales.data();
    w.scale_stride = 2;
    for (int c = 0; c < 256; ++c) {
      std::vector<float> x(256, 0.0f);
      x[c] = 1.0f;
      float y = -1;
      MatmulTarget tg{&w, &y, 1};
      Matmul(&pool, x.data(), 1, 256, {&tg, 1});
      const float want = static_cast<float>(ReferenceE4M3(static_cast<uint8_t>(c))) * scale;
      if ((c & 0x7f) != 0x7f) {
        EXPECT_EQ(y, want) << "code " << c << " scale " << scale;
      }
    }
  }
}

TEST(Fp8Matmul, NanCodesPoisonOnlyTheirOwnRows) {
  ThreadPool pool(2);
  std::mt19937 rng(5);
  for (uint8_t nan_code : {uint8_t{0x7f}, uint8_t{0xff}}) {
    for (int64_t col : {3, 200}) {  // in the vector body and in the scalar tail
      Fp8Weights w = RandomFp8(4, 203, rng);
      w.codes[2 * 203 + col] = nan_code;
      auto x = testing::RandomFloats(203, rng);
      std::vector<float> y(4);
      WeightMatrix m = w.Matrix();
      MatmulTarget tg{&m, y.data(), 4};
      Matmul(&pool, x.data(), 1, 203, {&tg, 1});
      EXPECT_TRUE(std::isnan(y[2])) << "code " << int(nan_code) << " col " << col;
      for (int r : {0, 1, 3}) EXPECT_TRUE(std::isfinite(y[r])) << r;
    }
  }
}

TEST(Fp8Matmul, SubnormalCodesKeepTheirValue) {
  ThreadPool pool(1);
  // Only subnormals (exponent field 0), over a vector body and a scalar tail.
  std::vector<uint8_t> codes(24);
  for (int i = 0; i < 24; ++i) codes[i] = static_cast<uint8_t>((i % 8) | (i % 3 == 0 ? 0x80 : 0));
  std::vector<float> scales = {0.5f};
  WeightMatrix w{DType::kF8E4M3, reinterpret_cast<const std::byte*>(codes.data()), 1, 24, 24};
  w.block_scales = scales.data();
  w.scale_stride = 1;
  std::vector<float> x(24, 1.0f);
  float y;
  MatmulTarget tg{&w, &y, 1};
  Matmul(&pool, x.data(), 1, 24, {&tg, 1});
  double want = 0;
  for (uint8_t c : codes) want += ReferenceE4M3(c) * 0.5;
  EXPECT_EQ(y, static_cast<float>(want));  // small multiples of 2^-10: every sum is exact
  EXPECT_NE(y, 0.0f);
}

struct Shape {
  int64_t rows, cols, tokens;
};

class Fp8MatmulShapes : public ::testing::TestWithParam<Shape> {};

// Partial row and column blocks (rows/cols not multiples of 128), column tails shorter
// than a vector, token counts around the kernel's token tile and the matmul's chunk.
TEST_P(Fp8MatmulShapes, MatchesScalarReference) {
  const auto [rows, cols, T] = GetParam();
  std::mt19937 rng(rows * 7 + cols + T);
  Fp8Weights w = RandomFp8(rows, cols, rng);
  auto x = testing::RandomFloats(T * cols, rng);
  std::vector<float> y(T * rows);
  ThreadPool pool(3);
  WeightMatrix m = w.Matrix();
  MatmulTarget tg{&m, y.data(), rows};
  Matmul(&pool, x.data(), T, cols, {&tg, 1});
  const auto ref = ReferenceMatmul(w, x, T, 0, rows, 0, cols);
  EXPECT_LE(MaxAbsDiff(y, ref), 1e-5f * MaxAbs(ref));
}

INSTANTIATE_TEST_SUITE_P(Shapes, Fp8MatmulShapes,
                         ::testing::Values(Shape{128, 128, 1}, Shape{256, 384, 4},
                                           Shape{300, 200, 1}, Shape{300, 200, 7},
                                           Shape{37, 203, 3}, Shape{129, 131, 70},
                                           Shape{5, 7, 2}, Shape{200, 256, 131}),
                         [](const auto& info) {
                           std::string name = "R";
                           name += std::to_string(info.param.rows);
                           name += "_C";
                           name += std::to_string(info.param.cols);
                           name += "_T";
                           name += std::to_string(info.param.tokens);
                           return name;
                         });

// A tensor-parallel shard as linear.h builds it: rows [128, 256) and columns [128, 300)
// of a [300, 300] weight, a strided view whose scale pointer starts at block (1, 1).
TEST(Fp8Matmul, ShardViewReadsItsOwnScaleBlocks) {
  std::mt19937 rng(77);
  Fp8Weights w = RandomFp8(300, 300, rng);
  const int64_t r0 = 128, rows = 128, c0 = 128, cols = 172, T = 5;
  WeightMatrix m = w.Matrix();
  m.data = m.row(r0) + c0;
  m.rows = rows;
  m.cols = cols;
  m.block_scales = w.scales.data() + (r0 / 128) * w.scale_cols() + c0 / 128;
  auto x = testing::RandomFloats(T * cols, rng);
  std::vector<float> y(T * rows);
  ThreadPool pool(2);
  MatmulTarget tg{&m, y.data(), rows};
  Matmul(&pool, x.data(), T, cols, {&tg, 1});
  const auto ref = ReferenceMatmul(w, x, T, r0, rows, c0, cols);
  EXPECT_LE(MaxAbsDiff(y, ref), 1e-5f * MaxAbs(ref));
}

TEST(Fp8Matmul, AddsBiasAndAccumulatesLikeOtherTypes) {
  std::mt19937 rng(3);
  Fp8Weights w = RandomFp8(130, 140, rng);
  const int64_t T = 3;
  auto x = testing::RandomFloats(T * 140, rng);
  auto bias = testing::RandomFloats(130, rng);
  auto y = testing::RandomFloats(T * 130, rng);
  const auto y0 = y;
  ThreadPool pool(2);
  WeightMatrix m = w.Matrix();
  MatmulTarget tg{&m, y.data(), 130, bias.data(), true};
  Matmul(&pool, x.data(), T, 140, {&tg, 1});
  auto ref = ReferenceMatmul(w, x, T, 0, 130, 0, 140);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t r = 0; r < 130; ++r) ref[t * 130 + r] += y0[t * 130 + r] + bias[r];
  }
  EXPECT_LE(MaxAbsDiff(y, ref), 1e-5f * MaxAbs(ref));
}

TEST(Fp8Matmul, BytesCountOneBytePerWeightPlusScales) {
  Fp8Weights w{300, 200, std::vector<uint8_t>(300 * 200), std::vector<float>(3 * 2)};
  EXPECT_EQ(w.Matrix().bytes(), 300u * 200u + 3u * 2u * 4u);
}

}  // namespace
}  // namespace shoal::worker::cpu
