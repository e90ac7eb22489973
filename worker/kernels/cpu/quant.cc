#include "worker/kernels/cpu/quant.h"

#include <immintrin.h>

#include <cmath>

namespace shoal::worker::cpu {
namespace {

void DequantQ8_0(const BlockQ8_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    const __m256 d = _mm256_set1_ps(HalfToFloat(b[i].d));
    for (int j = 0; j < 32; j += 8) {
      __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b[i].q + j));
      __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
      _mm256_storeu_ps(y + j, _mm256_mul_ps(v, d));
    }
  }
}

template <typename Block, bool kHasMin>
void DequantQ4(const Block* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    const float d = HalfToFloat(b[i].d);
    float m;
    if constexpr (kHasMin) {
      m = HalfToFloat(b[i].m);
    } else {
      m = -8.0f * d;
    }
    alignas(32) uint8_t q[32];
    _mm256_store_si256(reinterpret_cast<__m256i*>(q), UnpackNibbles(b[i].q));
    const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
    for (int j = 0; j < 32; j += 8) {
      __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + j));
      __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q8));
      _mm256_storeu_ps(y + j, _mm256_fmadd_ps(v, vd, vm));
    }
  }
}

}  // namespace

void DequantizeRow(DType dtype, const std::byte* src, float* dst, int64_t n) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::kF16: {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(src);
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) {
        __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(v));
      }
      for (; i < n; ++i) dst[i] = HalfToFloat(h[i]);
      return;
    }
    case DType::kBF16: {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(src);
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) {
        __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i));
        __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16);
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(w));
      }
      for (; i < n; ++i) dst[i] = Bf16ToFloat(h[i]);
      return;
    }
    case DType::kQ8_0:
      DequantQ8_0(reinterpret_cast<const BlockQ8_0*>(src), dst, n / 32);
      return;
    case DType::kQ4_0:
      DequantQ4<BlockQ4_0, false>(reinterpret_cast<const BlockQ4_0*>(src), dst, n / 32);
      return;
    case DType::kQ4_1:
      DequantQ4<BlockQ4_1, true>(reinterpret_cast<const BlockQ4_1*>(src), dst, n / 32);
      return;
    default:
      // Callers validate dtypes when a model is built; reaching here is a bug.
      std::abort();
  }
}

void QuantizeRowQ8Act(const float* x, BlockQ8Act* y, int64_t n) {
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < n / 32; ++b, x += 32) {
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_loadu_ps(x + 8 * j);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, v[j]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float max_abs = _mm_cvtss_f32(m4);
    const float d = max_abs / 127.0f;
    const __m256 inv = _mm256_set1_ps(max_abs > 0.0f ? 127.0f / max_abs : 0.0f);
    __m256i q[4];
    for (int j = 0; j < 4; ++j) {
      q[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[j], inv),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    // Sum of the quantized values, for the offset term of Q4_0/Q4_1 dot products.
    __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_hadd_epi32(s4, s4);
    s4 = _mm_hadd_epi32(s4, s4);
    // Pack 32 int32 to 32 int8; packs interleave 128-bit lanes, the permute restores order.
    __m256i p01 = _mm256_packs_epi32(q[0], q[1]);
    __m256i p23 = _mm256_packs_epi32(q[2], q[3]);
    __m256i p = _mm256_packs_epi16(p01, p23);
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].q), p);
    y[b].d = RoundToHalf(d);
    y[b].s = RoundToHalf(d * static_cast<float>(_mm_cvtsi128_si32(s4)));
  }
}

}  // namespace shoal::worker::cpu
