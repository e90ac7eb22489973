#include "worker/kernels/cpu/ops.h"

#include <immintrin.h>

#include <cmath>

#include "worker/kernels/cpu/quant.h"
#include "worker/kernels/cpu/simd.h"

namespace shoal::worker::cpu {

// The mean square is summed in double from f32 squares and rounded to f32 once, as GGML
// does: the same normalizer as llama.cpp's in practice bit for bit, where an f32 sum's
// rounding would depend on the summation order.
void RmsNorm(const float* x, const float* weight, float* y, int64_t num_tokens, int64_t n,
             float eps) {
  for (int64_t t = 0; t < num_tokens; ++t, x += n, y += n) {
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      const __m256 v = _mm256_loadu_ps(x + j);
      const __m256 sq = _mm256_mul_ps(v, v);
      acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
      acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(sq, 1)));
    }
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, _mm256_add_pd(acc0, acc1));
    double sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (; j < n; ++j) sum += static_cast<double>(x[j] * x[j]);
    const float ms = static_cast<float>(sum / static_cast<double>(n));
    const float inv = 1.0f / std::sqrt(ms + eps);
    const __m256 vinv = _mm256_set1_ps(inv);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv),
                                            _mm256_loadu_ps(weight + i)));
    }
    for (; i < n; ++i) y[i] = x[i] * inv * weight[i];
  }
}

RopeTable::RopeTable(int64_t rotary_dim, double theta, const RopeScaling& scaling,
                     int64_t num_positions)
    : rotary_dim_(rotary_dim) {
  const int64_t half = rotary_dim / 2;
  inv_freq_.resize(half);
  freq_factor_.resize(half);
  step_ = std::pow(static_cast<float>(theta), -2.0f / static_cast<float>(rotary_dim));
  for (int64_t i = 0; i < half; ++i) {
    const double unscaled = 1.0 / std::pow(theta, static_cast<double>(2 * i) / rotary_dim);
    double f = unscaled;
    switch (scaling.type) {
      case RopeScaling::Type::kNone:
        break;
      case RopeScaling::Type::kLinear:
        f /= scaling.factor;
        break;
      case RopeScaling::Type::kLlama3: {
        // Long wavelengths (beyond the original context) are slowed by `factor`, short
        // ones kept, and the band between blended smoothly (Llama 3.1's recipe).
        const double old_ctx = static_cast<double>(scaling.original_max_position_embeddings);
        const double low_wavelen = old_ctx / scaling.low_freq_factor;
        const double high_wavelen = old_ctx / scaling.high_freq_factor;
        const double wavelen = 2.0 * M_PI / f;
        if (wavelen > low_wavelen) {
          f /= scaling.factor;
        } else if (wavelen >= high_wavelen) {
          const double smooth = (old_ctx / wavelen - scaling.low_freq_factor) /
                                (scaling.high_freq_factor - scaling.low_freq_factor);
          f = (1.0 - smooth) * f / scaling.factor + smooth * f;
        }
        break;
      }
      case RopeScaling::Type::kYarn:
        // DeepSeek's YaRN blends frequencies and scales cos/sin by an mscale ratio, which
        // this table has no place for: YarnRopeTable (yarn_rope.h) computes it.
        break;
    }
    inv_freq_[i] = f;
    freq_factor_[i] = static_cast<float>(unscaled / f);
  }
  Reserve(num_positions);
}

// Angles as GGML computes them: in f32, pair i's angle is the previous pair's times
// theta^(-2/rotary_dim), starting from the position itself, then divided by the scaling's
// factor for that pair; cos and sin of the f32 angle. Computing them in double would be a
// few f32 ulps closer to exact, and different from the numbers llama.cpp rotates by.
void RopeTable::Reserve(int64_t n) {
  if (n <= num_positions_) return;
  const int64_t half = rotary_dim_ / 2;
  cos_.resize(n * half);
  sin_.resize(n * half);
  for (int64_t p = num_positions_; p < n; ++p) {
    float angle = static_cast<float>(p);
    for (int64_t i = 0; i < half; ++i) {
      const float a = freq_factor_[i] == 1.0f ? angle : angle / freq_factor_[i];
      cos_[p * half + i] = std::cos(a);
      sin_[p * half + i] = std::sin(a);
      angle *= step_;
    }
  }
  num_positions_ = n;
}

void ApplyRope(const RopeTable& table, float* x, int64_t num_tokens, int64_t ld,
               const int64_t* positions, int64_t num_heads, int64_t head_dim, bool interleaved) {
  const int64_t half = table.rotary_dim() / 2;
  for (int64_t t = 0; t < num_tokens; ++t) {
    const float* c = table.cos(positions[t]);
    const float* s = table.sin(positions[t]);
    for (int64_t h = 0; h < num_heads; ++h) {
      float* v = x + t * ld + h * head_dim;
      // Both layouts round as a·cos − (b·sin) and a·sin + (b·cos) with the first product
      // fused, as GGML's compiled rotation does.
      if (interleaved) {
        for (int64_t i = 0; i < half; ++i) {
          const float a = v[2 * i], b = v[2 * i + 1];
          v[2 * i] = std::fma(a, c[i], -(b * s[i]));
          v[2 * i + 1] = std::fma(a, s[i], b * c[i]);
        }
      } else {
        int64_t i = 0;
        for (; i + 8 <= half; i += 8) {
          const __m256 a = _mm256_loadu_ps(v + i), b = _mm256_loadu_ps(v + half + i);
          const __m256 vc = _mm256_loadu_ps(c + i), vs = _mm256_loadu_ps(s + i);
          _mm256_storeu_ps(v + i, _mm256_fmsub_ps(a, vc, _mm256_mul_ps(b, vs)));
          _mm256_storeu_ps(v + half + i, _mm256_fmadd_ps(a, vs, _mm256_mul_ps(b, vc)));
        }
        for (; i < half; ++i) {
          const float a = v[i], b = v[half + i];
          v[i] = std::fma(a, c[i], -(b * s[i]));
          v[half + i] = std::fma(a, s[i], b * c[i]);
        }
      }
    }
  }
}

void SiluMul(const float* gate, const float* up, float* out, int64_t n) {
  int64_t i = 0;
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void Softmax(float* x, int64_t n) {
  if (n <= 0) return;
  float m = x[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, x[i]);
  const __m256 vm = _mm256_set1_ps(m);
  __m256 vsum = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  float sum = HorizontalSum8(vsum);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += x[i];
  }
  const __m256 inv = _mm256_set1_ps(1.0f / sum);
  i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
  for (; i < n; ++i) x[i] /= sum;
}

void AddInPlace(float* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
  }
  for (; i < n; ++i) y[i] += x[i];
}

void EmbeddingLookup(const WeightMatrix& table, const int32_t* ids, int64_t num_tokens,
                     float* out) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    DequantizeRow(table.dtype, table.row(ids[t]), out + t * table.cols, table.cols);
  }
}

}  // namespace shoal::worker::cpu
