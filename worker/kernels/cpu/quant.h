#pragma once
// Element formats: half/bfloat conversion, dequantizing rows of any weight dtype to f32,
// and the 8-bit activation blocks the integer matmul consumes.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "worker/model/dtype.h"

namespace shoal::worker::cpu {

inline float HalfToFloat(uint16_t h) { return _cvtsh_ss(h); }
inline uint16_t FloatToHalf(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
// f rounded to the nearest binary16 value (ties to even), kept as a float.
inline float RoundToHalf(float f) { return HalfToFloat(FloatToHalf(f)); }
inline float Bf16ToFloat(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// GGML block layouts as they lie in the file (unaligned, packed).
#pragma pack(push, 1)
struct BlockQ8_0 {
  uint16_t d;  // f16 scale
  int8_t q[32];
};
struct BlockQ4_0 {
  uint16_t d;      // f16 scale; value = d * (q - 8)
  uint8_t q[16];   // low nibbles: elements 0..15, high nibbles: 16..31
};
struct BlockQ4_1 {
  uint16_t d;      // f16 scale; value = d * q + m
  uint16_t m;      // f16 min
  uint8_t q[16];
};
#pragma pack(pop)
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20);

// 32 activations quantized symmetrically: x ≈ d * q, with q = round(x * 127 / amax) and
// d = amax / 127 rounded to f16. These are GGML's Q8_0 and Q8_1 activation blocks (the
// ones llama.cpp dots Q8_0/Q4_0 and Q4_1 weights with), kept with float fields so the
// matmul does not convert them per block; the f16 rounding is what makes our integer
// dot products the same numbers as llama.cpp's rather than merely close to them.
// `s` = d * sum(q) with the unrounded d, then rounded to f16 (Q8_1's sum term): it lets
// the dot product with Q4_1 weights (x = d_w * q + m) fold the min into one multiply per
// block instead of per element.
struct BlockQ8Act {
  float d;
  float s;
  int8_t q[32];
};

// The 32 nibbles of a Q4 block as bytes in element order (low nibbles are elements
// 0..15, high nibbles 16..31).
inline __m256i UnpackNibbles(const uint8_t* q) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// dst[0..n) = src rounded to f16 (nearest even).
inline void StoreHalfRow(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) dst[i] = FloatToHalf(src[i]);
}

// dst[0..n) = row of `n` elements of `dtype` starting at `src` (n a multiple of the block size).
void DequantizeRow(DType dtype, const std::byte* src, float* dst, int64_t n);

// n a multiple of 32.
void QuantizeRowQ8Act(const float* x, BlockQ8Act* y, int64_t n);

}  // namespace shoal::worker::cpu
