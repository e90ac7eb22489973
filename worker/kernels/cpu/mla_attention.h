#pragma once
// Multi-head latent attention (DeepSeek-V2/V3 MLA) over a paged cache that keeps, per
// token, only the compressed latent c (kv_lora_rank) and the shared rotary key k_pe
// (qk_rope_head_dim) — not per-head keys and values. Per head h, with kv_b_proj split
// into W_uk[h] (keys) and W_uv[h] (values):
//   score(t) = scale * (q_nope[h] · W_uk[h] c_t + q_pe[h] · k_pe_t)
//   out[h]   = sum_t softmax(score)_t  W_uv[h] c_t
// Two ways to compute it:
//   absorbed  (MlaLatentAttention): q_nope is taken into latent space first,
//             q_lat = W_uk[h]^T q_nope, so scores are dot products with the cached
//             entries [c, k_pe] directly and the output is a latent, W_uv[h] applied after
//             the sum. Cost per query: independent of materializing anything — decode.
//   expanded  (MlaExpandedAttention): k_nope and v are materialized for every cached
//             position (kv = c · kv_b^T) and attention runs as usual — prompt chunks,
//             where the materialization is shared by many queries.
#include <cstdint>
#include <span>
#include <vector>

#include "worker/kernels/cpu/attention.h"
#include "worker/model/dtype.h"

namespace shoal::worker {
class ThreadPool;
}

namespace shoal::worker::cpu {

// One layer's latent cache, [num_blocks, block_size, latent_dim + rope_dim] of `dtype`
// (kF32 or kF16). Each entry is [c (latent_dim), k_pe (rope_dim)].
struct PagedLatentLayer {
  void* data = nullptr;
  int64_t num_blocks = 0;
  int block_size = 0;
  int64_t latent_dim = 0;
  int64_t rope_dim = 0;
  DType dtype = DType::kF32;

  int64_t entry_elements() const { return latent_dim + rope_dim; }
  int64_t Offset(std::span<const int32_t> block_table, int64_t pos) const {
    return (static_cast<int64_t>(block_table[pos / block_size]) * block_size + pos % block_size) *
           entry_elements();
  }
};

// Stores the entries [c, k_pe] (rows of entry_elements() floats, row stride ld) of the
// sequence's new tokens at their positions (rounded to f16, nearest even, for f16).
void WriteLatents(const PagedLatentLayer& cache, const AttentionSequence& seq, const float* entries,
                  int64_t ld);

// out[p] = entry at position p of the sequence, as f32, for p in [0, num_positions).
void ReadLatents(const PagedLatentLayer& cache, std::span<const int32_t> block_table,
                 int64_t num_positions, float* out, int64_t ldo);

// kv_b_proj ([heads * (nope + v_dim), rank], per head nope rows of W_uk then v_dim rows
// of W_uv) rearranged for the absorbed form: W_uk^T per head [rank, nope] and W_uv per
// head [v_dim, rank], kept in BF16 when the checkpoint's kv_b_proj is BF16 (exact, half
// the bytes read per decode step) and in F32 otherwise (exact for F32/F16/FP8 sources).
class MlaAbsorbedWeights {
 public:
  MlaAbsorbedWeights() = default;
  // kv_b: the dequantized f32 kv_b_proj; dtype: kBF16 or kF32.
  MlaAbsorbedWeights(const float* kv_b, int64_t heads, int64_t rank, int64_t nope, int64_t v_dim, DType dtype);
  int64_t heads() const { return heads_; }
  int64_t rank() const { return rank_; }
  int64_t nope() const { return nope_; }
  int64_t v_dim() const { return v_dim_; }
  DType dtype() const { return dtype_; }
  size_t bytes() const { return f32_.size() * 4 + bf16_.size() * 2; }
  // Row `row` of head h's W_uk^T (rank rows of nope) or W_uv (v_dim rows of rank) · x.
  float DotUkT(int64_t h, int64_t row, const float* x) const;
  float DotUv(int64_t h, int64_t row, const float* x) const;

 private:
  int64_t heads_ = 0, rank_ = 0, nope_ = 0, v_dim_ = 0;
  DType dtype_ = DType::kF32;
  std::vector<float> f32_;      // [W_uk^T of every head, then W_uv of every head]
  std::vector<uint16_t> bf16_;  // the same, BF16
};

// q_nope into latent space: for each row t of `seqs` and head h, out[t, h] =
// [W_uk[h]^T q_nope[t, h] (rank), q_pe[t, h] (rope_dim)], the layout MlaLatentAttention
// takes. q rows: heads x [q_nope (nope), q_pe (rope_dim)]. Heads split over threads, each
// weight row serving every token.
void MlaAbsorbQueries(ThreadPool* pool, const MlaAbsorbedWeights& w, std::span<const AttentionSequence> seqs,
                      const float* q, int64_t ldq, int64_t rope_dim, float* out, int64_t ldo);

// Latent outputs to values: out[t, h] = W_uv[h] o_lat[t, h] (v_dim per head).
void MlaLatentToValues(ThreadPool* pool, const MlaAbsorbedWeights& w, std::span<const AttentionSequence> seqs,
                       const float* o_lat, int64_t ld_lat, float* out, int64_t ldo);

// Absorbed attention. q: per row, num_heads vectors of entry_elements() floats
// [q_lat (latent_dim), q_pe (rope_dim)] (row stride ldq). out: per row, num_heads
// latents of latent_dim (row stride ldo): sum_t softmax_t(scale * q · entry_t) c_t over
// the positions each row sees (causal). Online softmax in f32 over position tiles; work
// split over (sequence, query rows, head block).
void MlaLatentAttention(ThreadPool* pool, const PagedLatentLayer& cache,
                        std::span<const AttentionSequence> seqs, const float* q, int64_t ldq,
                        int64_t num_heads, float scale, float* out, int64_t ldo);

// Expanded attention for one sequence. q: rows of num_heads vectors [q_nope (nope_dim),
// q_pe (rope_dim)]; kv: for each of the seq's context positions (start_pos + num_tokens
// of them), num_heads vectors [k_nope (nope_dim), v (v_dim)] (row stride ldkv);
// k_pe: per position, rope_dim floats (row stride ldk_pe). out: rows of num_heads
// vectors of v_dim. Rows of q and out are relative to seq.first_row.
struct MlaExpandedShape {
  int64_t num_heads = 0;
  int64_t nope_dim = 0;
  int64_t rope_dim = 0;
  int64_t v_dim = 0;
};
void MlaExpandedAttention(ThreadPool* pool, const AttentionSequence& seq, const MlaExpandedShape& shape,
                          const float* q, int64_t ldq, const float* kv, int64_t ldkv,
                          const float* k_pe, int64_t ldk_pe, float scale, float* out, int64_t ldo);

}  // namespace shoal::worker::cpu
