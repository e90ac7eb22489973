#pragma once
// Causal attention over a paged KV cache.
#include <cstdint>
#include <span>

namespace shoal::worker {
class ThreadPool;
}

namespace shoal::worker::cpu {

// One layer's K and V caches, each [num_blocks, block_size, num_kv_heads, head_dim] f32.
struct PagedKvLayer {
  float* k = nullptr;
  float* v = nullptr;
  int64_t num_blocks = 0;
  int block_size = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;

  int64_t slot_floats() const { return num_kv_heads * head_dim; }
  // Position `pos` of a sequence with `block_table`, as an offset in floats into k / v.
  int64_t Offset(std::span<const int32_t> block_table, int64_t pos) const {
    return (static_cast<int64_t>(block_table[pos / block_size]) * block_size + pos % block_size) *
           slot_floats();
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
// new tokens at their positions.
void WriteKv(const PagedKvLayer& cache, const AttentionSequence& seq, const float* k,
             int64_t ldk, const float* v, int64_t ldv);

// out[row, h*head_dim..] = softmax(q_h · K_g^T * scale) · V_g for every query row, where
// g = h / (num_heads / num_kv_heads) (grouped-query attention). Keys are visited a KV
// block at a time with a running max and sum (online softmax), so no score buffer grows
// with the context. Work is split over (sequence, head, query tile).
void PagedAttention(ThreadPool* pool, const PagedKvLayer& cache,
                    std::span<const AttentionSequence> seqs, const float* q, int64_t ldq,
                    int64_t num_heads, float scale, float* out, int64_t ldo);

}  // namespace shoal::worker::cpu
