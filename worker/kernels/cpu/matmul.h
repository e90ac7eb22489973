#pragma once
// y[T, out] = x[T, in] · W[out, in]^T for weights of any dtype, used in place from the
// mapped model file.
#include <cstddef>
#include <cstdint>
#include <span>

#include "worker/model/dtype.h"
#include "worker/model/tensor_view.h"

namespace shoal::worker {
class ThreadPool;
}

namespace shoal::worker::cpu {

// A [rows, cols] weight matrix whose rows are `row_stride` bytes apart. A row-parallel
// shard (a column range of every row) is a WeightMatrix with a larger stride than its
// row bytes, so shards are views, never copies.
struct WeightMatrix {
  DType dtype = DType::kF32;
  const std::byte* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_stride = 0;
  // F8_E4M3 only (fp8_matmul.h): one f32 scale per 128×128 block, block (i, j) at
  // block_scales[i * scale_stride + j], block 0 being this view's first rows and columns
  // (a shard view starts on a block boundary). Null for every other dtype.
  const float* block_scales = nullptr;
  int64_t scale_stride = 0;

  const std::byte* row(int64_t r) const { return data + r * row_stride; }
  size_t bytes() const {
    const size_t scales = block_scales == nullptr ? 0 : ((rows + 127) / 128) * ((cols + 127) / 128) * sizeof(float);
    return rows * RowBytes(dtype, cols) + scales;
  }
  static WeightMatrix Of(const TensorView& t) {
    return {t.dtype, t.data, t.rows(), t.cols(), t.row_bytes()};
  }
};

// One output of a matmul over a shared input: y[t * ldy + o] = (accumulate ? y : 0)
// + bias[o] + x[t] · W[o]. Several targets on the same x (q/k/v, gate/up) run in one
// parallel pass, so the activations are quantized once and the threads sync once.
struct MatmulTarget {
  const WeightMatrix* w = nullptr;
  float* y = nullptr;
  int64_t ldy = 0;
  const float* bias = nullptr;  // [w->rows] or null
  bool accumulate = false;
};

// x: [num_tokens, ldx] f32, every target's w->cols elements used. Quantized weights
// (Q8_0/Q4_0/Q4_1) take the integer path: each row of x is quantized to 8-bit blocks once
// and dotted with maddubs; F32/F16/BF16 weights take the FMA path. Work is split over
// tiles of output rows × tokens so each weight tile is read from memory once and reused
// from cache for every token.
void Matmul(ThreadPool* pool, const float* x, int64_t num_tokens, int64_t ldx,
            std::span<const MatmulTarget> targets);

bool MatmulSupports(DType dtype);

}  // namespace shoal::worker::cpu
