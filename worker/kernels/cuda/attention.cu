#include "worker/kernels/cuda/attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>

#include "worker/kernels/cuda/async_copy.cuh"
#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/elements.cuh"
#include "worker/kernels/cuda/launch.cuh"
#include "worker/kernels/cuda/mma.cuh"

namespace shoal::worker::cuda {
namespace {

// Element offset of (position, kv head) in a layer's cache.
__device__ __forceinline__ int64_t SlotOffset(const int32_t* table, int64_t pos, int block_size, int64_t kv_heads,
                                              int64_t g, int64_t head_dim) {
  const int64_t block = table[pos / block_size];
  return ((block * block_size + pos % block_size) * kv_heads + g) * head_dim;
}

// One thread per (row, element of the row's k/v).
template <typename T>
__global__ void WriteKvKernel(T* kc, T* vc, int block_size, int64_t kv_heads, int64_t head_dim, DeviceRows rows,
                              const float* k, int64_t ldk, const float* v, int64_t ldv) {
  WaitForPriorKernel();
  const int64_t width = kv_heads * head_dim;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows.num_rows * width) return;
  const int64_t r = idx / width, e = idx % width;
  const int32_t* table = rows.block_tables + rows.row_seq[r] * rows.max_blocks_per_seq;
  const int64_t at = SlotOffset(table, rows.row_pos[r], block_size, kv_heads, e / head_dim, head_dim) + e % head_dim;
  kc[at] = FromFloat<T>(k[r * ldk + e]);
  if (vc != nullptr) vc[at] = FromFloat<T>(v[r * ldv + e]);  // null: a latent cache, one entry per slot
}

// One thread per (row, head of q, k or v, pair of the head's elements): pair i < half
// rotates (i, i + half), or (2i, 2i + 1) interleaved, as RopeKernel; the others, and every
// pair of a value head, are elements (2i, 2i + 1) as they are.
template <typename T>
__global__ void RopeAndWriteKvKernel(T* kc, T* vc, int block_size, int64_t kv_heads, int64_t head_dim, DeviceRows rows,
                                     float* qkv, int64_t ld, const float* bias, int64_t num_heads, int64_t rotary_dim,
                                     const float* cos, const float* sin, bool interleaved) {
  WaitForPriorKernel();
  const int64_t pairs = head_dim / 2, half = rotary_dim / 2, heads = num_heads + 2 * kv_heads;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows.num_rows * heads * pairs) return;
  const int64_t i = idx % pairs, h = (idx / pairs) % heads, r = idx / (pairs * heads);
  const bool is_v = h >= num_heads + kv_heads, rotates = !is_v && i < half;
  const int64_t a = rotates && !interleaved ? i : 2 * i, b = rotates && !interleaved ? i + half : 2 * i + 1;
  float* head = qkv + r * ld + h * head_dim;
  float x0 = head[a], x1 = head[b];
  if (bias != nullptr) {
    x0 += bias[h * head_dim + a];
    x1 += bias[h * head_dim + b];
  }
  const int64_t pos = rows.row_pos[r];
  if (rotates) {
    const float c = cos[pos * half + i], s = sin[pos * half + i];
    const float y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
    x0 = y0;
    x1 = y1;
  }
  if (h < num_heads) {
    head[a] = x0;
    head[b] = x1;
    return;
  }
  const int64_t g = is_v ? h - num_heads - kv_heads : h - num_heads;
  const int32_t* table = rows.block_tables + rows.row_seq[r] * rows.max_blocks_per_seq;
  T* cache = is_v ? vc : kc;
  const int64_t at = SlotOffset(table, pos, block_size, kv_heads, g, head_dim);
  cache[at + a] = FromFloat<T>(x0);
  cache[at + b] = FromFloat<T>(x1);
}

// Query heads a block of GroupAttentionKernel serves, two a warp: every head of a KV
// group reads the same keys and values, so a block takes a tile of them from the cache
// once for all its heads (grouped-query attention: 7 heads a group on Qwen2-7B; MLA: every
// head shares the one latent cache, 16 on DeepSeek-V2-Lite), and a warp reads each key and
// value word from shared memory once for both of its heads.
constexpr int kMaxBlockHeads = 8;
constexpr int kHeadsPerWarp = 2;

// How a KV head's group of query heads is split over blocks: `per_group` blocks of at
// most `per_block` heads, as even as can be (12 heads: 2 blocks of 6, not 8 and 4).
struct HeadBlocks {
  int per_block = 1;
  int per_group = 1;
};

HeadBlocks HeadBlocksFor(int64_t group) {
  const int64_t blocks = (group + kMaxBlockHeads - 1) / kMaxBlockHeads;
  return {static_cast<int>((group + blocks - 1) / blocks), static_cast<int>(blocks)};
}

// The shared-memory tile of GroupAttentionKernel: kTile keys (and values) of rows of kDim
// elements, held as 32-bit words (one f32, or two f16/bf16). While scoring, lane (j, part)
// takes key j and every kParts-th word from `part`: with rows kStride = kWords + kParts
// words apart (kParts modulo 32), the warp's 32 reads fall in 32 different banks.
template <typename T, int kDim, bool kValuesInKeys>
struct AttentionTile {
  static constexpr int kElementsPerWord = 4 / static_cast<int>(sizeof(T));
  static constexpr int kWords = kDim / kElementsPerWord;
  static_assert(kWords % 32 == 0, "rows of whole warps of words");
  static constexpr int kBuffers = kValuesInKeys ? 1 : 2;
  static constexpr int kQueryBytes = kMaxBlockHeads * kDim * 4;
  // 16 keys where they fit beside the queries in 48 KB of static shared memory, else 8.
  static constexpr int kTile = kQueryBytes + kBuffers * 16 * (kWords + 2) * 4 <= 48 * 1024 ? 16 : 8;
  static constexpr int kParts = 32 / kTile;
  static constexpr int kStride = kWords + kParts;
  static_assert(kQueryBytes + kBuffers * kTile * kStride * 4 <= 48 * 1024, "static shared memory");
};

// The 32-bit word of elements [at, at + 4 / sizeof(T)) of p, bits as they are (the last
// element of a row with an odd count pairs with 0).
template <typename T>
__device__ __forceinline__ uint32_t WordAt(const T* p, int64_t at, int64_t valid) {
  if constexpr (sizeof(T) == 4) {
    uint32_t w;
    memcpy(&w, p + at, 4);
    return w;
  } else {
    uint16_t lo = 0, hi = 0;
    memcpy(&lo, p + at, 2);
    if (valid > 1) memcpy(&hi, p + at + 1, 2);
    return lo | (static_cast<uint32_t>(hi) << 16);
  }
}

// Four words into shared memory at a word boundary (rows kStride words apart are not
// 16-byte aligned).
__device__ __forceinline__ void StoreWords(uint32_t* to, uint4 w) {
  to[0] = w.x;
  to[1] = w.y;
  to[2] = w.z;
  to[3] = w.w;
}

// A warp's head after its last tile: with a split record, [max, sum, v_dim unnormalized
// outputs] (max -inf when the split saw no key); without, the normalized outputs at out.
// acc: the lane's words lane + 32 i of the output; l: the warp's whole sum.
template <int kLaneWords, int kEpw>
__device__ __forceinline__ void WriteHeadOutput(const float (&acc)[kLaneWords][kEpw], float m, float l, int lane,
                                                int64_t v_dim, float* record, float* out) {
  if (record != nullptr && lane == 0) {
    record[0] = m;
    record[1] = l;
  }
  for (int i = 0; i < kLaneWords; ++i) {
    for (int e = 0; e < kEpw; ++e) {
      const int64_t d = static_cast<int64_t>(lane + 32 * i) * kEpw + e;
      if (d >= v_dim) continue;
      if (record != nullptr) {
        record[2 + d] = acc[i][e];
      } else {
        out[d] = acc[i][e] / l;
      }
    }
  }
}

// One block per (row, block of a KV group's query heads, split); warp w serves heads
// g * group + first + 2w and the next. Keys are the first k_dim elements of a cache slot
// of slot_dim, values the first v_dim of the value cache's slot (kValuesInKeys: the keys'
// slot, MLA's latent entry [c, k_pe] with values c). The block walks the split's
// positions a tile at a time: every thread loads part of the tile into shared memory
// (16-byte loads where the slots allow), then each warp scores the tile's keys for its
// heads (a lane per key, or per part of one), updates their running max and sum (online
// softmax), and adds the tile's values, weighted, to its lanes' output elements, each key
// and value word read once for both heads. With one split the warp writes its heads'
// normalized outputs; with several, split z of a row takes the z-th of `splits` equal
// ranges of the row's positions and writes its partial softmax (max, sum, unnormalized
// output) for MergeSplitsKernel.
template <typename T, int kDim, bool kValuesInKeys>
__global__ void __launch_bounds__(32 * kMaxBlockHeads / kHeadsPerWarp)
    GroupAttentionKernel(const T* kc, const T* vc, int block_size, int64_t kv_heads, int64_t slot_dim, int64_t k_dim,
                         int64_t v_dim, DeviceRows rows, const float* q, int64_t ldq, int64_t num_heads,
                         HeadBlocks head_blocks, float scale, float* out, int64_t ldo, int splits, float* partials) {
  WaitForPriorKernel();
  using Tile = AttentionTile<T, kDim, kValuesInKeys>;
  constexpr int kTile = Tile::kTile, kParts = Tile::kParts, kStride = Tile::kStride, kWords = Tile::kWords;
  constexpr int kEpw = Tile::kElementsPerWord, kLaneWords = kWords / 32;
  __shared__ float qs[kMaxBlockHeads][kDim];
  __shared__ uint32_t ks[kTile * kStride];
  __shared__ uint32_t vs_own[kValuesInKeys ? 1 : kTile * kStride];
  const uint32_t* vs = kValuesInKeys ? ks : vs_own;

  const int64_t b = blockIdx.x;  // this launch's b-th row
  const int64_t r = rows.row_ids != nullptr ? rows.row_ids[b] : b;
  const int64_t group = num_heads / kv_heads, g = blockIdx.y / head_blocks.per_group;
  const int64_t first = (blockIdx.y % head_blocks.per_group) * head_blocks.per_block;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  constexpr int H = kHeadsPerWarp;
  // Head u of this warp: the block's head H * warp + u; both the same for a whole warp.
  bool serves[H];
  int64_t h[H];
#pragma unroll
  for (int u = 0; u < H; ++u) {
    const int in_block = H * warp + u;
    serves[u] = in_block < head_blocks.per_block && first + in_block < group;
    h[u] = g * group + first + in_block;
  }
  const int z = blockIdx.z;
  const int32_t* table = rows.block_tables + rows.row_seq[r] * rows.max_blocks_per_seq;
  const int64_t count = rows.row_pos[r] + 1;  // positions this row sees
  const int64_t chunk = (count + splits - 1) / splits;
  const int64_t begin = min(count, z * chunk), end = min(count, begin + chunk);

  // The warp's queries, scaled, zeros past k_dim (as the tiles' rows are).
#pragma unroll
  for (int u = 0; u < H; ++u) {
    for (int d = lane; d < kDim; d += 32) {
      qs[H * warp + u][d] = serves[u] && d < k_dim ? q[r * ldq + h[u] * k_dim + d] * scale : 0.0f;
    }
  }
  // Words past a row's k_dim elements are never loaded: zero once.
  const int64_t k_words = (k_dim + kEpw - 1) / kEpw;
  for (int e = threadIdx.x; e < kTile * kStride; e += blockDim.x) {
    if (e % kStride >= k_words) {
      ks[e] = 0;
      if constexpr (!kValuesInKeys) vs_own[e] = 0;
    }
  }
  constexpr int kVecElements = 16 / static_cast<int>(sizeof(T));
  const bool vector = (slot_dim * static_cast<int64_t>(sizeof(T))) % 16 == 0 && k_dim % kVecElements == 0 &&
                      reinterpret_cast<uintptr_t>(kc) % 16 == 0 && reinterpret_cast<uintptr_t>(vc) % 16 == 0;
  const int j = lane / kParts, part = lane % kParts;  // while scoring: this lane's key and share of it

  float acc[H][kLaneWords][kEpw];
#pragma unroll
  for (int u = 0; u < H; ++u) {
#pragma unroll
    for (int i = 0; i < kLaneWords; ++i) {
      for (int e = 0; e < kEpw; ++e) acc[u][i][e] = 0.0f;
    }
  }
  float m[H], l[H];  // l: this lane's share of the sum (lanes of part 0)
#pragma unroll
  for (int u = 0; u < H; ++u) m[u] = -INFINITY, l[u] = 0.0f;
  for (int64_t base = begin; base < end; base += kTile) {
    const int valid = static_cast<int>(min(static_cast<int64_t>(kTile), end - base));
    __syncthreads();  // every warp is done with the previous tile
    if (vector) {  // 16 bytes: 4 words
      const int64_t vecs = k_dim / kVecElements;
      for (int64_t e = threadIdx.x; e < kTile * vecs; e += blockDim.x) {
        const int jj = static_cast<int>(e / vecs), c = static_cast<int>(e % vecs);
        uint4 kw = make_uint4(0, 0, 0, 0), vw = kw;
        if (jj < valid) {
          const int64_t at = SlotOffset(table, base + jj, block_size, kv_heads, g, slot_dim) + c * kVecElements;
          kw = *reinterpret_cast<const uint4*>(kc + at);
          if constexpr (!kValuesInKeys) vw = *reinterpret_cast<const uint4*>(vc + at);
        }
        StoreWords(&ks[jj * kStride + 4 * c], kw);
        if constexpr (!kValuesInKeys) StoreWords(&vs_own[jj * kStride + 4 * c], vw);
      }
    } else {
      for (int64_t e = threadIdx.x; e < kTile * k_words; e += blockDim.x) {
        const int jj = static_cast<int>(e / k_words);
        const int64_t w = e % k_words, first_element = w * kEpw;
        uint32_t kw = 0, vw = 0;
        if (jj < valid) {
          const int64_t at = SlotOffset(table, base + jj, block_size, kv_heads, g, slot_dim) + first_element;
          kw = WordAt(kc, at, k_dim - first_element);
          if constexpr (!kValuesInKeys) vw = WordAt(vc, at, k_dim - first_element);
        }
        ks[jj * kStride + w] = kw;
        if constexpr (!kValuesInKeys) vs_own[jj * kStride + w] = vw;
      }
    }
    __syncthreads();
    if (!serves[0]) continue;  // the warp's first head idle: so is its second

    // Scores: lane (j, part) sums its words of key j for both heads, then the key's
    // kParts lanes add up.
    float sc[H] = {};
    const uint32_t* key = &ks[j * kStride];
    const float* q0 = qs[H * warp];
    const float* q1 = qs[H * warp + 1];
#pragma unroll 8
    for (int t = 0; t < kWords / kParts; ++t) {
      const int w = kParts * t + part;
      const float2 kf = Unpack<T>(key[w]);
      if constexpr (kEpw == 1) {
        sc[0] += q0[w] * kf.x;
        sc[1] += q1[w] * kf.x;
      } else {
        sc[0] += q0[2 * w] * kf.x + q0[2 * w + 1] * kf.y;
        sc[1] += q1[2 * w] * kf.x + q1[2 * w + 1] * kf.y;
      }
    }
    float p[H], keep[H];
#pragma unroll
    for (int u = 0; u < H; ++u) {
      float sv = sc[u];
      for (int offset = 1; offset < kParts; offset *= 2) sv += __shfl_xor_sync(0xffffffffu, sv, offset);
      if (j >= valid) sv = -INFINITY;
      float tile_max = sv;
      for (int offset = 16; offset > 0; offset /= 2) {
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, offset));
      }
      const float m_new = fmaxf(m[u], tile_max);  // finite: key 0 of the tile is valid
      keep[u] = __expf(m[u] - m_new);
      p[u] = j < valid ? __expf(sv - m_new) : 0.0f;
      l[u] = l[u] * keep[u] + (part == 0 ? p[u] : 0.0f);
      m[u] = m_new;
    }

    // Values: lane owns words lane + 32 i of every row.
#pragma unroll
    for (int u = 0; u < H; ++u) {
#pragma unroll
      for (int i = 0; i < kLaneWords; ++i) {
        for (int e = 0; e < kEpw; ++e) acc[u][i][e] *= keep[u];
      }
    }
    for (int jj = 0; jj < valid; ++jj) {
      const float p0 = __shfl_sync(0xffffffffu, p[0], jj * kParts);
      const float p1 = __shfl_sync(0xffffffffu, p[1], jj * kParts);
      const uint32_t* value = &vs[jj * kStride];
#pragma unroll
      for (int i = 0; i < kLaneWords; ++i) {
        const float2 vf = Unpack<T>(value[lane + 32 * i]);
        acc[0][i][0] += p0 * vf.x;
        acc[1][i][0] += p1 * vf.x;
        if constexpr (kEpw == 2) {
          acc[0][i][1] += p0 * vf.y;
          acc[1][i][1] += p1 * vf.y;
        }
      }
    }
  }

#pragma unroll

  for (int u = 0; u < H; ++u) {
    if (!serves[u]) continue;  // no barrier follows
    float lu = l[u];
    for (int offset = 16; offset > 0; offset /= 2) lu += __shfl_xor_sync(0xffffffffu, lu, offset);
    float* record = splits > 1 ? partials + ((b * num_heads + h[u]) * splits + z) * (v_dim + 2) : nullptr;
    WriteHeadOutput(acc[u], m[u], lu, lane, v_dim, record, out + r * ldo + h[u] * v_dim);
  }
}

// One block per (row, head): the splits' partial softmaxes rescaled to their largest max
// and summed, then normalized.
__global__ void MergeSplitsKernel(const float* partials, int splits, int64_t num_heads, int64_t v_dim,
                                  const int32_t* row_ids, float* out, int64_t ldo) {
  WaitForPriorKernel();
  const int64_t b = blockIdx.x, h = blockIdx.y;
  const int64_t r = row_ids != nullptr ? row_ids[b] : b;
  const float* records = partials + (b * num_heads + h) * splits * (v_dim + 2);
  float big = -INFINITY;
  for (int z = 0; z < splits; ++z) big = fmaxf(big, records[z * (v_dim + 2)]);
  float total = 0.0f;
  for (int z = 0; z < splits; ++z) {
    const float mz = records[z * (v_dim + 2)];
    if (mz != -INFINITY) total += records[z * (v_dim + 2) + 1] * __expf(mz - big);
  }
  for (int64_t d = threadIdx.x; d < v_dim; d += blockDim.x) {
    float sum = 0.0f;
    for (int z = 0; z < splits; ++z) {
      const float mz = records[z * (v_dim + 2)];
      if (mz != -INFINITY) sum += records[z * (v_dim + 2) + 2 + d] * __expf(mz - big);
    }
    out[r * ldo + h * v_dim + d] = sum / total;
  }
}

// The splits a launch takes: one unless the split has a scratch and more than one.
int SplitCount(const AttentionSplit& split) { return split.partials != nullptr && split.splits > 1 ? split.splits : 1; }

// MergeSplitsKernel over `num_rows` launch rows (row_ids as DeviceRows.row_ids).
void MergeSplits(cudaStream_t stream, int64_t num_rows, int64_t num_heads, int splits, const float* partials,
                 int64_t v_dim, const int32_t* row_ids, float* out, int64_t ldo) {
  const dim3 grid(static_cast<unsigned>(num_rows), static_cast<unsigned>(num_heads));
  LaunchKernel("MergeSplitsKernel", MergeSplitsKernel, grid, 128, 0, stream, partials, splits, num_heads, v_dim,
      row_ids, out, ldo);
}

// The launch of GroupAttentionKernel (split or not) and, when split, the merge.
template <typename T, int kDim, bool kValuesInKeys>
void LaunchAttention(cudaStream_t stream, const T* kc, const T* vc, int block_size, int64_t kv_heads,
                     int64_t slot_dim, int64_t k_dim, int64_t v_dim, const DeviceRows& rows, const float* q,
                     int64_t ldq, int64_t num_heads, float scale, float* out, int64_t ldo,
                     const AttentionSplit& split) {
  const int splits = SplitCount(split);
  const HeadBlocks head_blocks = HeadBlocksFor(num_heads / kv_heads);
  const dim3 grid(static_cast<unsigned>(rows.num_rows), static_cast<unsigned>(kv_heads * head_blocks.per_group),
                  static_cast<unsigned>(splits));
  const int warps = (head_blocks.per_block + kHeadsPerWarp - 1) / kHeadsPerWarp;
  LaunchKernel("GroupAttentionKernel", GroupAttentionKernel<T, kDim, kValuesInKeys>, grid, 32 * warps,
      0, stream, kc, vc, block_size, kv_heads, slot_dim, k_dim, v_dim, rows, q, ldq, num_heads, head_blocks, scale,
      out, ldo, splits, split.partials);
  if (splits > 1) MergeSplits(stream, rows.num_rows, num_heads, splits, split.partials, v_dim, rows.row_ids, out, ldo);
}

// One block of kQueryTileRows * 4 threads per (tile, head): thread t serves row t / 4 of
// the tile and dimensions d = t % 4 + 4 i of it. Keys and values come through shared
// memory kKeys at a time (kKeys * D = 4096 floats each, 32 KiB for both).
template <typename T, int D>
__global__ void TiledAttentionKernel(const T* kc, const T* vc, int block_size, int64_t kv_heads, int64_t head_dim,
                                     DeviceRows rows, const QueryTile* tiles, const float* q, int64_t ldq,
                                     int64_t num_heads, float scale, float* out, int64_t ldo) {
  WaitForPriorKernel();
  constexpr int kParts = 4, kDims = D / kParts, kKeys = 4096 / D;
  __shared__ float ks[kKeys][D];
  __shared__ float vs[kKeys][D];
  const QueryTile tile = tiles[blockIdx.x];
  const int64_t h = blockIdx.y, g = h / (num_heads / kv_heads);
  const int row = threadIdx.x / kParts, part = threadIdx.x % kParts;
  const bool active = row < tile.num_rows;
  const int64_t r = tile.first_row + row, pos = tile.first_pos + row;  // this thread's query row
  const int32_t* table = rows.block_tables + static_cast<int64_t>(tile.seq) * rows.max_blocks_per_seq;
  const int64_t last = tile.first_pos + tile.num_rows - 1;  // the tile's last row sees keys 0..last

  float qv[kDims], acc[kDims];
  for (int i = 0; i < kDims; ++i) {
    const int64_t d = part + kParts * i;
    qv[i] = active && d < head_dim ? q[r * ldq + h * head_dim + d] * scale : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t base = 0; base <= last; base += kKeys) {
    for (int e = threadIdx.x; e < kKeys * D; e += blockDim.x) {
      const int j = e / D, d = e % D;
      const int64_t p = base + j;
      float kv = 0.0f, vv = 0.0f;
      if (p <= last && d < head_dim) {
        const int64_t at = SlotOffset(table, p, block_size, kv_heads, g, head_dim) + d;
        kv = Load(kc, at);
        vv = Load(vc, at);
      }
      ks[j][d] = kv;
      vs[j][d] = vv;
    }
    __syncthreads();
    for (int j = 0; j < kKeys; ++j) {
      float s = 0.0f;
      for (int i = 0; i < kDims; ++i) s += qv[i] * ks[j][part + kParts * i];
      // The row's four threads are consecutive lanes: sum their parts.
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      if (!active || base + j > pos) continue;  // causal (and idle rows)
      const float m_new = fmaxf(m, s);
      const float keep = __expf(m - m_new), p = __expf(s - m_new);
      l = l * keep + p;
      for (int i = 0; i < kDims; ++i) acc[i] = acc[i] * keep + p * vs[j][part + kParts * i];
      m = m_new;
    }
    __syncthreads();  // before the next tile overwrites ks/vs
  }
  if (!active) return;
  for (int i = 0; i < kDims; ++i) {
    const int64_t d = part + kParts * i;
    if (d < head_dim) out[r * ldo + h * head_dim + d] = acc[i] / l;
  }
}

// Query heads of one KV group a block of TensorCoreTiledAttentionKernel serves: two warps
// a head (the tile's rows 0-15 and 16-31), at most 8 warps.
constexpr int kTensorCoreBlockHeads = 4;

// The shared-memory tile of TensorCoreTiledAttentionKernel, in 32-bit words of two
// elements: kKeys keys and the same positions' values, each by rows of kDim elements, as
// the cache holds them (so cp.async copies them untouched), two such tiles (one in flight
// while the other is used). A lane's B fragment of the scores is a word of a key row; of
// the outputs, LoadMatrices<true> reads it off the value rows. Rows are padded by 4 words:
// a row stride of 4 or 20 words modulo 32 puts the words lanes (g, t) read, row g and word
// t, in 32 different banks, and the 8 rows of an ldmatrix phase in 8 different 16 bytes
// of them.
template <int kDim>
struct TensorCoreTile {
  static constexpr int kKeys = 32;
  static constexpr int kStages = 2;
  static constexpr int kRowWords = kDim / 2 + 4;
  static constexpr int kSteps = kDim / 16;  // k-steps of the scores
  static constexpr int kChunks = kDim / 8;  // 16-byte chunks of a slot, 8-column blocks of the outputs
  static_assert(kDim % 16 == 0 && kChunks % 2 == 0 && (kRowWords % 32 == 4 || kRowWords % 32 == 20), "bank spread");
};

// A warp's 16 query rows (lane rows lg and lg + 8, i = 0 and 1) over one tile of kKeys
// scores in mma C fragments (s[n]: keys base + 8n .. + 7; the row's four lanes, lt, hold
// its scores between them): masks the keys past each row's position and every key of a
// row that is not live, updates the running max m and sum l (online softmax; a row with
// no key yet keeps max -inf and weights 0), rescales the rows of the f32 outputs acc, and
// gives the probabilities rounded to T as the value product's A fragments (p_words[n][i]:
// row i's two keys of block n). l sums the rounded weights, so a row's weights add up to
// what it is divided by; it is the lane's part of the sum (RowSum adds the four).
template <typename T, int kKeys, int kBlocks>
__device__ __forceinline__ void SoftmaxTile(float (&s)[kKeys / 8][4], int64_t base, int lt, const bool (&live)[2],
                                            const int64_t (&pos)[2], float (&m)[2], float (&l)[2],
                                            float (&acc)[kBlocks][4], uint32_t (&p_words)[kKeys / 8][2]) {
  float top[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
    for (int f = 0; f < 4; ++f) {
      const int i = f / 2;
      if (!live[i] || base + 8 * n + 2 * lt + f % 2 > pos[i]) s[n][f] = -INFINITY;
      top[i] = fmaxf(top[i], s[n][f]);
    }
  }
  float keep[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    top[i] = fmaxf(top[i], __shfl_xor_sync(0xffffffffu, top[i], 1));
    top[i] = fmaxf(top[i], __shfl_xor_sync(0xffffffffu, top[i], 2));
    const float m_new = fmaxf(m[i], top[i]);
    const float ref = m_new == -INFINITY ? 0.0f : m_new;
    keep[i] = __expf(m[i] - ref);
    m[i] = m_new;
    top[i] = ref;
    l[i] *= keep[i];
  }
#pragma unroll
  for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const T p0 = FromFloat<T>(__expf(s[n][2 * i] - top[i])), p1 = FromFloat<T>(__expf(s[n][2 * i + 1] - top[i]));
      l[i] += static_cast<float>(p0) + static_cast<float>(p1);
      p_words[n][i] = ElementBits(p0) | (ElementBits(p1) << 16);
    }
  }
#pragma unroll
  for (int c = 0; c < kBlocks; ++c) {
    acc[c][0] *= keep[0];
    acc[c][1] *= keep[0];
    acc[c][2] *= keep[1];
    acc[c][3] *= keep[1];
  }
}

// s += a warp's 16 query rows times the tile's kKeys keys (s[n]: keys 8n .. 8n + 7), over
// the k-steps first_step .. first_step + kSteps - 1 of the key rows that start below
// `dims`; the queries are held as two roundings (q_hi, q_lo), each its own product.
template <typename T, int kKeys, int kSteps, int kWords>
__device__ __forceinline__ void ScoreTile(const uint32_t (*ks)[kWords], int first_step, int64_t dims, int lg, int lt,
                                          const uint32_t (&q_hi)[kSteps][4], const uint32_t (&q_lo)[kSteps][4],
                                          float (&s)[kKeys / 8][4]) {
#pragma unroll
  for (int n = 0; n < kKeys / 8; ++n) {
    const uint32_t* key = ks[8 * n + lg];
#pragma unroll
    for (int st = 0; st < kSteps; ++st) {
      const int gs = first_step + st;
      if (16 * gs >= dims) break;
      const uint32_t b[2] = {key[8 * gs + lt], key[8 * gs + 4 + lt]};
      MmaM16N8K16<T>(s[n], q_hi[st], b);
      MmaM16N8K16<T>(s[n], q_lo[st], b);
    }
  }
}

// A row's whole sum from its four lanes' parts.
__device__ __forceinline__ float RowSum(float part) {
  part += __shfl_xor_sync(0xffffffffu, part, 1);
  return part + __shfl_xor_sync(0xffffffffu, part, 2);
}

// The A fragment of P for keys 16k .. 16k + 15: the scores' C fragments of blocks 2k and
// 2k + 1, rounded and packed.
template <int kKeys>
__device__ __forceinline__ void ProbabilityFragment(const uint32_t (&p_words)[kKeys / 8][2], int k, uint32_t (&a)[4]) {
  a[0] = p_words[2 * k][0];
  a[1] = p_words[2 * k][1];
  a[2] = p_words[2 * k + 1][0];
  a[3] = p_words[2 * k + 1][1];
}

// acc[c] += P V over the tile's kKeys keys for the warp's first `blocks` 8-wide output
// blocks, the values by rows in shared memory (vs[key], 16-byte aligned), block 0 starting
// at word first_word of a row: the scores' C fragments of keys 16k..16k+15 are the A
// fragment, and the B fragments of blocks c and c + 1 are the four transposed 8x8
// matrices of those keys' rows (lane 8i + r: key 16k + 8 (i % 2) + r, block c + i / 2).
// blocks may be odd: the last pair's second block is then read but not multiplied.
template <typename T, int kKeys, int kBlocks, int kWords>
__device__ __forceinline__ void AddValues(const uint32_t (&p_words)[kKeys / 8][2], const uint32_t (*vs)[kWords],
                                          int first_word, int blocks, int lane, float (&acc)[kBlocks][4]) {
  static_assert(kBlocks % 2 == 0, "blocks in pairs");
  const int mi = lane / 8, mr = lane % 8;
#pragma unroll
  for (int k = 0; k < kKeys / 16; ++k) {
    uint32_t a[4];
    ProbabilityFragment<kKeys>(p_words, k, a);
#pragma unroll
    for (int c = 0; c < kBlocks; c += 2) {
      if (c >= blocks) break;
      uint32_t b[4];
      LoadMatrices<true>(&vs[16 * k + 8 * (mi % 2) + mr][first_word + 4 * (c + mi / 2)], b);
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      MmaM16N8K16<T>(acc[c], a, b0);
      if (c + 1 < blocks) MmaM16N8K16<T>(acc[c + 1], a, b1);
    }
  }
}

// PagedAttentionTiled on the tensor cores (FlashAttention-2's scheme, f16/bf16 caches,
// head_dim a multiple of 8 up to 128). One block per (tile, KV head, block of up to 4 of
// its query heads); warp w serves head w / 2 of the block and rows 16 (w % 2) .. + 15 of
// the tile. The block walks the tile's positions kKeys at a time through two shared-memory
// tiles: while the warps work on one, the copies of the next positions' keys and values
// into the other are in flight (cp.async). Each warp multiplies its 16 query rows by the
// keys (m16n8k16: 16 rows x 8 keys x 16 dims an instruction), masks causally, keeps each
// row's running max and sum (online softmax, f32), and multiplies the probabilities,
// rounded to T, by the values into its f32 outputs. The queries stay in registers as the
// sum of two roundings to T (SplitPair), so a score is as exact as the cache's keys allow:
// a score's error would come out of exp() as a relative error of the probability.
template <typename T, int kDim>
__global__ void __launch_bounds__(64 * kTensorCoreBlockHeads)
    TensorCoreTiledAttentionKernel(const T* kc, const T* vc, int block_size, int64_t kv_heads, int64_t head_dim,
                                   DeviceRows rows, const QueryTile* tiles, const float* q, int64_t ldq,
                                   int64_t num_heads, int heads_per_block, float scale, float* out, int64_t ldo) {
  WaitForPriorKernel();
  using Tile = TensorCoreTile<kDim>;
  constexpr int kKeys = Tile::kKeys, kSteps = Tile::kSteps, kChunks = Tile::kChunks;
  __shared__ __align__(16) uint32_t ks[Tile::kStages][kKeys][Tile::kRowWords];
  __shared__ __align__(16) uint32_t vs[Tile::kStages][kKeys][Tile::kRowWords];

  const QueryTile tile = tiles[blockIdx.x];
  const int64_t g = blockIdx.y, group = num_heads / kv_heads;
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  const int lg = lane / 4, lt = lane % 4;  // the lane's row (and row + 8) and word of a fragment
  const int64_t h = g * group + static_cast<int64_t>(blockIdx.z) * heads_per_block + warp / 2;
  const int first = 16 * (warp % 2);  // the warp's first row of the tile
  // Warps past the group's last head, or past the tile's rows, only help load.
  const bool computes = warp / 2 < heads_per_block && h < (g + 1) * group && first < tile.num_rows;
  const int64_t last = tile.first_pos + tile.num_rows - 1;  // the tile's last row sees keys 0..last
  const int64_t warp_last = tile.first_pos + min(first + 15, tile.num_rows - 1);
  const int32_t* table = rows.block_tables + static_cast<int64_t>(tile.seq) * rows.max_blocks_per_seq;
  // Only the 8-wide output blocks head_dim has (ScoreTile skips its k-steps past it).
  const int chunks = static_cast<int>(head_dim / 8);

  // Keys and values of positions base .. base + kKeys - 1 into tile `stage` by 16-byte
  // chunks, a slot's chunks on consecutive threads (coalesced reads); past the tile's last
  // position or head_dim zeros, and the block table is not read for them. One group.
  const auto load = [&](int stage, int64_t base) {
    for (int e = static_cast<int>(threadIdx.x); e < kKeys * kChunks; e += static_cast<int>(blockDim.x)) {
      const int j = e / kChunks, c = e % kChunks;
      const bool read = base + j <= last && 8 * c < head_dim;
      const int64_t at = read ? SlotOffset(table, base + j, block_size, kv_heads, g, head_dim) + 8 * c : 0;
      CopyAsync16(&ks[stage][j][4 * c], kc + at, read);
      CopyAsync16(&vs[stage][j][4 * c], vc + at, read);
    }
    CommitCopies();
  };
  load(0, 0);

  // Rows lg and lg + 8 of the warp's 16: their positions, and whether they are the tile's.
  int64_t row_pos[2];
  bool row_live[2];
  for (int i = 0; i < 2; ++i) {
    const int row = first + lg + 8 * i;
    row_live[i] = computes && row < tile.num_rows;
    row_pos[i] = tile.first_pos + row;
  }
  uint32_t q_hi[kSteps][4], q_lo[kSteps][4];
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
#pragma unroll
    for (int f = 0; f < 4; ++f) {
      const int i = f % 2;  // a[0], a[2]: row lg; a[1], a[3]: row lg + 8
      const int64_t d = 16 * s + 8 * (f / 2) + 2 * lt;
      float x0 = 0.0f, x1 = 0.0f;
      if (row_live[i] && d < head_dim) {  // head_dim is even: d + 1 is there too
        const float* qr = q + (tile.first_row + first + lg + 8 * i) * ldq + h * head_dim + d;
        x0 = qr[0] * scale;
        x1 = qr[1] * scale;
      }
      SplitPair<T>(x0, x1, q_hi[s][f], q_lo[s][f]);
    }
  }
  float acc[kChunks][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  int stage = 0;
  for (int64_t base = 0; base <= last; base += kKeys, stage ^= 1) {
    NextTileThenWait(base + kKeys <= last, [&] { load(stage ^ 1, base + kKeys); });
    if (computes && base <= warp_last) {
      // Scores of the warp's 16 rows by the tile's kKeys keys: s[n] holds keys 8n..8n+7.
      float s[kKeys / 8][4] = {};
      ScoreTile<T, kKeys, kSteps>(ks[stage], 0, head_dim, lg, lt, q_hi, q_lo, s);
      uint32_t p_words[kKeys / 8][2];
      SoftmaxTile<T, kKeys, kChunks>(s, base, lt, row_live, row_pos, m, l, acc, p_words);
      AddValues<T, kKeys, kChunks>(p_words, vs[stage], 0, chunks, lane, acc);
    }
    __syncthreads();  // before the next iteration's copies overwrite this tile
  }
  if (!computes) return;
  for (int i = 0; i < 2; ++i) l[i] = RowSum(l[i]);
  for (int i = 0; i < 2; ++i) {
    if (!row_live[i]) continue;
    float* o = out + (tile.first_row + first + lg + 8 * i) * ldo + h * head_dim;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      if (c >= chunks) break;
      o[8 * c + 2 * lt] = acc[c][2 * i] / l[i];
      o[8 * c + 2 * lt + 1] = acc[c][2 * i + 1] / l[i];
    }
  }
}

// Warps of a TensorCorePairAttentionKernel block: they split each score's key dimensions
// and each output's value dimensions four ways.
constexpr int kLatentWarps = 4;

// The shared memory of TensorCorePairAttentionKernel (dynamic: 81 KB at DeepSeek's 576):
// kStages tiles of kKeys keys of kDim elements as rows of 32-bit words padded by 4 (row
// stride 4 modulo 32 banks: a score fragment's lanes (g, t), row g and word t, hit 32
// banks, and an ldmatrix phase's 8 rows 8 different 16 bytes of them), one filling while
// the other is used; the values' tiles the same way (MLA: the entries' first kV elements,
// read from the keys' rows); then the warps' partial scores, kGroups sets of them (a block
// of kGroups groups of kLatentWarps warps, each group 16 pairs over the same tiles).
template <int kDim, int kV, bool kOwnValues, int kGroups>
struct LatentTile {
  static constexpr int kKeys = 32, kStages = 2;
  static constexpr int kWords = kDim / 2 + 4;
  static constexpr int kSteps = kDim / 16 / kLatentWarps;  // a warp's k-steps of the scores
  static constexpr int kBlocks = kV / 8 / kLatentWarps;    // a warp's 8-wide blocks of the outputs
  static constexpr int kTileArrays = kStages * (kOwnValues ? 2 : 1);  // key tiles, then value tiles
  static constexpr size_t kSharedBytes =
      4 * (static_cast<size_t>(kTileArrays) * kKeys * kWords + kGroups * kLatentWarps * 16 * kKeys);
  static_assert(kDim % (16 * kLatentWarps) == 0 && kV % (8 * kLatentWarps) == 0 && kWords % 32 == 4, "tile shape");
};

// Attention on the tensor cores where the query heads of a KV head fill the mma's 16 rows
// together (f16/bf16 cache; slots a multiple of 8 elements): the rows are 16 (row, head)
// pairs of a tile of rows (pair p: row p / group, head g * group + p % group of KV head
// g), a block per (tile, KV head, 16 kGroups pairs, split): kGroups groups of four warps,
// 16 pairs each, over the same shared-memory tiles. MLA (one KV head, every query head,
// values the keys' first v_dim elements: kOwnValues false) over prompt tiles and decode
// rows alike; grouped-query attention's decode rows (kOwnValues: a value cache of its own).
// Tiles come from `tiles`, or with tiles null each launch row is a tile of one (rows.row_ids
// as PagedAttention), the split records then indexed by launch row for MergeSplitsKernel
// (by step row with tiles). The block walks the tile's positions kKeys at a time: the
// threads copy keys (and values) into one of two shared-memory tiles (cp.async: every copy
// of a tile in flight at once, and the next tile's while this one is used), warp w scores the pairs over its
// quarter of the key (queries in registers as two roundings, as
// TensorCoreTiledAttentionKernel), the four partial scores meet in shared memory, every
// warp takes the same sums through the same online softmax, and warp w multiplies the
// probabilities by its quarter of the values (ldmatrix off the rows) into its f32 outputs.
template <typename T, int kDim, int kV, bool kOwnValues, int kGroups>
__global__ void __launch_bounds__(32 * kLatentWarps * kGroups)
    TensorCorePairAttentionKernel(const T* kc, const T* vc, int block_size, int64_t kv_heads, int64_t entry,
                                  int64_t latent, DeviceRows rows, const QueryTile* tiles, int pair_blocks,
                                  const float* q, int64_t ldq, int64_t num_heads, float scale, float* out, int64_t ldo,
                                  int splits, float* partials) {
  WaitForPriorKernel();
  using Tile = LatentTile<kDim, kV, kOwnValues, kGroups>;
  constexpr int kKeys = Tile::kKeys, kSteps = Tile::kSteps, kBlocks = Tile::kBlocks, kChunks = kDim / 8;
  using Rows = uint32_t[kKeys][Tile::kWords];
  SHOAL_DYNAMIC_SHARED(shared);
  Rows* ks = reinterpret_cast<Rows*>(shared);  // ks[stage][key][word]
  Rows* vs = kOwnValues ? ks + Tile::kStages : ks;
  // [group][warp of the group][pair][key]
  auto* partials_of = reinterpret_cast<float(*)[kLatentWarps][16][kKeys]>(ks + Tile::kTileArrays);

  QueryTile tile;
  if (tiles != nullptr) {
    tile = tiles[blockIdx.x];
  } else {
    const int64_t r = rows.row_ids != nullptr ? rows.row_ids[blockIdx.x] : blockIdx.x;
    tile.first_row = static_cast<int32_t>(r);
    tile.num_rows = 1;
    tile.seq = rows.row_seq[r];
    tile.first_pos = rows.row_pos[r];
  }
  const int64_t group = num_heads / kv_heads, g = blockIdx.y / pair_blocks;
  const int64_t pairs = tile.num_rows * group;
  const int64_t block_pair = 16 * kGroups * static_cast<int64_t>(blockIdx.y % pair_blocks);
  if (block_pair >= pairs) return;  // the whole block: past this tile's pairs
  const int lane = static_cast<int>(threadIdx.x % 32), lg = lane / 4, lt = lane % 4;
  // Warp `warp` of the block's group `pair_group`: 16 pairs from first_pair, its quarter of
  // the dims. A group past the tile's pairs has no live pair: it only copies.
  const int warp = static_cast<int>(threadIdx.x / 32) % kLatentWarps;
  const int pair_group = static_cast<int>(threadIdx.x / 32) / kLatentWarps;
  const int64_t first_pair = block_pair + 16 * pair_group;
  float(*partial)[16][kKeys] = partials_of[pair_group];
  // Split z of `splits` takes the z-th of equal ranges [begin, end) of the positions the
  // block's last row sees (0 .. last).
  const int64_t seen = tile.first_pos + min(pairs - 1, block_pair + 16 * kGroups - 1) / group + 1;
  const int64_t span = (seen + splits - 1) / splits, begin = static_cast<int64_t>(blockIdx.z) * span;
  const int64_t end = min(seen, begin + span);
  const int32_t* table = rows.block_tables + static_cast<int64_t>(tile.seq) * rows.max_blocks_per_seq;

  // The keys (and values) of positions first .. first + kKeys - 1 into tile `stage` by
  // 16-byte chunks, every copy in flight before the first is waited for; zeros past the
  // split's positions, whose block table entries are not even read. One group.
  const auto load = [&](int stage, int64_t first) {
    for (int e = static_cast<int>(threadIdx.x); e < kKeys * kChunks; e += static_cast<int>(blockDim.x)) {
      const int j = e / kChunks, c = e % kChunks;
      const bool read = first + j < end && 8 * c < entry;
      const int64_t at = read ? SlotOffset(table, first + j, block_size, kv_heads, g, entry) + 8 * c : 0;
      CopyAsync16(&ks[stage][j][4 * c], kc + at, read);
      if constexpr (kOwnValues) CopyAsync16(&vs[stage][j][4 * c], vc + at, read && 8 * c < latent);
    }
    CommitCopies();
  };
  if (begin < end) load(0, begin);

  bool live[2];
  // The pairs' last keys (their positions, or the split's last), their step rows and heads.
  int64_t upto[2], step_row[2], head[2];
  for (int i = 0; i < 2; ++i) {
    const int64_t p = first_pair + lg + 8 * i, row = p / group;
    live[i] = p < pairs;
    upto[i] = min(tile.first_pos + row, end - 1);
    step_row[i] = tile.first_row + row;
    head[i] = g * group + p % group;
  }
  const int64_t record_row0 = tiles != nullptr ? tile.first_row : blockIdx.x;  // a pair's: + its row in the tile
  uint32_t q_hi[kSteps][4], q_lo[kSteps][4];
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
#pragma unroll
    for (int f = 0; f < 4; ++f) {
      const int i = f % 2;
      const int64_t d = 16 * (warp * kSteps + s) + 8 * (f / 2) + 2 * lt;
      const bool here = live[i] && d < entry;  // entry is even: d + 1 is there too
      const float* qr = q + step_row[i] * ldq + head[i] * entry + d;
      SplitPair<T>(here ? qr[0] * scale : 0.0f, here ? qr[1] * scale : 0.0f, q_hi[s][f], q_lo[s][f]);
    }
  }
  float acc[kBlocks][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  int stage = 0;
  for (int64_t base = begin; base < end; base += kKeys, stage ^= 1) {
    NextTileThenWait(base + kKeys < end, [&] { load(stage ^ 1, base + kKeys); });
    // This warp's part of the 16 pairs' scores, into shared memory by C fragment.
    float s[kKeys / 8][4] = {};
    ScoreTile<T, kKeys, kSteps>(ks[stage], warp * kSteps, entry, lg, lt, q_hi, q_lo, s);
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
      for (int f = 0; f < 4; ++f) partial[warp][lg + 8 * (f / 2)][8 * n + 2 * lt + f % 2] = s[n][f];
    }
    __syncthreads();
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        float sum = 0.0f;
        for (int w = 0; w < kLatentWarps; ++w) sum += partial[w][lg + 8 * (f / 2)][8 * n + 2 * lt + f % 2];
        s[n][f] = sum;
      }
    }
    uint32_t p_words[kKeys / 8][2];
    SoftmaxTile<T, kKeys, kBlocks>(s, base, lt, live, upto, m, l, acc, p_words);
    // Outputs += P V over this warp's value blocks (those that start below latent).
    const int first_block = warp * kBlocks;
    const int64_t wanted = (latent - 8 * first_block + 7) / 8;
    const int blocks = wanted <= 0 ? 0 : wanted >= kBlocks ? kBlocks : static_cast<int>(wanted);
    AddValues<T, kKeys, kBlocks>(p_words, vs[stage], 4 * first_block, blocks, lane, acc);
    __syncthreads();  // before the next iteration's copies overwrite this tile, and partial
  }
  for (int i = 0; i < 2; ++i) l[i] = RowSum(l[i]);
  for (int i = 0; i < 2; ++i) {
    if (!live[i]) continue;
    // Split: the pair's partial softmax for MergeSplitsKernel, [max, sum, unnormalized
    // outputs] (max -inf when the split saw no key); the max and sum are every lane's.
    const int64_t record_row = record_row0 + (step_row[i] - tile.first_row);
    float* record = splits > 1 ? partials + ((record_row * num_heads + head[i]) * splits + blockIdx.z) * (latent + 2)
                               : nullptr;
    if (record != nullptr && warp == 0 && lt == 0) {
      record[0] = m[i];
      record[1] = l[i];
    }
    float* o = record != nullptr ? record + 2 : out + step_row[i] * ldo + head[i] * latent;
    const float norm = record != nullptr ? 1.0f : 1.0f / l[i];
#pragma unroll
    for (int c = 0; c < kBlocks; ++c) {
      for (int e = 0; e < 2; ++e) {
        const int64_t d = 8 * (warp * kBlocks + c) + 2 * lt + e;
        if (d < latent) o[d] = acc[c][2 * i + e] * norm;
      }
    }
  }
}

template <typename T, int kDim, int kV, bool kOwnValues, int kGroups>
void AllowPairKernel() {
  AllowDynamicSharedMemory(
      reinterpret_cast<const void*>(TensorCorePairAttentionKernel<T, kDim, kV, kOwnValues, kGroups>),
      LatentTile<kDim, kV, kOwnValues, kGroups>::kSharedBytes);
}

// Every pair kernel opted in to its shared memory at once, the first time any of them
// launches on a device: a prompt step, as a decode step needs one first, so no
// cudaFuncSetAttribute is left for the first launch of a decode kernel inside a CUDA
// graph capture.
void AllowPairKernels() {
  static std::atomic<uint64_t> devices{0};
  int device = 0;
  SHOAL_CUDA_CHECK(cudaGetDevice(&device));
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit != 0 && (devices.load(std::memory_order_acquire) & bit) != 0) return;
  const auto allow = [](auto zero) {
    using T = decltype(zero);
    AllowPairKernel<T, 64, 64, true, 1>();
    AllowPairKernel<T, 128, 128, true, 1>();
    AllowPairKernel<T, 128, 128, false, 1>();
    AllowPairKernel<T, 128, 128, false, 2>();
    AllowPairKernel<T, kMaxLatentEntry, 512, false, 1>();
    AllowPairKernel<T, kMaxLatentEntry, 512, false, 2>();
  };
  allow(__half{});
  allow(__nv_bfloat16{});
  devices.fetch_or(bit, std::memory_order_release);
}

// TensorCorePairAttentionKernel over `launch_rows` tiles (or rows of `rows`, tiles null),
// `pair_blocks` blocks of 16 kGroups pairs per KV head, and when split the merge: over the
// step's rows with tiles (records by step row), over the launch's rows through rows.row_ids
// without. Its instantiations are AllowPairKernels' list.
template <typename T, int kDim, int kV, bool kOwnValues, int kGroups = 1>
void LaunchPairAttention(cudaStream_t stream, const T* kc, const T* vc, int block_size, int64_t kv_heads,
                         int64_t k_dim, int64_t v_dim, const DeviceRows& rows, const QueryTile* tiles,
                         int64_t launch_rows, int pair_blocks, const float* q, int64_t ldq, int64_t num_heads,
                         float scale, float* out, int64_t ldo, const AttentionSplit& split) {
  const int splits = SplitCount(split);
  const dim3 grid(static_cast<unsigned>(launch_rows), static_cast<unsigned>(kv_heads * pair_blocks),
                  static_cast<unsigned>(splits));
  constexpr auto kernel = TensorCorePairAttentionKernel<T, kDim, kV, kOwnValues, kGroups>;
  constexpr size_t shared = LatentTile<kDim, kV, kOwnValues, kGroups>::kSharedBytes;
  AllowPairKernels();
  LaunchKernel("TensorCorePairAttentionKernel", kernel, grid, 32 * kLatentWarps * kGroups, shared, stream, kc, vc,
      block_size, kv_heads, k_dim, v_dim, rows, tiles, pair_blocks, q, ldq, num_heads, scale, out, ldo, splits,
      split.partials);
  if (splits > 1) {
    const int32_t* row_ids = tiles != nullptr ? nullptr : rows.row_ids;
    MergeSplits(stream, rows.num_rows, num_heads, splits, split.partials, v_dim, row_ids, out, ldo);
  }
}

template <typename Fn>
void WithCacheType(DType t, Fn&& fn) {
  WithFloatType(t, "KV cache type", fn);
}

}  // namespace

void WriteKv(cudaStream_t stream, const DeviceKvLayer& cache, const DeviceRows& rows, const float* k, int64_t ldk,
             const float* v, int64_t ldv) {
  const int64_t work = rows.num_rows * cache.num_kv_heads * cache.head_dim;
  if (work == 0) return;
  WithCacheType(cache.dtype, [&](auto zero) {
    using T = decltype(zero);
    LaunchKernel("WriteKvKernel", WriteKvKernel<T>, static_cast<unsigned>((work + 255) / 256), 256, 0, stream,
        static_cast<T*>(cache.k), static_cast<T*>(cache.v), cache.block_size, cache.num_kv_heads, cache.head_dim, rows,
        k, ldk, v, ldv);
  });
}

void RopeAndWriteKv(cudaStream_t stream, const DeviceKvLayer& cache, const DeviceRows& rows, float* qkv, int64_t ld,
                    const float* bias, int64_t num_heads, int64_t rotary_dim, const float* cos, const float* sin,
                    bool interleaved) {
  if (cache.head_dim % 2 != 0 || rotary_dim % 2 != 0 || rotary_dim > cache.head_dim || rotary_dim < 0) {
    DieOnCudaError("RopeAndWriteKv", "head_dim and rotary_dim must be even, rotary_dim at most head_dim", __FILE__,
                   __LINE__);
  }
  const int64_t work = rows.num_rows * (num_heads + 2 * cache.num_kv_heads) * (cache.head_dim / 2);
  if (work == 0) return;
  WithCacheType(cache.dtype, [&](auto zero) {
    using T = decltype(zero);
    LaunchKernel("RopeAndWriteKvKernel", RopeAndWriteKvKernel<T>, static_cast<unsigned>((work + 255) / 256), 256, 0,
        stream, static_cast<T*>(cache.k), static_cast<T*>(cache.v), cache.block_size, cache.num_kv_heads,
        cache.head_dim, rows, qkv, ld, bias, num_heads, rotary_dim, cos, sin, interleaved);
  });
}

int AttentionSplits(int64_t num_rows, int64_t num_heads, int64_t num_kv_heads, int64_t max_positions) {
  // Enough blocks already fill the GPU; splitting short contexts only adds the merge.
  // Otherwise about kSplitPositions positions per split (two tiles: at batch 1 a block's
  // tiles follow one another, each waiting out a load), the count rounded up to a power of
  // two (a decode step's CUDA graph is kept per split count: a new one at 64, 128, 256, ...
  // positions, not at every 32nd), at most kMaxSplits and kBusyBlocks blocks in all.
  constexpr int64_t kBusyBlocks = 512, kSplitPositions = 32, kMaxSplits = 64;
  const int64_t blocks = num_rows * std::max<int64_t>(1, num_kv_heads) *
                         HeadBlocksFor(num_heads / std::max<int64_t>(1, num_kv_heads)).per_group;
  if (blocks >= kBusyBlocks) return 1;
  const int64_t positions_splits = (max_positions + kSplitPositions - 1) / kSplitPositions;
  int64_t want = 1;
  while (want < positions_splits && want < kMaxSplits) want *= 2;
  const int64_t most = std::min(kMaxSplits, kBusyBlocks / std::max<int64_t>(1, blocks));
  return static_cast<int>(std::clamp<int64_t>(want, 1, most));
}

size_t AttentionPartialFloats(int64_t num_rows, int64_t num_heads, int splits, int64_t v_dim) {
  return splits > 1 ? static_cast<size_t>(num_rows) * num_heads * splits * (v_dim + 2) : 0;
}

void PagedAttention(cudaStream_t stream, const DeviceKvLayer& cache, const DeviceRows& rows, const float* q,
                    int64_t ldq, int64_t num_heads, float scale, float* out, int64_t ldo, const AttentionSplit& split,
                    AttentionCores cores) {
  if (rows.num_rows == 0) return;
  if (cache.head_dim > kMaxHeadDim || cache.num_kv_heads <= 0 || num_heads <= 0 || num_heads > 65535 ||
      num_heads % cache.num_kv_heads != 0) {
    DieOnCudaError("PagedAttention", "head_dim above 256, or heads not a positive multiple of kv heads (at most 65535)",
                   __FILE__, __LINE__);
  }
  WithCacheType(cache.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* k = static_cast<const T*>(cache.k);
    const T* v = static_cast<const T*>(cache.v);
    const int64_t hd = cache.head_dim;
    if constexpr (!std::is_same_v<T, float>) {
      // 16-byte slots of at most 128: each row's query heads of a KV head as the pairs of
      // TensorCorePairAttentionKernel, a row a tile of one.
      if (cores == AttentionCores::kBest && AttentionOnTensorCores() && hd % 8 == 0 && hd <= 128) {
        const int pair_blocks = static_cast<int>((num_heads / cache.num_kv_heads + 15) / 16);
        auto launch = hd <= 64 ? LaunchPairAttention<T, 64, 64, true> : LaunchPairAttention<T, 128, 128, true>;
        launch(stream, k, v, cache.block_size, cache.num_kv_heads, hd, hd, rows, nullptr, rows.num_rows, pair_blocks,
               q, ldq, num_heads, scale, out, ldo, split);
        return;
      }
    }
    // The head dimension padded to the kernel's: 64, 128 or 256.
    if (hd <= 64) {
      LaunchAttention<T, 64, false>(stream, k, v, cache.block_size, cache.num_kv_heads, hd, hd, hd, rows, q, ldq,
                                    num_heads, scale, out, ldo, split);
    } else if (hd <= 128) {
      LaunchAttention<T, 128, false>(stream, k, v, cache.block_size, cache.num_kv_heads, hd, hd, hd, rows, q, ldq,
                                     num_heads, scale, out, ldo, split);
    } else {
      LaunchAttention<T, 256, false>(stream, k, v, cache.block_size, cache.num_kv_heads, hd, hd, hd, rows, q, ldq,
                                     num_heads, scale, out, ldo, split);
    }
  });
}

void PagedAttentionTiled(cudaStream_t stream, const DeviceKvLayer& cache, const DeviceRows& rows,
                         const QueryTile* tiles, int64_t num_tiles, const float* q, int64_t ldq, int64_t num_heads,
                         float scale, float* out, int64_t ldo, AttentionCores cores) {
  if (num_tiles == 0) return;
  if (cache.head_dim > kMaxHeadDim || cache.num_kv_heads <= 0 || num_heads <= 0 || num_heads > 65535 ||
      num_heads % cache.num_kv_heads != 0) {
    DieOnCudaError("PagedAttentionTiled", "head_dim above 256, or heads not a positive multiple of kv heads",
                   __FILE__, __LINE__);
  }
  WithCacheType(cache.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* k = static_cast<const T*>(cache.k);
    const T* v = static_cast<const T*>(cache.v);
    if constexpr (!std::is_same_v<T, float>) {
      // 16-byte slots (head_dim a multiple of 8) of at most 128: the tensor cores.
      if (cores == AttentionCores::kBest && AttentionOnTensorCores() && cache.head_dim % 8 == 0 &&
          cache.head_dim <= 128) {
        const int64_t group = num_heads / cache.num_kv_heads;
        const int64_t blocks_per_group = (group + kTensorCoreBlockHeads - 1) / kTensorCoreBlockHeads;
        const int per_block = static_cast<int>((group + blocks_per_group - 1) / blocks_per_group);
        const dim3 tc_grid(static_cast<unsigned>(num_tiles), static_cast<unsigned>(cache.num_kv_heads),
                           static_cast<unsigned>(blocks_per_group));
        static_assert(kQueryTileRows == 32, "two warps of 16 rows a head");
        if (cache.head_dim <= 64) {
          LaunchKernel("TensorCoreTiledAttentionKernel", TensorCoreTiledAttentionKernel<T, 64>, tc_grid,
              64 * per_block, 0, stream, k, v, cache.block_size, cache.num_kv_heads, cache.head_dim, rows, tiles, q,
              ldq, num_heads, per_block, scale, out, ldo);
        } else {
          LaunchKernel("TensorCoreTiledAttentionKernel", TensorCoreTiledAttentionKernel<T, 128>, tc_grid,
              64 * per_block, 0, stream, k, v, cache.block_size, cache.num_kv_heads, cache.head_dim, rows, tiles, q,
              ldq, num_heads, per_block, scale, out, ldo);
        }
        return;
      }
    }
    const dim3 grid(static_cast<unsigned>(num_tiles), static_cast<unsigned>(num_heads));
    const int threads = kQueryTileRows * 4;
    // The head dimension padded to the kernel's: 64, 128 or 256.
    if (cache.head_dim <= 64) {
      LaunchKernel("TiledAttentionKernel", TiledAttentionKernel<T, 64>, grid, threads, 0, stream, k, v,
          cache.block_size, cache.num_kv_heads, cache.head_dim, rows, tiles, q, ldq, num_heads, scale, out, ldo);
    } else if (cache.head_dim <= 128) {
      LaunchKernel("TiledAttentionKernel", TiledAttentionKernel<T, 128>, grid, threads, 0, stream, k, v,
          cache.block_size, cache.num_kv_heads, cache.head_dim, rows, tiles, q, ldq, num_heads, scale, out, ldo);
    } else {
      LaunchKernel("TiledAttentionKernel", TiledAttentionKernel<T, 256>, grid, threads, 0, stream, k, v,
          cache.block_size, cache.num_kv_heads, cache.head_dim, rows, tiles, q, ldq, num_heads, scale, out, ldo);
    }
  });
}

void WriteLatents(cudaStream_t stream, const DeviceLatentLayer& cache, const DeviceRows& rows, const float* entries,
                  int64_t ld) {
  const int64_t work = rows.num_rows * cache.entry();
  if (work == 0) return;
  WithCacheType(cache.dtype, [&](auto zero) {
    using T = decltype(zero);
    LaunchKernel("WriteKvKernel", WriteKvKernel<T>, static_cast<unsigned>((work + 255) / 256), 256, 0, stream,
        static_cast<T*>(cache.data), nullptr, cache.block_size, 1, cache.entry(), rows, entries, ld, nullptr, 0);
  });
}

void MlaLatentAttention(cudaStream_t stream, const DeviceLatentLayer& cache, const DeviceRows& rows, const float* q,
                        int64_t ldq, int64_t num_heads, float scale, float* out, int64_t ldo,
                        const AttentionSplit& split) {
  if (rows.num_rows == 0) return;
  if (cache.entry() > kMaxLatentEntry || num_heads <= 0 || num_heads > 65535) {
    DieOnCudaError("MlaLatentAttention", "latent entry above kMaxLatentEntry, or heads not in [1, 65535]", __FILE__,
                   __LINE__);
  }
  // ldq and ldo are per row; within a row, head h's query is at h * entry and its output
  // at h * latent_dim (the kernel's h * k_dim and h * v_dim).
  WithCacheType(cache.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* data = static_cast<const T*>(cache.data);
    // Tiny test models' entries in a tile of 128, DeepSeek's 576.
    const int64_t e = cache.entry();
    if (e <= 128) {
      LaunchAttention<T, 128, true>(stream, data, data, cache.block_size, 1, e, e, cache.latent_dim, rows, q, ldq,
                                    num_heads, scale, out, ldo, split);
    } else {
      LaunchAttention<T, kMaxLatentEntry, true>(stream, data, data, cache.block_size, 1, e, e, cache.latent_dim, rows,
                                                q, ldq, num_heads, scale, out, ldo, split);
    }
  });
}

bool MlaTilesOnTensorCores(const DeviceLatentLayer& cache) {
  return AttentionOnTensorCores() && cache.dtype != DType::kF32 && cache.entry() % 8 == 0 &&
         cache.entry() <= kMaxLatentEntry && cache.latent_dim <= (cache.entry() <= 128 ? 128 : 512);
}

void MlaLatentAttentionTiled(cudaStream_t stream, const DeviceLatentLayer& cache, const DeviceRows& rows,
                             const QueryTile* tiles, int64_t num_tiles, int64_t max_tile_rows, const float* q,
                             int64_t ldq, int64_t num_heads, float scale, float* out, int64_t ldo,
                             const AttentionSplit& split) {
  if (num_tiles == 0) return;
  if (!MlaTilesOnTensorCores(cache) || num_heads <= 0 || num_heads > 32767 || max_tile_rows < 1 ||
      max_tile_rows > kQueryTileRows) {
    DieOnCudaError("MlaLatentAttentionTiled",
                   "not a cache MlaTilesOnTensorCores takes, heads not in [1, 32767], or max_tile_rows not in [1, 32]",
                   __FILE__, __LINE__);
  }
  // Tiles of more than 16 pairs (prompt chunks) in blocks of two groups of 16 pairs, which
  // share each tile's copies: a tile's prefix streams through shared memory once per 32
  // of its pairs (32 rows of DeepSeek's 16 heads: 16 times), not once per 16. Unless most
  // tiles are decode rows (tiles of one row: 16 pairs at most, their second group idle):
  // those read at the bytes in flight, and a block of one group leaves room for two an SM.
  const int64_t tile_pairs = max_tile_rows * num_heads;
  const int groups = tile_pairs > 16 && rows.num_rows >= 2 * num_tiles ? 2 : 1;
  const int pair_blocks = static_cast<int>((tile_pairs + 16 * groups - 1) / (16 * groups));
  WithCacheType(cache.dtype, [&](auto zero) {
    using T = decltype(zero);
    if constexpr (!std::is_same_v<T, float>) {
      const T* data = static_cast<const T*>(cache.data);
      // Tiny test models' entries in a tile of 128, DeepSeek's 576 (latents of 512).
      const bool small = cache.entry() <= 128;
      auto launch = groups == 2 ? (small ? LaunchPairAttention<T, 128, 128, false, 2>
                                         : LaunchPairAttention<T, kMaxLatentEntry, 512, false, 2>)
                                : (small ? LaunchPairAttention<T, 128, 128, false, 1>
                                         : LaunchPairAttention<T, kMaxLatentEntry, 512, false, 1>);
      launch(stream, data, data, cache.block_size, 1, cache.entry(), cache.latent_dim, rows, tiles, num_tiles,
             pair_blocks, q, ldq, num_heads, scale, out, ldo, split);
    }
  });
}

}  // namespace shoal::worker::cuda
