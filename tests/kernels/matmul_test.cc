#include "worker/kernels/cpu/matmul.h"

#include <gtest/gtest.h>

#include "tests/kernels/test_data.h"
#include "worker/kernels/cpu/reference.h"
#include "worker/kernels/cpu/thread_pool.h"

namespace shoal::worker::cpu {
namespace {

using testing::MaxAbs;
using testing::MaxAbsDiff;

struct Case {
  DType dtype;
  int64_t tokens;
};

class MatmulEveryType : public ::testing::TestWithParam<Case> {};

// Rows not a multiple of the row tile, token counts around the token tile and chunk.
TEST_P(MatmulEveryType, MatchesScalarReference) {
  const auto [dt, T] = GetParam();
  std::mt19937 rng(11 + T);
  const int64_t rows = 37, cols = IsQuantized(dt) ? 32 * 6 : 200;
  auto wbytes = testing::RandomWeights(dt, rows, cols, rng);
  WeightMatrix w{dt, wbytes.data(), rows, cols, RowBytes(dt, cols)};
  auto x = testing::RandomFloats(T * cols, rng);
  std::vector<float> y(T * rows), ref(T * rows);
  ThreadPool pool(3);
  MatmulTarget target{&w, y.data(), rows};
  Matmul(&pool, x.data(), T, cols, {&target, 1});

  reference::Matmul(x.data(), T, w, ref.data());
  const float scale = MaxAbs(ref);
  if (IsQuantized(dt)) {
    // Against the same arithmetic (8-bit activations): only summation order differs.
    std::vector<float> ref_q(T * rows);
    reference::MatmulQuantizedActivations(x.data(), T, w, ref_q.data());
    EXPECT_LE(MaxAbsDiff(y, ref_q), 1e-5f * scale);
    // Against exact f32 activations: within the 8-bit rounding of x.
    EXPECT_LE(MaxAbsDiff(y, ref), 2e-2f * scale);
  } else {
    EXPECT_LE(MaxAbsDiff(y, ref), 1e-5f * scale);
  }
}

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1}) {
    for (int64_t t : {1, 3, 4, 7, 70, 131}) cases.push_back({dt, t});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AllWeightTypes, MatmulEveryType, ::testing::ValuesIn(AllCases()),
                         [](const auto& info) {
                           return std::string(DTypeName(info.param.dtype)) + "_T" +
                                  std::to_string(info.param.tokens);
                         });

// Several targets on one input, with bias, accumulation, an output stride and a
// row-parallel shard (a column range of a wider matrix, i.e. a strided view).
TEST(Matmul, SharedInputTargetsWithBiasAccumulateAndStridedShard) {
  std::mt19937 rng(5);
  const int64_t T = 6, cols = 64, full_cols = 128;
  auto a_bytes = testing::RandomWeights(DType::kQ4_1, 20, cols, rng);
  auto b_bytes = testing::RandomWeights(DType::kQ8_0, 24, full_cols, rng);
  WeightMatrix a{DType::kQ4_1, a_bytes.data(), 20, cols, RowBytes(DType::kQ4_1, cols)};
  // Second half of every row of b: the shard rank 1 of 2 would hold.
  WeightMatrix b_shard{DType::kQ8_0, b_bytes.data() + RowBytes(DType::kQ8_0, cols), 24, cols,
                       RowBytes(DType::kQ8_0, full_cols)};
  auto x = testing::RandomFloats(T * cols, rng);
  auto bias = testing::RandomFloats(20, rng);
  const int64_t ldy = 50;
  std::vector<float> y(T * ldy, 1.5f);
  std::vector<float> z(T * 24, 0.0f);
  MatmulTarget targets[2] = {{&a, y.data() + 3, ldy, bias.data(), true}, {&b_shard, z.data(), 24}};
  ThreadPool pool(2);
  Matmul(&pool, x.data(), T, cols, targets);

  std::vector<float> ra(T * 20), rb(T * 24);
  reference::MatmulQuantizedActivations(x.data(), T, a, ra.data());
  std::vector<std::byte> packed(24 * RowBytes(DType::kQ8_0, cols));
  for (int r = 0; r < 24; ++r) {
    std::memcpy(packed.data() + r * RowBytes(DType::kQ8_0, cols), b_shard.row(r), RowBytes(DType::kQ8_0, cols));
  }
  WeightMatrix b_packed{DType::kQ8_0, packed.data(), 24, cols, RowBytes(DType::kQ8_0, cols)};
  reference::MatmulQuantizedActivations(x.data(), T, b_packed, rb.data());
  for (int t = 0; t < T; ++t) {
    for (int o = 0; o < 20; ++o) EXPECT_NEAR(y[t * ldy + 3 + o], 1.5f + bias[o] + ra[t * 20 + o], 1e-4f);
    EXPECT_EQ(y[t * ldy + 0], 1.5f);  // untouched outside the target columns
    EXPECT_EQ(y[t * ldy + 23], 1.5f);
  }
  EXPECT_LE(MaxAbsDiff(z, rb), 1e-4f);
}

}  // namespace
}  // namespace shoal::worker::cpu
