#include "worker/kernels/cpu/attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

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

// One query row against keys [0, pos]: blockwise online softmax. acc holds the running
// sum of exp(s - m) * v, l the running sum of exp(s - m).
void AttendOne(const PagedKvLayer& c, std::span<const int32_t> block_table, const float* qh,
               int64_t kv_head, int64_t pos, float scale, float* out, float* scores) {
  const int64_t d = c.head_dim;
  float m = -INFINITY, l = 0.0f;
  std::fill(out, out + d, 0.0f);
  for (int64_t p0 = 0; p0 <= pos; p0 += c.block_size) {
    const int64_t n = std::min<int64_t>(c.block_size, pos + 1 - p0);
    const int64_t base = static_cast<int64_t>(block_table[p0 / c.block_size]) * c.block_size;
    const float* kb = c.k + (base * c.num_kv_heads + kv_head) * d;
    const float* vb = c.v + (base * c.num_kv_heads + kv_head) * d;
    const int64_t stride = c.slot_floats();
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

}  // namespace

void WriteKv(const PagedKvLayer& cache, const AttentionSequence& seq, const float* k,
             int64_t ldk, const float* v, int64_t ldv) {
  const size_t bytes = cache.slot_floats() * sizeof(float);
  for (int64_t t = 0; t < seq.num_tokens; ++t) {
    const int64_t off = cache.Offset(seq.block_table, seq.start_pos + t);
    std::memcpy(cache.k + off, k + (seq.first_row + t) * ldk, bytes);
    std::memcpy(cache.v + off, v + (seq.first_row + t) * ldv, bytes);
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
  pool->ParallelFor(std::min<int64_t>(pool->size(), n_items), [&](int64_t, int64_t) {
    std::vector<float> scores(cache.block_size);
    while (true) {
      const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= n_items) return;
      const WorkItem& w = items[i];
      const AttentionSequence& s = seqs[w.seq];
      for (int64_t t = w.t0; t < w.t1; ++t) {
        const int64_t row = s.first_row + t;
        AttendOne(cache, s.block_table, q + row * ldq + w.head * cache.head_dim,
                  w.head / group, s.start_pos + t, scale, out + row * ldo + w.head * cache.head_dim,
                  scores.data());
      }
    }
  });
}

}  // namespace shoal::worker::cpu
