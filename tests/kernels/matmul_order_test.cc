// The quantized matmul must give llama.cpp's numbers bit for bit, not merely close ones:
// near-tied logits then pick the same token. GGML's AVX2 dot of a Q4_0/Q4_1/Q8_0 row with
// 8-bit activation blocks keeps 8 float lanes, lane k holding the integer dot of elements
// 4k..4k+3 of each block times d_w·d_a, added by one FMA per block in block order; the
// lanes are then summed as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), and for Q4_1 the min term
// sum over blocks of m·s (a product, then a sum) is added last. This test spells that
// order out in scalar code and asserts equality, so a faster kernel that reorders the
// sums fails here instead of as a rare flipped token.
#include <cmath>
#include <vector>

#include <gtest/gtest.h>

#include "tests/kernels/test_data.h"
#include "worker/kernels/cpu/matmul.h"
#include "worker/kernels/cpu/quant.h"
#include "worker/kernels/cpu/thread_pool.h"

namespace shoal::worker::cpu {
namespace {

// The 32 signed integer weights of block b and its scale and min (0 for Q4_0/Q8_0).
void WeightBlock(DType dt, const std::byte* row, int64_t b, int q[32], float* d, float* m) {
  const auto* u8 = reinterpret_cast<const uint8_t*>(row) + b * BlockBytes(dt);
  const uint16_t d16 = static_cast<uint16_t>(u8[0] | u8[1] << 8);
  *d = HalfToFloat(d16);
  *m = 0.0f;
  if (dt == DType::kQ8_0) {
    for (int e = 0; e < 32; ++e) q[e] = static_cast<int8_t>(u8[2 + e]);
    return;
  }
  const uint8_t* nibbles = u8 + (dt == DType::kQ4_1 ? 4 : 2);
  for (int e = 0; e < 16; ++e) {
    q[e] = nibbles[e] & 0x0F;
    q[e + 16] = nibbles[e] >> 4;
  }
  if (dt == DType::kQ4_0) {
    for (int e = 0; e < 32; ++e) q[e] -= 8;
  } else {
    *m = HalfToFloat(static_cast<uint16_t>(u8[2] | u8[3] << 8));
  }
}

float GgmlOrderDot(DType dt, const std::byte* row, const BlockQ8Act* a, int64_t nb) {
  float lane[8] = {};
  float mins = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    int q[32];
    float d, m;
    WeightBlock(dt, row, b, q, &d, &m);
    const float dd = d * a[b].d;
    for (int k = 0; k < 8; ++k) {
      int s = 0;
      for (int e = 4 * k; e < 4 * k + 4; ++e) s += q[e] * a[b].q[e];
      lane[k] = std::fma(dd, static_cast<float>(s), lane[k]);
    }
    const float p = m * a[b].s;
    mins = mins + p;
  }
  const float r0 = lane[0] + lane[4], r1 = lane[1] + lane[5], r2 = lane[2] + lane[6],
              r3 = lane[3] + lane[7];
  const float sum = (r0 + r2) + (r1 + r3);
  return dt == DType::kQ4_1 ? sum + mins : sum;
}

struct OrderCase {
  DType dtype;
  int64_t tokens;
  int64_t rows;
  int64_t cols;
  int threads;
};

class MatmulGgmlOrder : public ::testing::TestWithParam<OrderCase> {};

TEST_P(MatmulGgmlOrder, EqualsGgmlSummationOrderBitForBit) {
  const auto [dt, T, rows, cols, threads] = GetParam();
  std::mt19937 rng(static_cast<unsigned>(7 * T + rows + cols));
  auto wbytes = testing::RandomWeights(dt, rows, cols, rng);
  WeightMatrix w{dt, wbytes.data(), rows, cols, RowBytes(dt, cols)};
  auto x = testing::RandomFloats(T * cols, rng);
  std::vector<float> y(T * rows);
  ThreadPool pool(threads);
  MatmulTarget target{&w, y.data(), rows};
  Matmul(&pool, x.data(), T, cols, {&target, 1});

  const int64_t nb = cols / 32;
  std::vector<BlockQ8Act> xq(nb);
  int mismatches = 0;
  for (int64_t t = 0; t < T; ++t) {
    QuantizeRowQ8Act(x.data() + t * cols, xq.data(), cols);
    for (int64_t o = 0; o < rows; ++o) {
      const float want = GgmlOrderDot(dt, w.row(o), xq.data(), nb);
      if (y[t * rows + o] != want && ++mismatches <= 5) {
        ADD_FAILURE() << "token " << t << " row " << o << ": " << y[t * rows + o] << " != " << want;
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
}

std::vector<OrderCase> OrderCases() {
  std::vector<OrderCase> cases;
  for (DType dt : {DType::kQ4_1, DType::kQ4_0, DType::kQ8_0}) {
    for (int64_t t : {1, 2, 3, 4, 5, 9}) {
      // Row counts around the row groups the kernels use; 18 blocks is SmolLM2's hidden size.
      for (int64_t rows : {1, 7, 37, 130}) cases.push_back({dt, t, rows, 32 * 18, 2});
    }
    cases.push_back({dt, 1, 77, 32 * 48, 3});
    cases.push_back({dt, 1, 64, 32, 1});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(QuantizedTypes, MatmulGgmlOrder, ::testing::ValuesIn(OrderCases()),
                         [](const auto& info) {
                           const OrderCase& c = info.param;
                           return std::string(DTypeName(c.dtype)) + "_T" + std::to_string(c.tokens) +
                                  "_R" + std::to_string(c.rows) + "_C" + std::to_string(c.cols) +
                                  "_P" + std::to_string(c.threads);
                         });

}  // namespace
}  // namespace shoal::worker::cpu
