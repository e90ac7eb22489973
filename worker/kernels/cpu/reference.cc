#include "worker/kernels/cpu/reference.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

namespace shoal::worker::cpu::reference {

float HalfToFloat(uint16_t h) {
  const int sign = (h >> 15) & 1;
  const int exp = (h >> 10) & 0x1F;
  const int mant = h & 0x3FF;
  double v;
  if (exp == 0) {
    v = std::ldexp(mant, -24);
  } else if (exp == 31) {
    v = mant ? NAN : INFINITY;
  } else {
    v = std::ldexp(1024 + mant, exp - 25);
  }
  return static_cast<float>(sign ? -v : v);
}

void DequantizeRow(DType dtype, const std::byte* src, float* dst, int64_t n) {
  const auto* u8 = reinterpret_cast<const uint8_t*>(src);
  auto half_at = [&](size_t off) { return HalfToFloat(static_cast<uint16_t>(u8[off] | (u8[off + 1] << 8))); };
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = half_at(2 * i);
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint32_t bits = static_cast<uint32_t>(u8[2 * i] | (u8[2 * i + 1] << 8)) << 16;
        std::memcpy(&dst[i], &bits, 4);
      }
      return;
    case DType::kQ8_0:
      for (int64_t b = 0; b < n / 32; ++b) {
        const size_t base = b * 34;
        const float d = half_at(base);
        for (int j = 0; j < 32; ++j) dst[b * 32 + j] = d * static_cast<int8_t>(u8[base + 2 + j]);
      }
      return;
    case DType::kQ4_0:
      for (int64_t b = 0; b < n / 32; ++b) {
        const size_t base = b * 18;
        const float d = half_at(base);
        for (int j = 0; j < 16; ++j) {
          const uint8_t byte = u8[base + 2 + j];
          dst[b * 32 + j] = d * ((byte & 0xF) - 8);
          dst[b * 32 + 16 + j] = d * ((byte >> 4) - 8);
        }
      }
      return;
    case DType::kQ4_1:
      for (int64_t b = 0; b < n / 32; ++b) {
        const size_t base = b * 20;
        const float d = half_at(base), m = half_at(base + 2);
        for (int j = 0; j < 16; ++j) {
          const uint8_t byte = u8[base + 4 + j];
          dst[b * 32 + j] = d * (byte & 0xF) + m;
          dst[b * 32 + 16 + j] = d * (byte >> 4) + m;
        }
      }
      return;
    default:
      std::abort();
  }
}

void QuantizeRowQ8Act(const float* x, BlockQ8Act* y, int64_t n) {
  for (int64_t b = 0; b < n / 32; ++b) {
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    const float d = amax / 127.0f;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; ++j) {
      const int q = static_cast<int>(std::nearbyint(x[b * 32 + j] * inv));
      y[b].q[j] = static_cast<int8_t>(q);
      sum += q;
    }
    y[b].d = RoundToHalf(d);
    y[b].s = RoundToHalf(d * static_cast<float>(sum));
  }
}

void Matmul(const float* x, int64_t num_tokens, const WeightMatrix& w, float* y) {
  std::vector<float> row(w.cols);
  for (int64_t o = 0; o < w.rows; ++o) {
    reference::DequantizeRow(w.dtype, w.row(o), row.data(), w.cols);
    for (int64_t t = 0; t < num_tokens; ++t) {
      double s = 0;
      for (int64_t i = 0; i < w.cols; ++i) s += static_cast<double>(x[t * w.cols + i]) * row[i];
      y[t * w.rows + o] = static_cast<float>(s);
    }
  }
}

void MatmulQuantizedActivations(const float* x, int64_t num_tokens, const WeightMatrix& w,
                                float* y) {
  const int64_t nb = w.cols / 32;
  std::vector<BlockQ8Act> xq(nb);
  std::vector<float> row(w.cols), mins(nb, 0.0f);
  for (int64_t t = 0; t < num_tokens; ++t) {
    reference::QuantizeRowQ8Act(x + t * w.cols, xq.data(), w.cols);
    for (int64_t o = 0; o < w.rows; ++o) {
      // Q4_1 (x = d·q + m): the d·q part meets the 8-bit activations element by element,
      // the min meets them through the block's stored sum s, as Q8_1 defines it.
      reference::DequantizeRow(w.dtype, w.row(o), row.data(), w.cols);
      if (w.dtype == DType::kQ4_1) {
        const auto* u8 = reinterpret_cast<const uint8_t*>(w.row(o));
        for (int64_t b = 0; b < nb; ++b) {
          mins[b] = reference::HalfToFloat(static_cast<uint16_t>(u8[b * 20 + 2] | (u8[b * 20 + 3] << 8)));
        }
      }
      double s = 0;
      for (int64_t b = 0; b < nb; ++b) {
        for (int j = 0; j < 32; ++j) {
          s += (static_cast<double>(row[b * 32 + j]) - mins[b]) * xq[b].d * xq[b].q[j];
        }
        s += static_cast<double>(mins[b]) * xq[b].s;
      }
      y[t * w.rows + o] = static_cast<float>(s);
    }
  }
}

void RmsNorm(const float* x, const float* weight, float* y, int64_t num_tokens, int64_t n,
             float eps) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[t * n + i]) * x[t * n + i];
    const double inv = 1.0 / std::sqrt(ss / n + eps);
    for (int64_t i = 0; i < n; ++i) y[t * n + i] = static_cast<float>(x[t * n + i] * inv * weight[i]);
  }
}

void Rope(float* x, int64_t num_tokens, int64_t ld, const int64_t* positions,
          int64_t num_heads, int64_t head_dim, const std::vector<double>& inv_freq,
          bool interleaved) {
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t h = 0; h < num_heads; ++h) {
      float* v = x + t * ld + h * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const double a = positions[t] * inv_freq[i];
        const int64_t i0 = interleaved ? 2 * i : i;
        const int64_t i1 = interleaved ? 2 * i + 1 : i + half;
        const double x0 = v[i0], x1 = v[i1];
        v[i0] = static_cast<float>(x0 * std::cos(a) - x1 * std::sin(a));
        v[i1] = static_cast<float>(x0 * std::sin(a) + x1 * std::cos(a));
      }
    }
  }
}

void SiluMul(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

void Softmax(float* x, int64_t n) {
  double m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(x[i]));
  double sum = 0;
  std::vector<double> e(n);
  for (int64_t i = 0; i < n; ++i) sum += e[i] = std::exp(x[i] - m);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(e[i] / sum);
}

void PagedAttention(const PagedKvLayer& c, std::span<const AttentionSequence> seqs,
                    const float* q, int64_t ldq, int64_t num_heads, float scale, float* out,
                    int64_t ldo) {
  const int64_t d = c.head_dim;
  const int64_t group = num_heads / c.num_kv_heads;
  const bool half = c.dtype == DType::kF16;
  // Element `i` of key/value row `pos` of kv head g, decoded bit by bit for f16.
  auto at = [&](const void* base, std::span<const int32_t> table, int64_t pos, int64_t g, int64_t i) -> double {
    const int64_t off = c.Offset(table, pos) + g * d + i;
    if (half) return reference::HalfToFloat(static_cast<const uint16_t*>(base)[off]);
    return static_cast<const float*>(base)[off];
  };
  // The f16 cache's rounding points (q for q·k, the normalized probabilities for p·V);
  // everything else in double.
  auto round_half = [&](double x) -> double { return half ? RoundToHalf(static_cast<float>(x)) : x; };
  for (const AttentionSequence& s : seqs) {
    for (int64_t t = 0; t < s.num_tokens; ++t) {
      const int64_t pos = s.start_pos + t;
      for (int64_t h = 0; h < num_heads; ++h) {
        const float* qh = q + (s.first_row + t) * ldq + h * d;
        const int64_t g = h / group;
        std::vector<double> p(pos + 1);
        double m = -INFINITY;
        for (int64_t k = 0; k <= pos; ++k) {
          double dot = 0;
          for (int64_t i = 0; i < d; ++i) dot += round_half(qh[i]) * at(c.k, s.block_table, k, g, i);
          p[k] = dot * scale;
          m = std::max(m, p[k]);
        }
        double sum = 0;
        for (double& v : p) sum += v = std::exp(v - m);
        for (double& v : p) v = round_half(v / sum);
        float* o = out + (s.first_row + t) * ldo + h * d;
        for (int64_t i = 0; i < d; ++i) {
          double acc = 0;
          for (int64_t k = 0; k <= pos; ++k) acc += p[k] * at(c.v, s.block_table, k, g, i);
          o[i] = static_cast<float>(acc);
        }
      }
    }
  }
}

}  // namespace shoal::worker::cpu::reference
