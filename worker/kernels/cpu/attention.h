#pragma once
// Causal attention over a paged KV cache.
#include <cstdint>
#include <span>

#include "worker/model/dtype.h"

namespace shoal::worker {
class ThreadPool;
}

namespace shoal::worker::cpu {

// One layer's K and V caches, each [num_blocks, block_size, num_kv_heads, head_dim] of
// `dtype`: kF32, or kF16 (half the memory; llama.cpp's default cache type).
struct PagedKvLayer {
  void* k = nullptr;
  void* v = nullptr;
  int64_t num_blocks = 0;
  int block_size = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  DType dtype = DType::kF32;

  int64_t slot_elements() const { return num_kv_heads * head_dim; }
  // Position `pos` of a sequence with `block_table`, as an offset in elements into k / v.
  int64_t Offset(std::span<const int32_t> block_table, int64_t pos) const {
    return (static_cast<int64_t>(block_table[pos / block_size]) * block_size + pos % block_size) *
           slot_elements();
  }
};

// The query rows of one sequence in a step: rows [first_row, first_row + num_tokens) of q
// sit at positions start_pos.. and see keys at positions 0..their own.
struct AttentionSequence {
  int64_t first_row = 0;
  int64_t num_tokens = 0;
  int64_t start_pos = 0;
  std::span<const int32_t> block_table;
};

// Stores k/v rows (each [num_kv_heads * head_dim], row strides ldk/ldv) of the sequence's
// new tokens at their positions, rounded to f16 (nearest even) for an f16 cache.
void WriteKv(const PagedKvLayer& cache, const AttentionSequence& seq, const float* k,
             int64_t ldk, const float* v, int64_t ldv);

// out[row, h*head_dim..] = softmax(q_h · K_g^T * scale) · V_g for every query row, where
// g = h / (num_heads / num_kv_heads) (grouped-query attention). Work is split over
// (sequence, head, query tile).
//
// f32 cache: keys are visited a KV block at a time with a running max and sum (online
// softmax), all in f32.
// f16 cache: both products take f16 operands with f32 sums, as llama.cpp computes
// attention on the CPU (without flash attention): q is rounded to f16 for q·k, the
// softmax is taken over all of a row's scores, and the normalized probabilities are
// rounded to f16 for p·V. The sums run in the order of GGML's f16 dot product (4×8 lanes
// over 32-element steps, then a fixed reduction tree); f16×f16 products are exact in
// f32, so with the same rounding points and order the results are llama.cpp's numbers.
// Scores of one query row are held in a buffer of the row's context length.
void PagedAttention(ThreadPool* pool, const PagedKvLayer& cache,
                    std::span<const AttentionSequence> seqs, const float* q, int64_t ldq,
                    int64_t num_heads, float scale, float* out, int64_t ldo);

}  // namespace shoal::worker::cpu
