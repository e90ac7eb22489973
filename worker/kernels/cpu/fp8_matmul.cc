#include "worker/kernels/cpu/fp8_matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "worker/kernels/cpu/simd.h"

namespace shoal::worker::cpu {
namespace {

constexpr int kTokenTile = 4;  // tokens sharing each dequantized weight vector

std::array<float, 256> MakeE4M3Table() {
  std::array<float, 256> t{};
  for (int code = 0; code < 256; ++code) {
    const int sign = code >> 7, exp = (code >> 3) & 0xF, mant = code & 0x7;
    float v;
    if (exp == 0xF && mant == 0x7) {
      v = std::numeric_limits<float>::quiet_NaN();
    } else if (exp == 0) {
      v = std::ldexp(static_cast<float>(mant), -9);
    } else {
      v = std::ldexp(1.0f + mant / 8.0f, exp - 7);
    }
    t[code] = sign ? -v : v;
  }
  return t;
}

const std::array<float, 256> kE4M3Table = MakeE4M3Table();

// e4m3 codes (widened to 16-bit lanes) → the binary16 bits of their values / 256, with a
// few integer ops and no table: the code without its sign, shifted left 7, is the binary16
// whose exponent field is the e4m3 one (bias 15 instead of 7, so 2^-8 times the value) and
// whose mantissa is the e4m3 mantissa; e4m3 subnormals land on binary16 subnormals with the
// same 2^-8 factor. Only NaN (the all-ones magnitude) needs a patch: OR-ing in the binary16
// exponent field turns its pattern (mantissa 0x380) into a binary16 NaN. Every e4m3 value
// is exact in binary16.
inline __m128i E4M3ToHalfBits(__m128i codes) {
  const __m128i mag = _mm_and_si128(codes, _mm_set1_epi16(0x7F));
  const __m128i sign = _mm_slli_epi16(_mm_and_si128(codes, _mm_set1_epi16(0x80)), 8);
  const __m128i is_nan = _mm_cmpeq_epi16(mag, _mm_set1_epi16(0x7F));
  return _mm_or_si128(_mm_or_si128(_mm_slli_epi16(mag, 7), sign), _mm_and_si128(is_nan, _mm_set1_epi16(0x7C00)));
}

inline __m256 LoadE4M3Div256(const uint8_t* p) {
  return _mm256_cvtph_ps(E4M3ToHalfBits(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))));
}

// Sixteen codes at once: the integer steps run on 16 lanes of 16 bits.
inline void LoadE4M3Div256x16(const uint8_t* p, __m256* lo, __m256* hi) {
  const __m256i codes = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i mag = _mm256_and_si256(codes, _mm256_set1_epi16(0x7F));
  const __m256i sign = _mm256_slli_epi16(_mm256_and_si256(codes, _mm256_set1_epi16(0x80)), 8);
  const __m256i is_nan = _mm256_cmpeq_epi16(mag, _mm256_set1_epi16(0x7F));
  const __m256i half = _mm256_or_si256(_mm256_or_si256(_mm256_slli_epi16(mag, 7), sign),
                                       _mm256_and_si256(is_nan, _mm256_set1_epi16(0x7C00)));
  *lo = _mm256_cvtph_ps(_mm256_castsi256_si128(half));
  *hi = _mm256_cvtph_ps(_mm256_extracti128_si256(half, 1));
}

// out[j] = Σ_c dequant(W[r, c]) · x[j][c] for one weight row and NT tokens. Each weight is
// dequantized as (value / 256) · (scale · 256): both factors are exact, so the one rounding
// of the product gives the same f32 as value · scale.
template <int NT>
void DotFp8Row(const WeightMatrix& w, int64_t r, const float* const* x, float* out) {
  const uint8_t* row = reinterpret_cast<const uint8_t*>(w.row(r));
  __m256 acc[NT], acc2[NT];
  for (int j = 0; j < NT; ++j) acc[j] = acc2[j] = _mm256_setzero_ps();
  float tail[NT] = {};
  for (int64_t c0 = 0; c0 < w.cols; c0 += kFp8BlockSize) {
    const int64_t c1 = std::min(c0 + kFp8BlockSize, w.cols);
    const float s = Fp8BlockScale(w, r, c0);
    int64_t c = c0;
    const float s256 = s * 256.0f;
    if (std::isfinite(s256)) {  // a scale past 2^120 would overflow; it takes the scalar path
      const __m256 vs = _mm256_set1_ps(s256);
      for (; c + 16 <= c1; c += 16) {
        __m256 w0, w1;
        LoadE4M3Div256x16(row + c, &w0, &w1);
        w0 = _mm256_mul_ps(w0, vs);
        w1 = _mm256_mul_ps(w1, vs);
        for (int j = 0; j < NT; ++j) {
          acc[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[j] + c), acc[j]);
          acc2[j] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x[j] + c + 8), acc2[j]);
        }
      }
      for (; c + 8 <= c1; c += 8) {
        const __m256 w0 = _mm256_mul_ps(LoadE4M3Div256(row + c), vs);
        for (int j = 0; j < NT; ++j) acc[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[j] + c), acc[j]);
      }
    }
    for (; c < c1; ++c) {
      const float wv = kE4M3Table[row[c]] * s;
      for (int j = 0; j < NT; ++j) tail[j] += wv * x[j][c];
    }
  }
  for (int j = 0; j < NT; ++j) out[j] = HorizontalSum8(_mm256_add_ps(acc[j], acc2[j])) + tail[j];
}

template <int NT>
void RunTokenTile(const MatmulTarget& tg, const float* x, int64_t ldx, int64_t r0, int64_t r1,
                  int64_t t) {
  const float* xs[NT];
  for (int j = 0; j < NT; ++j) xs[j] = x + (t + j) * ldx;
  float out[NT];
  for (int64_t r = r0; r < r1; ++r) {
    DotFp8Row<NT>(*tg.w, r, xs, out);
    const float bias = tg.bias != nullptr ? tg.bias[r] : 0.0f;
    for (int j = 0; j < NT; ++j) {
      float* y = tg.y + (t + j) * tg.ldy + r;
      *y = (tg.accumulate ? *y : 0.0f) + out[j] + bias;
    }
  }
}

}  // namespace

float E4M3ToFloat(uint8_t code) { return kE4M3Table[code]; }

void MatmulFp8Tile(const MatmulTarget& tg, const float* x, int64_t ldx, int64_t r0, int64_t r1,
                   int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; t += kTokenTile) {
    switch (std::min<int64_t>(kTokenTile, t1 - t)) {
      case 4: RunTokenTile<4>(tg, x, ldx, r0, r1, t); break;
      case 3: RunTokenTile<3>(tg, x, ldx, r0, r1, t); break;
      case 2: RunTokenTile<2>(tg, x, ldx, r0, r1, t); break;
      default: RunTokenTile<1>(tg, x, ldx, r0, r1, t); break;
    }
  }
}

}  // namespace shoal::worker::cpu
