#pragma once
// Causal attention over a paged KV cache on the GPU, in the CPU kernels' layout: each
// layer's K and V are [num_blocks, block_size, num_kv_heads, head_dim] of f32, f16 or
// bf16, addressed through per-sequence block tables. The step's query rows are described
// row by row (which sequence, which position), so one launch serves prompt chunks and
// decode rows of many sequences alike.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "worker/kernels/cuda/launch_types.h"
#include "worker/model/dtype.h"

namespace shoal::worker::cuda {

struct DeviceKvLayer {
  void* k = nullptr;
  void* v = nullptr;
  int64_t num_blocks = 0;
  int block_size = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // at most kMaxHeadDim
  DType dtype = DType::kF32;
};

constexpr int64_t kMaxHeadDim = 256;

// The step's rows, device arrays of num_rows entries: row r belongs to sequence
// row_seq[r] and sits at position row_pos[r]; sequence s's block table is
// block_tables[s * max_blocks_per_seq ...].
struct DeviceRows {
  const int32_t* row_seq = nullptr;
  const int64_t* row_pos = nullptr;
  const int32_t* block_tables = nullptr;
  int64_t max_blocks_per_seq = 0;
  int64_t num_rows = 0;
  // Attention only: when set, the launch serves rows row_ids[0 .. num_rows) of the step
  // (the rows PagedAttentionTiled does not take); row_seq/row_pos stay indexed by row.
  const int32_t* row_ids = nullptr;
};

// One layer's MLA latent cache, [num_blocks, block_size, latent_dim + rope_dim] of f32,
// f16 or bf16 (the CPU's PagedLatentLayer): per token the compressed latent c and the
// rotary key k_pe shared by every head.
struct DeviceLatentLayer {
  void* data = nullptr;
  int64_t num_blocks = 0;
  int block_size = 0;
  int64_t latent_dim = 0;
  int64_t rope_dim = 0;
  DType dtype = DType::kF32;
  int64_t entry() const { return latent_dim + rope_dim; }
};

// DeepSeek-V2/V3's entry: kv_lora_rank 512 + qk_rope_head_dim 64.
constexpr int64_t kMaxLatentEntry = 576;

// Split-K: each (row, head)'s positions divided over `splits` blocks, whose partial
// softmaxes a second kernel merges, so a long context at a small batch still spreads over
// the GPU (flash-decoding). partials: device scratch of AttentionPartialFloats floats;
// with splits == 1 or no scratch, one pass over the positions per (row, head block).
struct AttentionSplit {
  int splits = 1;
  float* partials = nullptr;
};

// How many splits a step wants: 1 when its blocks (rows x KV heads x blocks of up to 8 of
// a KV head's query heads) already fill the GPU, else about one per 32 positions of the
// longest row (max_positions), rounded up to a power of two, at most 64 and 512 blocks in
// all. MLA: one KV head.
int AttentionSplits(int64_t num_rows, int64_t num_heads, int64_t num_kv_heads, int64_t max_positions);
// Scratch floats for `splits` (0 for 1): per (row, head, split), max, sum and v_dim outputs.
size_t AttentionPartialFloats(int64_t num_rows, int64_t num_heads, int splits, int64_t v_dim);

// Stores each row's k and v ([num_kv_heads * head_dim] f32, row strides ldk/ldv) in its
// position's cache slot, rounded to the cache's type.
void WriteKv(cudaStream_t stream, const DeviceKvLayer& cache, const DeviceRows& rows, const float* k, int64_t ldk,
             const float* v, int64_t ldv);

// The step of a llama block between its q/k/v GEMM and attention, in one launch where it
// was four (AddBias, ApplyRope on q, on k, WriteKv): qkv f32 [num_rows, ld] holds per row
// num_heads query heads, then the cache's num_kv_heads key heads, then as many value
// heads, head_dim each. Adds bias (f32, one per element of those heads; null: none) to
// every element, rotates the first rotary_dim dimensions of each query and key head by
// its row's position (rows.row_pos; ApplyRope's tables and pairing, same arithmetic),
// writes the queries back in place and stores keys and values in their cache slots as
// WriteKv does. The keys and values in qkv are left unrotated and without bias.
void RopeAndWriteKv(cudaStream_t stream, const DeviceKvLayer& cache, const DeviceRows& rows, float* qkv, int64_t ld,
                    const float* bias, int64_t num_heads, int64_t rotary_dim, const float* cos, const float* sin,
                    bool interleaved);

// Which cores PagedAttention and PagedAttentionTiled run on: kBest takes the tensor cores
// where the cache allows (f16/bf16, head_dim a multiple of 8 up to 128) unless
// SHOAL_CUDA_ATTENTION_CORES=f32 (AttentionOnTensorCores, device.h), kF32 always the f32
// ones (what the benchmark compares the tensor cores with).
enum class AttentionCores { kBest, kF32 };

// out[r, h*head_dim..] = softmax(q_h · K_g^T * scale) · V_g over positions 0..row_pos[r],
// g = h / (num_heads / num_kv_heads). q and out f32. The query heads of a KV head share
// each pass over its keys and values, and each head keeps a running max and sum (online
// softmax), so any context length fits; with `split`, positions are also divided over
// blocks (AttentionSplit).
//   On the tensor cores: a block per (row, KV head, 16 of its query heads, split), the
// heads as the mma's rows (TensorCorePairAttentionKernel: four warps splitting head_dim),
// tiles of 32 positions through shared memory once for all of them (cp.async, the next
// tile's copies in flight while this one is used); precision as
// PagedAttentionTiled's tensor cores (exact scores, probabilities rounded once to the
// cache type).
//   On the f32 cores: a block per (row, up to 8 of the group's heads), two heads a warp;
// the block reads a tile of 16 positions into shared memory once for all its heads, where
// a block per head would read it once per head (7 times on Qwen2-7B), and a warp reads
// each word of it once for its two.
void PagedAttention(cudaStream_t stream, const DeviceKvLayer& cache, const DeviceRows& rows, const float* q,
                    int64_t ldq, int64_t num_heads, float scale, float* out, int64_t ldo,
                    const AttentionSplit& split = {}, AttentionCores cores = AttentionCores::kBest);

// PagedAttention for prompt chunks, a tile of query rows per block (FlashAttention-2's
// loop order): each tile of keys and values is read from the cache into shared memory
// once for all of the tile's rows, where the per-row kernel reads it once per row; online
// softmax in f32, causal within the chunk. Writes the tiles' rows of out only. head_dim at
// most kMaxHeadDim.
//   On the tensor cores (f16/bf16 caches, head_dim % 8 == 0, at most 128): a block takes
// each tile of keys and values once for up to 4 query heads of a KV group (two tiles in
// shared memory, one filled by cp.async while the other is used); scores are
// exact products of the f32 queries (as two roundings to the cache type) with the cached
// keys, summed in f32; the probabilities are rounded to the cache type for the product
// with the values (relative error 2^-9 for bf16, 2^-12 for f16, each).
//   Otherwise: four threads per row split head_dim, all in f32.
void PagedAttentionTiled(cudaStream_t stream, const DeviceKvLayer& cache, const DeviceRows& rows,
                         const QueryTile* tiles, int64_t num_tiles, const float* q, int64_t ldq, int64_t num_heads,
                         float scale, float* out, int64_t ldo,
                         AttentionCores cores = AttentionCores::kBest);

// Each row's entry [c, k_pe] (entry() f32, row stride ld) into its position's slot.
void WriteLatents(cudaStream_t stream, const DeviceLatentLayer& cache, const DeviceRows& rows, const float* entries,
                  int64_t ld);

// MLA in absorbed form (the CPU's MlaLatentAttention): q holds per row num_heads vectors
// [q_lat (latent_dim), q_pe (rope_dim)], head h at h * entry() (row stride ldq); out[r,
// h * latent_dim ..] = sum_t softmax_t(scale * q_h · entry_t) c_t over positions
// 0..row_pos[r] (row stride ldo). PagedAttention's kernel with one kv head whose keys
// are the whole entry and whose values are its first latent_dim elements: a block's heads
// (up to 8) share each tile of latents read from the cache.
void MlaLatentAttention(cudaStream_t stream, const DeviceLatentLayer& cache, const DeviceRows& rows, const float* q,
                        int64_t ldq, int64_t num_heads, float scale, float* out, int64_t ldo,
                        const AttentionSplit& split = {});

// Whether MlaLatentAttentionTiled takes rows over this cache: f16/bf16, entry a multiple
// of 8 and at most kMaxLatentEntry, latent_dim at most 512 (128 for entries of at most
// 128), and AttentionOnTensorCores().
bool MlaTilesOnTensorCores(const DeviceLatentLayer& cache);

// MlaLatentAttention on the tensor cores for rows given as tiles (QueryTile: up to
// kQueryTileRows consecutive rows of one sequence; a decode row is a tile of one; rows
// not in a tile are left to MlaLatentAttention through DeviceRows.row_ids): the mma's 16
// rows are 16 (row, head) pairs of a tile, since every head reads the same latents; a
// block per (tile, 16 pairs, split), its four warps splitting the entry for the scores and
// the latent for the outputs; where most tiles are prompt rows, blocks of 32 pairs (two
// such groups of warps sharing each tile's copies). max_tile_rows: the most rows a tile
// has (the grid's pair blocks). With `split`, each tile's positions are also divided
// over blocks and merged as MlaLatentAttention's (records indexed by step row: the tiles
// must then cover every row of `rows`). Precision as PagedAttentionTiled on the tensor cores: exact scores (queries
// as two roundings), probabilities rounded once to the cache type, f32 sums. Only for
// caches MlaTilesOnTensorCores takes (any other ends the process).
void MlaLatentAttentionTiled(cudaStream_t stream, const DeviceLatentLayer& cache, const DeviceRows& rows,
                             const QueryTile* tiles, int64_t num_tiles, int64_t max_tile_rows, const float* q,
                             int64_t ldq, int64_t num_heads, float scale, float* out, int64_t ldo,
                             const AttentionSplit& split = {});

}  // namespace shoal::worker::cuda
