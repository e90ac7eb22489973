#include "worker/kernels/cpu/mla_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "worker/kernels/cpu/quant.h"
#include "worker/kernels/cpu/simd.h"
#include "worker/kernels/cpu/thread_pool.h"

namespace shoal::worker::cpu {
namespace {

constexpr int64_t kTile = 32;       // positions per online-softmax step
constexpr int64_t kRowChunk = 16;   // query rows per work item
constexpr int64_t kHeadBlock = 4;   // heads per work item (they share the tile's conversion)

// y += a * x
void Axpy(float* y, float a, const float* x, int64_t n) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += a * x[i];
}

void Scale(float* y, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= a;
}

// Entries [p0, p1) of a sequence as f32 rows of entry_elements(): in place for an f32
// cache (when a tile does not cross a block), converted into `buf` otherwise.
const float* TileEntries(const PagedLatentLayer& cache, std::span<const int32_t> table, int64_t p0,
                         int64_t p1, std::vector<float>& buf) {
  const int64_t e = cache.entry_elements();
  if (cache.dtype == DType::kF32 && p0 / cache.block_size == (p1 - 1) / cache.block_size) {
    return static_cast<const float*>(cache.data) + cache.Offset(table, p0);
  }
  buf.resize((p1 - p0) * e);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t off = cache.Offset(table, p);
    float* dst = buf.data() + (p - p0) * e;
    if (cache.dtype == DType::kF32) {
      std::copy_n(static_cast<const float*>(cache.data) + off, e, dst);
    } else {
      DequantizeRow(DType::kF16, reinterpret_cast<const std::byte*>(static_cast<const uint16_t*>(cache.data) + off),
                    dst, e);
    }
  }
  return buf.data();
}

// bf16 row · f32 x: bf16 widens to f32 exactly by a 16-bit shift.
float DotBf16(const uint16_t* w, const float* x, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  auto load = [](const uint16_t* p) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
  };
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(load(w + i), _mm256_loadu_ps(x + i), acc0);
    acc1 = _mm256_fmadd_ps(load(w + i + 8), _mm256_loadu_ps(x + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(load(w + i), _mm256_loadu_ps(x + i), acc0);
  float s = HorizontalSum8(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) s += Bf16ToFloat(w[i]) * x[i];
  return s;
}

}  // namespace

MlaAbsorbedWeights::MlaAbsorbedWeights(const float* kv_b, int64_t heads, int64_t rank, int64_t nope, int64_t v_dim,
                                       DType dtype)
    : heads_(heads), rank_(rank), nope_(nope), v_dim_(v_dim), dtype_(dtype) {
  std::vector<float> all(heads * (rank * nope + v_dim * rank));
  float* uk_t = all.data();
  float* uv = all.data() + heads * rank * nope;
  for (int64_t h = 0; h < heads; ++h) {
    const float* rows = kv_b + h * (nope + v_dim) * rank;
    for (int64_t i = 0; i < nope; ++i) {
      for (int64_t j = 0; j < rank; ++j) uk_t[(h * rank + j) * nope + i] = rows[i * rank + j];
    }
    std::copy_n(rows + nope * rank, v_dim * rank, uv + h * v_dim * rank);
  }
  if (dtype == DType::kBF16) {
    // The values came from BF16, so truncating the f32 bits is exact.
    bf16_.resize(all.size());
    for (size_t i = 0; i < all.size(); ++i) {
      uint32_t u;
      std::memcpy(&u, &all[i], 4);
      bf16_[i] = static_cast<uint16_t>(u >> 16);
    }
  } else {
    f32_ = std::move(all);
  }
}

float MlaAbsorbedWeights::DotUkT(int64_t h, int64_t row, const float* x) const {
  const int64_t off = (h * rank_ + row) * nope_;
  return dtype_ == DType::kBF16 ? DotBf16(bf16_.data() + off, x, nope_) : Dot(f32_.data() + off, x, nope_);
}

float MlaAbsorbedWeights::DotUv(int64_t h, int64_t row, const float* x) const {
  const int64_t off = heads_ * rank_ * nope_ + (h * v_dim_ + row) * rank_;
  return dtype_ == DType::kBF16 ? DotBf16(bf16_.data() + off, x, rank_) : Dot(f32_.data() + off, x, rank_);
}

void MlaAbsorbQueries(ThreadPool* pool, const MlaAbsorbedWeights& w, std::span<const AttentionSequence> seqs,
                      const float* q, int64_t ldq, int64_t rope_dim, float* out, int64_t ldo) {
  const int64_t qk = w.nope() + rope_dim, e = w.rank() + rope_dim;
  pool->ParallelFor(w.heads(), [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      for (int64_t j = 0; j < w.rank(); ++j) {
        for (const AttentionSequence& s : seqs) {
          for (int64_t t = s.first_row; t < s.first_row + s.num_tokens; ++t) {
            out[t * ldo + h * e + j] = w.DotUkT(h, j, q + t * ldq + h * qk);
          }
        }
      }
      for (const AttentionSequence& s : seqs) {
        for (int64_t t = s.first_row; t < s.first_row + s.num_tokens; ++t) {
          std::copy_n(q + t * ldq + h * qk + w.nope(), rope_dim, out + t * ldo + h * e + w.rank());
        }
      }
    }
  });
}

void MlaLatentToValues(ThreadPool* pool, const MlaAbsorbedWeights& w, std::span<const AttentionSequence> seqs,
                       const float* o_lat, int64_t ld_lat, float* out, int64_t ldo) {
  pool->ParallelFor(w.heads(), [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      for (int64_t k = 0; k < w.v_dim(); ++k) {
        for (const AttentionSequence& s : seqs) {
          for (int64_t t = s.first_row; t < s.first_row + s.num_tokens; ++t) {
            out[t * ldo + h * w.v_dim() + k] = w.DotUv(h, k, o_lat + t * ld_lat + h * w.rank());
          }
        }
      }
    }
  });
}

void WriteLatents(const PagedLatentLayer& cache, const AttentionSequence& seq, const float* entries,
                  int64_t ld) {
  const int64_t e = cache.entry_elements();
  for (int64_t t = 0; t < seq.num_tokens; ++t) {
    const int64_t off = cache.Offset(seq.block_table, seq.start_pos + t);
    const float* src = entries + (seq.first_row + t) * ld;
    if (cache.dtype == DType::kF32) {
      std::copy_n(src, e, static_cast<float*>(cache.data) + off);
    } else {
      StoreHalfRow(src, static_cast<uint16_t*>(cache.data) + off, e);
    }
  }
}

void ReadLatents(const PagedLatentLayer& cache, std::span<const int32_t> block_table,
                 int64_t num_positions, float* out, int64_t ldo) {
  const int64_t e = cache.entry_elements();
  for (int64_t p = 0; p < num_positions; ++p) {
    const int64_t off = cache.Offset(block_table, p);
    if (cache.dtype == DType::kF32) {
      std::copy_n(static_cast<const float*>(cache.data) + off, e, out + p * ldo);
    } else {
      DequantizeRow(DType::kF16, reinterpret_cast<const std::byte*>(static_cast<const uint16_t*>(cache.data) + off),
                    out + p * ldo, e);
    }
  }
}

void MlaLatentAttention(ThreadPool* pool, const PagedLatentLayer& cache,
                        std::span<const AttentionSequence> seqs, const float* q, int64_t ldq,
                        int64_t num_heads, float scale, float* out, int64_t ldo) {
  const int64_t e = cache.entry_elements(), r = cache.latent_dim;
  struct Item {
    int64_t seq, row0, row1, head0, head1;
  };
  std::vector<Item> items;
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int64_t r0 = 0; r0 < seqs[s].num_tokens; r0 += kRowChunk) {
      for (int64_t h0 = 0; h0 < num_heads; h0 += kHeadBlock) {
        items.push_back({static_cast<int64_t>(s), r0, std::min(r0 + kRowChunk, seqs[s].num_tokens), h0,
                         std::min(h0 + kHeadBlock, num_heads)});
      }
    }
  }
  // Tiles stay inside one block (so an f32 cache is read in place) when the block size
  // is a multiple of kTile or smaller than it; other sizes are copied tile by tile.
  const int64_t step = cache.block_size % kTile == 0 ? kTile : std::min<int64_t>(kTile, cache.block_size);
  pool->ParallelFor(static_cast<int64_t>(items.size()), [&](int64_t begin, int64_t end) {
    std::vector<float> buf, scores(kTile), acc, max, sum;
    for (int64_t it = begin; it < end; ++it) {
      const Item& w = items[it];
      const AttentionSequence& seq = seqs[w.seq];
      const int64_t rows = w.row1 - w.row0, heads = w.head1 - w.head0;
      // Online softmax state per (row, head): running max, running sum, output latent.
      acc.assign(rows * heads * r, 0.0f);
      max.assign(rows * heads, -std::numeric_limits<float>::infinity());
      sum.assign(rows * heads, 0.0f);
      const int64_t visible_end = seq.start_pos + w.row1;  // the last row sees [0, this)
      for (int64_t p0 = 0; p0 < visible_end; p0 += step) {
        const int64_t p1 = std::min(p0 + step, visible_end);
        const float* tile = TileEntries(cache, seq.block_table, p0, p1, buf);
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t row_end = std::min(p1, seq.start_pos + w.row0 + i + 1);  // causal
          if (row_end <= p0) continue;
          const int64_t n = row_end - p0;
          const float* qrow = q + (seq.first_row + w.row0 + i) * ldq;
          for (int64_t hh = 0; hh < heads; ++hh) {
            const float* qh = qrow + (w.head0 + hh) * e;
            float tile_max = -std::numeric_limits<float>::infinity();
            for (int64_t j = 0; j < n; ++j) {
              scores[j] = Dot(qh, tile + j * e, e) * scale;
              tile_max = std::max(tile_max, scores[j]);
            }
            const int64_t k = i * heads + hh;
            float* a = acc.data() + k * r;
            const float new_max = std::max(max[k], tile_max);
            if (new_max > max[k]) {
              const float alpha = std::exp(max[k] - new_max);  // 0 on the first tile
              sum[k] *= alpha;
              Scale(a, alpha, r);
              max[k] = new_max;
            }
            for (int64_t j = 0; j < n; ++j) {
              const float p = std::exp(scores[j] - new_max);
              sum[k] += p;
              Axpy(a, p, tile + j * e, r);
            }
          }
        }
      }
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t hh = 0; hh < heads; ++hh) {
          const int64_t k = i * heads + hh;
          float* o = out + (seq.first_row + w.row0 + i) * ldo + (w.head0 + hh) * r;
          const float inv = 1.0f / sum[k];
          for (int64_t j = 0; j < r; ++j) o[j] = acc[k * r + j] * inv;
        }
      }
    }
  });
}

void MlaExpandedAttention(ThreadPool* pool, const AttentionSequence& seq, const MlaExpandedShape& sh,
                          const float* q, int64_t ldq, const float* kv, int64_t ldkv,
                          const float* k_pe, int64_t ldk_pe, float scale, float* out, int64_t ldo) {
  const int64_t qk = sh.nope_dim + sh.rope_dim, kvw = sh.nope_dim + sh.v_dim;
  const int64_t work = seq.num_tokens * sh.num_heads;
  pool->ParallelFor(work, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(seq.start_pos + seq.num_tokens);
    for (int64_t w = begin; w < end; ++w) {
      const int64_t t = w / sh.num_heads, h = w % sh.num_heads;
      const float* qh = q + t * ldq + h * qk;
      const int64_t n = seq.start_pos + t + 1;  // causal: positions [0, n)
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t p = 0; p < n; ++p) {
        const float s = (Dot(qh, kv + p * ldkv + h * kvw, sh.nope_dim) +
                         Dot(qh + sh.nope_dim, k_pe + p * ldk_pe, sh.rope_dim)) * scale;
        scores[p] = s;
        m = std::max(m, s);
      }
      float sum = 0;
      for (int64_t p = 0; p < n; ++p) {
        scores[p] = std::exp(scores[p] - m);
        sum += scores[p];
      }
      float* o = out + t * ldo + h * sh.v_dim;
      std::fill_n(o, sh.v_dim, 0.0f);
      for (int64_t p = 0; p < n; ++p) Axpy(o, scores[p], kv + p * ldkv + h * kvw + sh.nope_dim, sh.v_dim);
      Scale(o, 1.0f / sum, sh.v_dim);
    }
  });
}

}  // namespace shoal::worker::cpu
