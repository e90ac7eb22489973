#pragma once
// FP8 (e4m3fn) weights with 128×128 block scales, as DeepSeek-V3/R1 ship them: weight
// element (r, c) = e4m3(W[r, c]) * block_scales[r / 128][c / 128] (the checkpoint's
// `<name>.weight_scale_inv`). The matmul reads the 1-byte codes in place and dequantizes
// each weight exactly (the f32 product HF's `fp8.float() * scale` computes) just before the
// FMA with the f32 activations, so the weights stay at one byte each in memory.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "worker/kernels/cpu/matmul.h"

namespace shoal::worker::cpu {

// Rows and columns covered by one scale.
inline constexpr int64_t kFp8BlockSize = 128;

// The value of each e4m3fn code, from the format's definition: 1 sign bit, 4 exponent
// bits (bias 7), 3 mantissa bits; exponent 0 is subnormal (m * 2^-9); there are no
// infinities, and S.1111.111 (0x7f, 0xff) is NaN.
float E4M3ToFloat(uint8_t code);

// The scale of weight element (r, c) of `w`; 1 when w has no block scales. The scales are
// read in place from the mapped file, where a safetensors tensor may start at any byte
// (after a tensor of odd size), so they are copied out rather than loaded as floats.
inline float Fp8BlockScale(const WeightMatrix& w, int64_t r, int64_t c) {
  if (w.block_scales == nullptr) return 1.0f;
  const int64_t index = (r / kFp8BlockSize) * w.scale_stride + c / kFp8BlockSize;
  float scale;
  std::memcpy(&scale, reinterpret_cast<const std::byte*>(w.block_scales) + index * sizeof(float), sizeof(float));
  return scale;
}

// Matmul's F8_E4M3 case: for output rows [r0, r1) and tokens [t0, t1) of `tg`,
// y[t * ldy + r] = (accumulate ? y : 0) + x[t] · dequantized W[r] + bias[r].
void MatmulFp8Tile(const MatmulTarget& tg, const float* x, int64_t ldx, int64_t r0,
                   int64_t r1, int64_t t0, int64_t t1);

}  // namespace shoal::worker::cpu
