#pragma once
// Small AVX2 building blocks shared by the kernels.
#include <immintrin.h>

#include <cstdint>

namespace shoal::worker::cpu {

inline float HorizontalSum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float HorizontalMax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// e^x for 8 floats: x = n·ln2 + r with n = round(x / ln2) (found by adding 1.5·2^23, whose
// low mantissa bits then hold n) and |r| <= ln2/2 (ln2 split in two so n·ln2_hi is
// exact); e^r - 1 by a degree-5 minimax polynomial in r; 2^n built in the exponent bits.
// This is the single-precision exp of Arm's optimized-routines, which GGML's CPU backend
// also uses, evaluated in the same order, so softmax and SiLU give llama.cpp's values bit
// for bit. Error under 2 ulp. When n leaves the normal exponent range (|n| > 126), 2^n is
// applied as two factors; the result is 0 below about -103.97 and +inf above 88.38.
inline __m256 Exp8(__m256 x) {
  const __m256 shift = _mm256_set1_ps(0x1.8p23f);
  const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), shift);
  const __m256 n = _mm256_sub_ps(z, shift);
  const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                    _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
  const __m256i n_bits = _mm256_slli_epi32(_mm256_castps_si256(z), 23);  // n in the exponent field
  const __m256 two_n = _mm256_castsi256_ps(_mm256_add_epi32(n_bits, _mm256_set1_epi32(0x3f800000)));
  // poly = e^r - 1 = r·c1 + r²·((c2 + r·c3) + r²·(c4 + r·c5))
  const __m256 r2 = _mm256_mul_ps(r, r);
  const __m256 hi = _mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), r, _mm256_set1_ps(0x1.573e2ep-5f));
  const __m256 lo = _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), r, _mm256_set1_ps(0x1.fffdb6p-2f));
  const __m256 poly = _mm256_fmadd_ps(_mm256_fmadd_ps(hi, r2, lo), r2,
                                      _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), r));
  const __m256 abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), n);
  const __m256 beyond = _mm256_cmp_ps(abs_n, _mm256_set1_ps(126.0f), _CMP_GT_OQ);
  if (_mm256_movemask_ps(beyond) == 0) return _mm256_fmadd_ps(poly, two_n, two_n);
  // 2^n = a·b with a = 2^±127 (sign of n) and b = 2^(n∓127), both representable; past
  // |n| > 192 the result is a·a, which is 0 or +inf.
  const __m256i bias = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                                        _mm256_set1_epi32(static_cast<int>(0x82000000u)));
  const __m256 a = _mm256_castsi256_ps(_mm256_add_epi32(bias, _mm256_set1_epi32(0x7f000000)));
  const __m256 b = _mm256_castsi256_ps(_mm256_sub_epi32(n_bits, bias));
  const __m256 far = _mm256_cmp_ps(abs_n, _mm256_set1_ps(192.0f), _CMP_GT_OQ);
  const __m256 split = _mm256_mul_ps(_mm256_fmadd_ps(b, poly, b), a);
  const __m256 normal = _mm256_fmadd_ps(two_n, poly, two_n);
  return _mm256_blendv_ps(_mm256_blendv_ps(normal, split, beyond), _mm256_mul_ps(a, a), far);
}

inline float Dot(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  float s = HorizontalSum8(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y = y * a + x * b
inline void ScaleAdd(float* y, float a, const float* x, float b, int64_t n) {
  const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(_mm256_loadu_ps(x + i), vb,
                                            _mm256_mul_ps(_mm256_loadu_ps(y + i), va)));
  }
  for (; i < n; ++i) y[i] = y[i] * a + x[i] * b;
}

}  // namespace shoal::worker::cpu
