#include "worker/kernels/cuda/attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/elements.cuh"

namespace shoal::worker::cuda {
namespace {

constexpr int kWarps = 4;

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

// One block per (row, head, split). Keys are the first k_dim elements of a cache slot of
// slot_dim, values the first v_dim of the value cache's slot (for MLA both are the same
// latent entry: keys [c, k_pe], values c). kLaneDims bounds max(k_dim, v_dim) / 32.
// With one split the block writes the normalized output; with several, split z of a row
// takes the z-th of `splits` equal ranges of the row's positions and writes its partial
// softmax (max, sum, unnormalized output) for MergeSplitsKernel.
// Each warp takes kKeys consecutive positions per step (then the next kWarps * kKeys
// further on): their loads are independent, so a warp has kKeys keys' worth in flight
// rather than waiting out one key's latency at a time, and the running max and sum are
// rescaled once per step.
template <typename T, int kLaneDims>
__global__ void AttentionKernel(const T* kc, const T* vc, int block_size, int64_t kv_heads, int64_t slot_dim,
                                int64_t k_dim, int64_t v_dim, DeviceRows rows, const float* q, int64_t ldq,
                                int64_t num_heads, float scale, float* out, int64_t ldo, int splits,
                                float* partials) {
  constexpr int kKeys = kLaneDims <= 8 ? 4 : 2;  // MLA's 18 dims a lane leave room for 2
  const int64_t b = blockIdx.x, h = blockIdx.y;  // b: this launch's b-th row
  const int64_t r = rows.row_ids != nullptr ? rows.row_ids[b] : b;
  const int z = blockIdx.z;
  const int64_t g = h / (num_heads / kv_heads);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int32_t* table = rows.block_tables + rows.row_seq[r] * rows.max_blocks_per_seq;
  const int64_t count = rows.row_pos[r] + 1;  // positions this row sees
  const int64_t chunk = (count + splits - 1) / splits;
  const int64_t begin = z * chunk, end = min(count, begin + chunk);

  float qv[kLaneDims], acc[kLaneDims];
  for (int i = 0; i < kLaneDims; ++i) {
    const int64_t d = lane + 32 * i;
    qv[i] = d < k_dim ? q[r * ldq + h * k_dim + d] * scale : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t j0 = begin + warp * kKeys; j0 < end; j0 += kWarps * kKeys) {
    int64_t at[kKeys];
    float s[kKeys];
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      at[u] = j0 + u < end ? SlotOffset(table, j0 + u, block_size, kv_heads, g, slot_dim) : -1;
      s[u] = 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      if (at[u] < 0) continue;  // the same for every lane: j0 is the warp's
      for (int i = 0; i < kLaneDims; ++i) {
        const int64_t d = lane + 32 * i;
        if (d < k_dim) s[u] += qv[i] * Load(kc, at[u] + d);
      }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
#pragma unroll
      for (int u = 0; u < kKeys; ++u) s[u] += __shfl_xor_sync(0xffffffffu, s[u], offset);
    }
    float m_new = m;
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      if (at[u] >= 0) m_new = fmaxf(m_new, s[u]);
    }
    const float keep = __expf(m - m_new);
    float p[kKeys];
    l *= keep;
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      p[u] = at[u] >= 0 ? __expf(s[u] - m_new) : 0.0f;
      l += p[u];
    }
    for (int i = 0; i < kLaneDims; ++i) {
      const int64_t d = lane + 32 * i;
      float a = acc[i] * keep;
      if (d < v_dim) {
#pragma unroll
        for (int u = 0; u < kKeys; ++u) {
          if (at[u] >= 0) a += p[u] * Load(vc, at[u] + d);
        }
      }
      acc[i] = a;
    }
    m = m_new;
  }

  // Merge the warps' partial softmaxes: rescale each to the largest max.
  __shared__ float warp_m[kWarps], warp_l[kWarps];
  __shared__ float warp_acc[kWarps][32 * kLaneDims];
  if (lane == 0) {
    warp_m[warp] = m;
    warp_l[warp] = l;
  }
  for (int i = 0; i < kLaneDims; ++i) warp_acc[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  float big = -INFINITY;
  for (int w = 0; w < kWarps; ++w) big = fmaxf(big, warp_m[w]);
  float total = 0.0f;
  for (int w = 0; w < kWarps; ++w) total += warp_m[w] == -INFINITY ? 0.0f : warp_l[w] * __expf(warp_m[w] - big);
  // A split's record: [max, sum, v_dim unnormalized outputs]; max -inf when it saw no key.
  float* record = splits > 1 ? partials + ((b * num_heads + h) * splits + z) * (v_dim + 2) : nullptr;
  if (record != nullptr && threadIdx.x == 0) {
    record[0] = big;
    record[1] = total;
  }
  for (int64_t d = threadIdx.x; d < v_dim; d += blockDim.x) {
    float sum = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      if (warp_m[w] != -INFINITY) sum += warp_acc[w][d] * __expf(warp_m[w] - big);
    }
    if (record != nullptr) {
      record[2 + d] = sum;
    } else {
      out[r * ldo + h * v_dim + d] = sum / total;
    }
  }
}

// One block per (row, head): the splits' partial softmaxes rescaled to their largest max
// and summed, then normalized.
__global__ void MergeSplitsKernel(const float* partials, int splits, int64_t num_heads, int64_t v_dim,
                                  const int32_t* row_ids, float* out, int64_t ldo) {
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

// The launch of AttentionKernel (split or not) and, when split, the merge.
template <typename T, int kLaneDims>
void LaunchAttention(cudaStream_t stream, const T* kc, const T* vc, int block_size, int64_t kv_heads,
                     int64_t slot_dim, int64_t k_dim, int64_t v_dim, const DeviceRows& rows, const float* q,
                     int64_t ldq, int64_t num_heads, float scale, float* out, int64_t ldo, const AttentionSplit& split) {
  const int splits = split.partials != nullptr && split.splits > 1 ? split.splits : 1;
  const dim3 grid(static_cast<unsigned>(rows.num_rows), static_cast<unsigned>(num_heads), static_cast<unsigned>(splits));
  AttentionKernel<T, kLaneDims><<<grid, 32 * kWarps, 0, stream>>>(kc, vc, block_size, kv_heads, slot_dim, k_dim, v_dim,
                                                                   rows, q, ldq, num_heads, scale, out, ldo, splits,
                                                                   split.partials);
  SHOAL_CUDA_CHECK_LAUNCH();
  if (splits == 1) return;
  const dim3 merge_grid(static_cast<unsigned>(rows.num_rows), static_cast<unsigned>(num_heads));
  MergeSplitsKernel<<<merge_grid, 128, 0, stream>>>(split.partials, splits, num_heads, v_dim, rows.row_ids, out, ldo);
  SHOAL_CUDA_CHECK_LAUNCH();
}

// One block of kQueryTileRows * 4 threads per (tile, head): thread t serves row t / 4 of
// the tile and dimensions d = t % 4 + 4 i of it. Keys and values come through shared
// memory kKeys at a time (kKeys * D = 4096 floats each, 32 KiB for both).
template <typename T, int D>
__global__ void TiledAttentionKernel(const T* kc, const T* vc, int block_size, int64_t kv_heads, int64_t head_dim,
                                     DeviceRows rows, const QueryTile* tiles, const float* q, int64_t ldq,
                                     int64_t num_heads, float scale, float* out, int64_t ldo) {
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
    WriteKvKernel<T><<<static_cast<unsigned>((work + 255) / 256), 256, 0, stream>>>(
        static_cast<T*>(cache.k), static_cast<T*>(cache.v), cache.block_size, cache.num_kv_heads, cache.head_dim,
        rows, k, ldk, v, ldv);
  });
  SHOAL_CUDA_CHECK_LAUNCH();
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
    RopeAndWriteKvKernel<T><<<static_cast<unsigned>((work + 255) / 256), 256, 0, stream>>>(
        static_cast<T*>(cache.k), static_cast<T*>(cache.v), cache.block_size, cache.num_kv_heads, cache.head_dim,
        rows, qkv, ld, bias, num_heads, rotary_dim, cos, sin, interleaved);
  });
  SHOAL_CUDA_CHECK_LAUNCH();
}

int AttentionSplits(int64_t num_rows, int64_t num_heads, int64_t max_positions) {
  // Enough (row, head) blocks already fill the GPU; splitting short contexts only adds the
  // merge. Otherwise about kSplitPositions positions per split, at most kMaxSplits.
  constexpr int64_t kBusyBlocks = 512, kSplitPositions = 256, kMaxSplits = 32;
  if (num_rows * num_heads >= kBusyBlocks) return 1;
  const int64_t want = (max_positions + kSplitPositions - 1) / kSplitPositions;
  return static_cast<int>(std::clamp<int64_t>(want, 1, std::min(kMaxSplits, kBusyBlocks / std::max<int64_t>(1, num_rows * num_heads))));
}

size_t AttentionPartialFloats(int64_t num_rows, int64_t num_heads, int splits, int64_t v_dim) {
  return splits > 1 ? static_cast<size_t>(num_rows) * num_heads * splits * (v_dim + 2) : 0;
}

void PagedAttention(cudaStream_t stream, const DeviceKvLayer& cache, const DeviceRows& rows, const float* q,
                    int64_t ldq, int64_t num_heads, float scale, float* out, int64_t ldo, const AttentionSplit& split) {
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
    // Heads of up to 128 (nearly every model) keep half the registers a lane, so more
    // blocks fit on an SM.
    if (hd <= 128) {
      LaunchAttention<T, 4>(stream, k, v, cache.block_size, cache.num_kv_heads, hd, hd, hd, rows, q, ldq, num_heads,
                            scale, out, ldo, split);
    } else {
      LaunchAttention<T, kMaxHeadDim / 32>(stream, k, v, cache.block_size, cache.num_kv_heads, hd, hd, hd, rows, q,
                                           ldq, num_heads, scale, out, ldo, split);
    }
  });
}

void PagedAttentionTiled(cudaStream_t stream, const DeviceKvLayer& cache, const DeviceRows& rows,
                         const QueryTile* tiles, int64_t num_tiles, const float* q, int64_t ldq, int64_t num_heads,
                         float scale, float* out, int64_t ldo) {
  if (num_tiles == 0) return;
  if (cache.head_dim > kMaxHeadDim || cache.num_kv_heads <= 0 || num_heads <= 0 || num_heads > 65535 ||
      num_heads % cache.num_kv_heads != 0) {
    DieOnCudaError("PagedAttentionTiled", "head_dim above 256, or heads not a positive multiple of kv heads",
                   __FILE__, __LINE__);
  }
  const dim3 grid(static_cast<unsigned>(num_tiles), static_cast<unsigned>(num_heads));
  const int threads = kQueryTileRows * 4;
  WithCacheType(cache.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* k = static_cast<const T*>(cache.k);
    const T* v = static_cast<const T*>(cache.v);
    // The head dimension padded to the kernel's: 64, 128 or 256.
    if (cache.head_dim <= 64) {
      TiledAttentionKernel<T, 64><<<grid, threads, 0, stream>>>(k, v, cache.block_size, cache.num_kv_heads,
                                                                cache.head_dim, rows, tiles, q, ldq, num_heads, scale,
                                                                out, ldo);
    } else if (cache.head_dim <= 128) {
      TiledAttentionKernel<T, 128><<<grid, threads, 0, stream>>>(k, v, cache.block_size, cache.num_kv_heads,
                                                                 cache.head_dim, rows, tiles, q, ldq, num_heads, scale,
                                                                 out, ldo);
    } else {
      TiledAttentionKernel<T, 256><<<grid, threads, 0, stream>>>(k, v, cache.block_size, cache.num_kv_heads,
                                                                 cache.head_dim, rows, tiles, q, ldq, num_heads, scale,
                                                                 out, ldo);
    }
  });
  SHOAL_CUDA_CHECK_LAUNCH();
}

void WriteLatents(cudaStream_t stream, const DeviceLatentLayer& cache, const DeviceRows& rows, const float* entries,
                  int64_t ld) {
  const int64_t work = rows.num_rows * cache.entry();
  if (work == 0) return;
  WithCacheType(cache.dtype, [&](auto zero) {
    using T = decltype(zero);
    WriteKvKernel<T><<<static_cast<unsigned>((work + 255) / 256), 256, 0, stream>>>(
        static_cast<T*>(cache.data), nullptr, cache.block_size, 1, cache.entry(), rows, entries, ld, nullptr, 0);
  });
  SHOAL_CUDA_CHECK_LAUNCH();
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
    LaunchAttention<T, kMaxLatentEntry / 32>(stream, data, data, cache.block_size, 1, cache.entry(), cache.entry(),
                                             cache.latent_dim, rows, q, ldq, num_heads, scale, out, ldo, split);
  });
}

}  // namespace shoal::worker::cuda
