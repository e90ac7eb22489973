#include "worker/kernels/cpu/attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "worker/kernels/cpu/quant.h"
#include "worker/kernels/cpu/simd.h"
#include "worker/kernels/cpu/thread_pool.h"

namespace shoal::worker::cpu {
namespace {

constexpr int64_t kQueryTile = 16;

struct WorkItem {
  int32_t seq;
  int32_t head;
  int64_t t0, t1;  // query tokens [t0, t1) of the sequence
};

// q · k_j for 8 keys `stride` floats apart (d a multiple of 8): eight accumulators
// reduced together by a tree of horizontal adds, instead of eight separate reductions.
inline __m256 Dot8Keys(const float* q, const float* k, int64_t stride, int64_t d) {
  __m256 acc[8];
  for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t i = 0; i < d; i += 8) {
    const __m256 qv = _mm256_loadu_ps(q + i);
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + j * stride + i), acc[j]);
  }
  // hadd(hadd(a,b), hadd(c,d)) leaves, per 128-bit lane, the partial sums of a..d; adding
  // the two lanes finishes them.
  const __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
  const __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31));
}

// out = out * correction + sum_j p[j] * v_j over the n value rows of a block. The output
// stays in registers across the block, 64 floats at a time, instead of being loaded and
// stored once per key.
void AccumulateValues(float* out, float correction, const float* vb, int64_t stride,
                      const float* p, int64_t n, int64_t d) {
  int64_t c = 0;
  for (; c + 64 <= d; c += 64) {
    __m256 acc[8];
    const __m256 corr = _mm256_set1_ps(correction);
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_mul_ps(_mm256_loadu_ps(out + c + 8 * i), corr);
    for (int64_t j = 0; j < n; ++j) {
      const __m256 pj = _mm256_set1_ps(p[j]);
      const float* v = vb + j * stride + c;
      for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 8 * i), acc[i]);
    }
    for (int i = 0; i < 8; ++i) _mm256_storeu_ps(out + c + 8 * i, acc[i]);
  }
  if (c < d) {
    for (int64_t i = c; i < d; ++i) out[i] *= correction;
    for (int64_t j = 0; j < n; ++j) ScaleAdd(out + c, 1.0f, vb + j * stride + c, p[j], d - c);
  }
}

// One query row against keys [0, pos] of an f32 cache: blockwise online softmax. acc
// holds the running sum of exp(s - m) * v, l the running sum of exp(s - m).
void AttendOne(const PagedKvLayer& c, std::span<const int32_t> block_table, const float* qh,
               int64_t kv_head, int64_t pos, float scale, float* out, float* scores) {
  const int64_t d = c.head_dim;
  float m = -INFINITY, l = 0.0f;
  std::fill(out, out + d, 0.0f);
  for (int64_t p0 = 0; p0 <= pos; p0 += c.block_size) {
    const int64_t n = std::min<int64_t>(c.block_size, pos + 1 - p0);
    const int64_t base = static_cast<int64_t>(block_table[p0 / c.block_size]) * c.block_size;
    const float* kb = static_cast<const float*>(c.k) + (base * c.num_kv_heads + kv_head) * d;
    const float* vb = static_cast<const float*>(c.v) + (base * c.num_kv_heads + kv_head) * d;
    const int64_t stride = c.slot_elements();
    int64_t j0 = 0;
    if (d % 8 == 0) {
      for (; j0 + 8 <= n; j0 += 8) {
        _mm256_storeu_ps(scores + j0, _mm256_mul_ps(Dot8Keys(qh, kb + j0 * stride, stride, d),
                                                   _mm256_set1_ps(scale)));
      }
    }
    for (; j0 < n; ++j0) scores[j0] = Dot(qh, kb + j0 * stride, d) * scale;
    float block_max = -INFINITY;
    for (int64_t j = 0; j < n; ++j) block_max = std::max(block_max, scores[j]);
    const float m_new = std::max(m, block_max);
    const float correction = std::exp(m - m_new);  // 0 on the first block (m = -inf)
    l *= correction;
    for (int64_t j = 0; j < n; ++j) scores[j] = scores[j] - m_new;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      _mm256_storeu_ps(scores + j, Exp8(_mm256_loadu_ps(scores + j)));
    }
    for (; j < n; ++j) scores[j] = std::exp(scores[j]);
    for (j = 0; j < n; ++j) l += scores[j];
    AccumulateValues(out, correction, vb, stride, scores, n, d);
    m = m_new;
  }
  const float inv = 1.0f / l;
  for (int64_t i = 0; i < d; ++i) out[i] *= inv;
}

// The sum of GGML's f16 dot product over its four 8-lane accumulators:
// ((a0 + a2) + (a1 + a3)), then lane i + lane i+4, then (l0 + l1) + (l2 + l3).
inline float ReduceFourAccumulators(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 x = _mm256_add_ps(_mm256_add_ps(a0, a2), _mm256_add_ps(a1, a3));
  const __m128 t0 = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  const __m128 t1 = _mm_hadd_ps(t0, t0);
  return _mm_cvtss_f32(_mm_hadd_ps(t1, t1));
}

// q · k for one f16 key, q already rounded to f16 (held as floats). Element i of each
// 32-element step goes to accumulator (i / 8) % 4, lane i % 8; a tail past the last whole
// step is added in double.
inline float DotHalfKey(const float* q, const uint16_t* k, int64_t d) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  const int64_t d32 = d & ~int64_t{31};
  for (int64_t i = 0; i < d32; i += 32) {
    for (int a = 0; a < 4; ++a) {
      const __m256 kv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(k + i + 8 * a)));
      acc[a] = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8 * a), kv, acc[a]);
    }
  }
  const float s = ReduceFourAccumulators(acc[0], acc[1], acc[2], acc[3]);
  if (d32 == d) return s;
  double sd = s;
  for (int64_t i = d32; i < d; ++i) sd += static_cast<double>(q[i] * HalfToFloat(k[i]));
  return static_cast<float>(sd);
}

// Scores of 8 f16 keys (rows k[0..7]) against q, each summed exactly as DotHalfKey sums
// it; d a multiple of 32. The per-key lane tree is taken for 8 keys at once: key j's
// "lane i + lane i+4" in the low half of t[j % 4] and key j+4's in the high half, then two
// rounds of hadd give ((l0 + l1) + (l2 + l3)) for all eight.
inline __m256 DotHalf8Keys(const float* q, const uint16_t* const* k, int64_t d) {
  __m256 x[8];
  for (int j = 0; j < 8; j += 2) {  // two keys share each load of q
    __m256 a[4], b[4];
    for (int u = 0; u < 4; ++u) a[u] = b[u] = _mm256_setzero_ps();
    for (int64_t i = 0; i < d; i += 32) {
      for (int u = 0; u < 4; ++u) {
        const __m256 qv = _mm256_loadu_ps(q + i + 8 * u);
        const __m256 ka = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(k[j] + i + 8 * u)));
        const __m256 kb = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(k[j + 1] + i + 8 * u)));
        a[u] = _mm256_fmadd_ps(qv, ka, a[u]);
        b[u] = _mm256_fmadd_ps(qv, kb, b[u]);
      }
    }
    x[j] = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]));
    x[j + 1] = _mm256_add_ps(_mm256_add_ps(b[0], b[2]), _mm256_add_ps(b[1], b[3]));
  }
  __m256 t[4];
  for (int j = 0; j < 4; ++j) {
    t[j] = _mm256_add_ps(_mm256_permute2f128_ps(x[j], x[j + 4], 0x20),
                         _mm256_permute2f128_ps(x[j], x[j + 4], 0x31));
  }
  return _mm256_hadd_ps(_mm256_hadd_ps(t[0], t[1]), _mm256_hadd_ps(t[2], t[3]));
}

// dst[0..n) = src rounded to f16, as floats.
inline void RoundRowToHalf(const float* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = RoundToHalf(src[i]);
}

// Per-thread buffers of the f16 path.
struct HalfScratch {
  std::vector<float> q;                 // [head_dim] the query row rounded to f16
  std::vector<float> p;                 // [context] scores, then probabilities
  std::vector<const uint16_t*> k_rows;  // [context] key j's row in the cache
  std::vector<const uint16_t*> v_rows;  // [context] value j's row in the cache
  std::vector<float> partial;           // [32, head_dim] partial sums of p·V, key j in row j % 32
};

// partial[c..c+W) = sum over keys j = r, r+32, ... < n of p[j] * v_j[c..c+W), added in key
// order, with the W = 8·kVecs running sums in registers. (p[j]·v is exact in f32 for f16
// operands, so only the order of the additions matters.)
template <int kVecs>
inline void AccumulateValueLane(const float* p, const uint16_t* const* v_rows, int64_t r, int64_t n,
                                int64_t c, float* partial) {
  __m256 acc[kVecs];
  for (int i = 0; i < kVecs; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t j = r; j < n; j += 32) {
    if (p[j] == 0.0f) continue;  // adds exactly nothing
    const __m256 pj = _mm256_set1_ps(p[j]);
    const uint16_t* v = v_rows[j] + c;
    for (int i = 0; i < kVecs; ++i) {
      const __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + 8 * i)));
      acc[i] = _mm256_fmadd_ps(pj, vv, acc[i]);
    }
  }
  for (int i = 0; i < kVecs; ++i) _mm256_storeu_ps(partial + c + 8 * i, acc[i]);
}

// One query row against keys [0, pos] of an f16 cache (see PagedAttention in the header).
void AttendOneHalf(const PagedKvLayer& c, std::span<const int32_t> block_table, const float* qh,
                   int64_t kv_head, int64_t pos, float scale, float* out, HalfScratch& w) {
  const int64_t d = c.head_dim, n = pos + 1;
  const uint16_t* kc = static_cast<const uint16_t*>(c.k);
  const uint16_t* vc = static_cast<const uint16_t*>(c.v);
  float* q = w.q.data();
  float* p = w.p.data();
  const uint16_t** k_rows = w.k_rows.data();
  const uint16_t** v_rows = w.v_rows.data();
  RoundRowToHalf(qh, q, d);
  const int64_t stride = c.slot_elements();
  for (int64_t p0 = 0, b = 0; p0 < n; p0 += c.block_size, ++b) {
    const int64_t off = static_cast<int64_t>(block_table[b]) * c.block_size * stride + kv_head * d;
    const int64_t len = std::min<int64_t>(c.block_size, n - p0);
    for (int64_t jj = 0; jj < len; ++jj) {
      k_rows[p0 + jj] = kc + off + jj * stride;
      v_rows[p0 + jj] = vc + off + jj * stride;
    }
  }

  // Scores, 8 keys at a time where the head size allows.
  int64_t j = 0;
  const __m256 vscale = _mm256_set1_ps(scale);
  if (d % 32 == 0) {
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(p + j, _mm256_mul_ps(DotHalf8Keys(q, k_rows + j, d), vscale));
  }
  for (; j < n; ++j) p[j] = DotHalfKey(q, k_rows[j], d) * scale;
  float m = -INFINITY;
  for (j = 0; j < n; ++j) m = std::max(m, p[j]);

  // exp(s - m), summed 8 keys at a time: each group's f32 sum (a fixed tree) is added in
  // double; a last partial group counts its missing keys as zeros.
  double sum = 0.0;
  const __m256 vm = _mm256_set1_ps(m);
  for (j = 0; j + 8 <= n; j += 8) {
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(p + j), vm));
    _mm256_storeu_ps(p + j, e);
    sum += HorizontalSum8(e);
  }
  if (j < n) {
    alignas(32) float tail[8];
    for (int i = 0; i < 8; ++i) tail[i] = j + i < n ? p[j + i] - m : 0.0f;
    _mm256_store_ps(tail, Exp8(_mm256_load_ps(tail)));
    for (int i = 0; i < 8; ++i) tail[i] = j + i < n ? tail[i] : 0.0f;
    for (int64_t i = j; i < n; ++i) p[i] = tail[i - j];
    sum += HorizontalSum8(_mm256_load_ps(tail));
  }
  // Normalized probabilities, rounded to f16.
  const __m256 inv = _mm256_set1_ps(static_cast<float>(1.0 / sum));
  for (j = 0; j + 8 <= n; j += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(p + j), inv), _MM_FROUND_TO_NEAREST_INT);
    _mm256_storeu_ps(p + j, _mm256_cvtph_ps(h));
  }
  for (; j < n; ++j) p[j] = RoundToHalf(p[j] * _mm256_cvtss_f32(inv));

  // p·V: key j goes into partial row j % 32 (the lane GGML's f16 dot gives it). Each row
  // sums its keys in key order in registers, 64 output elements at a time.
  float* partial = w.partial.data();
  for (int64_t r = 0; r < 32; ++r) {
    float* row = partial + r * d;
    int64_t i = 0;
    for (; i + 64 <= d; i += 64) AccumulateValueLane<8>(p, v_rows, r, n, i, row);
    for (; i + 8 <= d; i += 8) AccumulateValueLane<1>(p, v_rows, r, n, i, row);
    for (; i < d; ++i) {
      float acc = 0.0f;
      for (int64_t jj = r; jj < n; jj += 32) acc = std::fma(p[jj], HalfToFloat(v_rows[jj][i]), acc);
      row[i] = acc;
    }
  }
  // Per output element: lane l of accumulator a is row 8a + l; reduced as GGML reduces.
  auto row = [&](int r, int64_t i) { return _mm256_loadu_ps(partial + r * d + i); };
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) {
    __m256 s[8];
    for (int l = 0; l < 8; ++l) {
      s[l] = _mm256_add_ps(_mm256_add_ps(row(l, i), row(16 + l, i)), _mm256_add_ps(row(8 + l, i), row(24 + l, i)));
    }
    const __m256 t0 = _mm256_add_ps(s[0], s[4]), t1 = _mm256_add_ps(s[1], s[5]);
    const __m256 t2 = _mm256_add_ps(s[2], s[6]), t3 = _mm256_add_ps(s[3], s[7]);
    _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_add_ps(t0, t1), _mm256_add_ps(t2, t3)));
  }
  for (; i < d; ++i) {
    float s[8];
    for (int l = 0; l < 8; ++l) {
      const float* r = partial + l * d + i;
      s[l] = (r[0] + r[16 * d]) + (r[8 * d] + r[24 * d]);
    }
    out[i] = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
  }
}

}  // namespace

void WriteKv(const PagedKvLayer& cache, const AttentionSequence& seq, const float* k,
             int64_t ldk, const float* v, int64_t ldv) {
  const int64_t n = cache.slot_elements();
  for (int64_t t = 0; t < seq.num_tokens; ++t) {
    const int64_t off = cache.Offset(seq.block_table, seq.start_pos + t);
    const float* kr = k + (seq.first_row + t) * ldk;
    const float* vr = v + (seq.first_row + t) * ldv;
    if (cache.dtype == DType::kF32) {
      std::memcpy(static_cast<float*>(cache.k) + off, kr, n * sizeof(float));
      std::memcpy(static_cast<float*>(cache.v) + off, vr, n * sizeof(float));
    } else {
      StoreHalfRow(kr, static_cast<uint16_t*>(cache.k) + off, n);
      StoreHalfRow(vr, static_cast<uint16_t*>(cache.v) + off, n);
    }
  }
}

void PagedAttention(ThreadPool* pool, const PagedKvLayer& cache,
                    std::span<const AttentionSequence> seqs, const float* q, int64_t ldq,
                    int64_t num_heads, float scale, float* out, int64_t ldo) {
  const int64_t group = num_heads / cache.num_kv_heads;
  std::vector<WorkItem> items;
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int64_t h = 0; h < num_heads; ++h) {
      for (int64_t t = 0; t < seqs[s].num_tokens; t += kQueryTile) {
        items.push_back({static_cast<int32_t>(s), static_cast<int32_t>(h), t,
                         std::min(t + kQueryTile, seqs[s].num_tokens)});
      }
    }
  }
  // Later query tiles see more keys: hand out the most expensive first.
  std::stable_sort(items.begin(), items.end(), [&](const WorkItem& a, const WorkItem& b) {
    return seqs[a.seq].start_pos + a.t1 > seqs[b.seq].start_pos + b.t1;
  });
  std::atomic<int64_t> next{0};
  const int64_t n_items = static_cast<int64_t>(items.size());
  int64_t max_context = 0;
  for (const AttentionSequence& s : seqs) max_context = std::max(max_context, s.start_pos + s.num_tokens);
  const bool half = cache.dtype == DType::kF16;
  pool->ParallelFor(std::min<int64_t>(pool->size(), n_items), [&](int64_t, int64_t) {
    std::vector<float> scores;
    HalfScratch scratch;
    if (half) {
      scratch.q.resize(cache.head_dim);
      scratch.p.resize(max_context);
      scratch.k_rows.resize(max_context);
      scratch.v_rows.resize(max_context);
      scratch.partial.resize(32 * cache.head_dim);
    } else {
      scores.resize(cache.block_size);
    }
    while (true) {
      const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= n_items) return;
      const WorkItem& w = items[i];
      const AttentionSequence& s = seqs[w.seq];
      for (int64_t t = w.t0; t < w.t1; ++t) {
        const int64_t row = s.first_row + t;
        const float* qh = q + row * ldq + w.head * cache.head_dim;
        float* oh = out + row * ldo + w.head * cache.head_dim;
        if (half) {
          AttendOneHalf(cache, s.block_table, qh, w.head / group, s.start_pos + t, scale, oh, scratch);
        } else {
          AttendOne(cache, s.block_table, qh, w.head / group, s.start_pos + t, scale, oh, scores.data());
        }
      }
    }
  });
}

}  // namespace shoal::worker::cpu
