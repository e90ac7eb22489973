#include "worker/kernels/cuda/ops.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/elements.cuh"
#include "worker/kernels/cuda/launch.cuh"

namespace shoal::worker::cuda {
namespace {

constexpr int kNormThreads = 256;

// One block per row: each thread sums the squares of a strided slice, warps reduce with
// shuffles, the block through shared memory.
template <typename T>
__global__ void RmsNormKernel(T* x, const T* residual, const float* weight, T* out, int64_t n, float eps) {
  WaitForPriorKernel();
  const int64_t row = blockIdx.x;
  T* xr = x + row * n;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    float v = Load(xr, i);
    if (residual != nullptr) {
      v += Load(residual + row * n, i);
      Store(xr, i, v);
      v = Load(xr, i);  // normalize what the residual stream now holds (rounded to T)
    }
    sum += v * v;
  }
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  __shared__ float warp_sums[kNormThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = sum;
  __syncthreads();
  if (warp == 0) {
    sum = lane < blockDim.x / 32 ? warp_sums[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0) warp_sums[0] = sum;
  }
  __syncthreads();
  const float scale = rsqrtf(warp_sums[0] / static_cast<float>(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) Store(out + row * n, i, Load(xr, i) * scale * weight[i]);
}

// One thread per (row, head, pair).
template <typename T>
__global__ void RopeKernel(T* x, int64_t num_tokens, int64_t ld, const int64_t* positions, int64_t num_heads,
                           int64_t head_dim, int64_t rotary_dim, const float* cos, const float* sin,
                           bool interleaved) {
  WaitForPriorKernel();
  const int64_t half = rotary_dim / 2;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= num_tokens * num_heads * half) return;
  const int64_t i = idx % half, h = (idx / half) % num_heads, t = idx / (half * num_heads);
  T* head = x + t * ld + h * head_dim;
  const int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
  const float c = cos[positions[t] * half + i], s = sin[positions[t] * half + i];
  const float x0 = Load(head, a), x1 = Load(head, b);
  Store(head, a, x0 * c - x1 * s);
  Store(head, b, x0 * s + x1 * c);
}

template <typename T>
__global__ void SiluMulKernel(const T* gate, const T* up, T* out, int64_t n) {
  WaitForPriorKernel();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = Load(gate, i);
  Store(out, i, g / (1.0f + __expf(-g)) * Load(up, i));
}

// The sum of `v` over the block (kNormThreads threads), returned to every thread.
__device__ __forceinline__ float BlockSum(float v) {
  __shared__ float warp_sums[kNormThreads / 32];
  __shared__ float total;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < blockDim.x / 32 ? warp_sums[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

// One block per output row. Each thread writes only the elements it read, after the
// block's sum, so out may alias x (f32).
template <typename T>
__global__ void RmsNormRowsKernel(const float* x, int64_t ldx, const int32_t* rows, const float* weight, T* out,
                                  int64_t ldo, int64_t n, float eps) {
  WaitForPriorKernel();
  const int64_t r = blockIdx.x;
  const float* xr = x + (rows != nullptr ? static_cast<int64_t>(rows[r]) : r) * ldx;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += xr[i] * xr[i];
  const float scale = rsqrtf(BlockSum(sum) / static_cast<float>(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) Store(out + r * ldo, i, xr[i] * scale * weight[i]);
}

// One thread per (row, column): out[r] = src[rows[r]].
template <typename T>
__global__ void GatherRowsKernel(const T* src, const int32_t* rows, T* out, int64_t num_rows, int64_t n) {
  WaitForPriorKernel();
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= num_rows * n) return;
  out[idx] = src[static_cast<int64_t>(rows[idx / n]) * n + idx % n];
}

// One thread per (token, column), adding the token's k slots in slot order.
__global__ void AddWeightedRowsKernel(const float* src, const int32_t* slot_rows, const float* slot_weights,
                                      int64_t k, float* dst, int64_t num_tokens, int64_t n) {
  WaitForPriorKernel();
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= num_tokens * n) return;
  const int64_t t = idx / n, c = idx % n;
  float acc = dst[idx];
  for (int64_t j = 0; j < k; ++j) {
    const int32_t row = slot_rows[t * k + j];
    // One fused multiply-add per slot: the host's std::fma per expert (deepseek_moe.cc).
    if (row >= 0) acc = __fmaf_rn(slot_weights[t * k + j], src[static_cast<int64_t>(row) * n + c], acc);
  }
  dst[idx] = acc;
}

template <typename T>
__global__ void SiluMulRowsKernel(const T* gate_up, T* out, int64_t num_tokens, int64_t n) {
  WaitForPriorKernel();
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= num_tokens * n) return;
  const int64_t t = idx / n, i = idx % n;
  const float g = Load(gate_up, t * 2 * n + i);
  Store(out, idx, g / (1.0f + __expf(-g)) * Load(gate_up, t * 2 * n + n + i));
}

template <typename T>
__global__ void EmbeddingKernel(const T* table, int64_t width, const int32_t* ids, int64_t num_tokens, float* out,
                                int64_t first_id, int64_t num_ids) {
  WaitForPriorKernel();
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= num_tokens * width) return;
  const int64_t t = idx / width, i = idx % width;
  const int64_t row = static_cast<int64_t>(ids[t]) - first_id;
  out[idx] = row >= 0 && row < num_ids ? Load(table, row * width + i) : 0.0f;
}

__global__ void AddIntoKernel(const float* src, float* dst, int64_t n) {
  WaitForPriorKernel();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] += src[i];
}

__global__ void AddBiasKernel(float* y, int64_t num_tokens, int64_t ld, const float* bias, int64_t n) {
  WaitForPriorKernel();
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= num_tokens * n) return;
  y[(idx / n) * ld + idx % n] += bias[idx % n];
}

template <typename From, typename To>
__global__ void CastKernel(const From* src, To* dst, int64_t n) {
  WaitForPriorKernel();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) Store(dst, i, Load(src, i));
}

// splitmix64 of (seed, i): independent of the launch shape, so the same seed gives the
// same weights on any GPU.
__device__ __forceinline__ uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <typename T>
__global__ void FillUniformKernel(T* dst, int64_t n, uint64_t seed, float lo, float hi) {
  WaitForPriorKernel();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float u = static_cast<float>(Mix(seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(i)) >> 40) *
                    (1.0f / 16777216.0f);  // 24 bits: [0, 1)
    Store(dst, i, lo + (hi - lo) * u);
  }
}

unsigned Blocks(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

// Calls fn(T{}) with the CUDA element type of `act`.
template <typename Fn>
void WithActivationType(DType act, Fn&& fn) {
  WithFloatType(act, "activation type", fn);
}

}  // namespace

bool IsActivationType(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

void RmsNorm(cudaStream_t stream, DType act, void* x, const void* residual, const float* weight, void* out,
             int64_t num_tokens, int64_t n, float eps) {
  if (num_tokens == 0) return;
  WithActivationType(act, [&](auto zero) {
    using T = decltype(zero);
    LaunchKernel("RmsNormKernel", RmsNormKernel<T>, static_cast<unsigned>(num_tokens), kNormThreads, 0, stream,
        static_cast<T*>(x), static_cast<const T*>(residual), weight, static_cast<T*>(out), n, eps);
  });
}

void ApplyRope(cudaStream_t stream, DType act, void* x, int64_t num_tokens, int64_t ld, const int64_t* positions,
               int64_t num_heads, int64_t head_dim, int64_t rotary_dim, const float* cos, const float* sin,
               bool interleaved) {
  const int64_t work = num_tokens * num_heads * (rotary_dim / 2);
  if (work == 0) return;
  WithActivationType(act, [&](auto zero) {
    using T = decltype(zero);
    LaunchKernel("RopeKernel", RopeKernel<T>, Blocks(work, 256), 256, 0, stream, static_cast<T*>(x), num_tokens, ld,
        positions, num_heads, head_dim, rotary_dim, cos, sin, interleaved);
  });
}

void SiluMul(cudaStream_t stream, DType act, const void* gate, const void* up, void* out, int64_t n) {
  if (n == 0) return;
  WithActivationType(act, [&](auto zero) {
    using T = decltype(zero);
    LaunchKernel("SiluMulKernel", SiluMulKernel<T>, Blocks(n, 256), 256, 0, stream, static_cast<const T*>(gate),
        static_cast<const T*>(up), static_cast<T*>(out), n);
  });
}

void RmsNormRows(cudaStream_t stream, const float* x, const int32_t* rows, const float* weight, DType out_type,
                 void* out, int64_t num_rows, int64_t n, float eps) {
  if (num_rows == 0) return;
  WithActivationType(out_type, [&](auto zero) {
    using T = decltype(zero);
    LaunchKernel("RmsNormRowsKernel", RmsNormRowsKernel<T>, static_cast<unsigned>(num_rows), kNormThreads, 0, stream,
        x, n, rows, weight, static_cast<T*>(out), n, n, eps);
  });
}

void RmsNormStrided(cudaStream_t stream, const float* x, int64_t ldx, const float* weight, DType out_type, void* out,
                    int64_t ldo, int64_t num_rows, int64_t n, float eps) {
  if (num_rows == 0) return;
  WithActivationType(out_type, [&](auto zero) {
    using T = decltype(zero);
    LaunchKernel("RmsNormRowsKernel", RmsNormRowsKernel<T>, static_cast<unsigned>(num_rows), kNormThreads, 0, stream,
        x, ldx, nullptr, weight, static_cast<T*>(out), ldo, n, eps);
  });
}

void GatherRows(cudaStream_t stream, DType t, const void* src, const int32_t* rows, void* out, int64_t num_rows,
                int64_t n) {
  const int64_t work = num_rows * n;
  if (work == 0) return;
  WithActivationType(t, [&](auto zero) {
    using T = decltype(zero);
    LaunchKernel("GatherRowsKernel", GatherRowsKernel<T>, Blocks(work, 256), 256, 0, stream,
        static_cast<const T*>(src), rows, static_cast<T*>(out), num_rows, n);
  });
}

void AddWeightedRows(cudaStream_t stream, const float* src, const int32_t* slot_rows, const float* slot_weights,
                     int64_t k, float* dst, int64_t num_tokens, int64_t n) {
  const int64_t work = num_tokens * n;
  if (work == 0) return;
  LaunchKernel("AddWeightedRowsKernel", AddWeightedRowsKernel, Blocks(work, 256), 256, 0, stream, src, slot_rows,
      slot_weights, k, dst, num_tokens, n);
}

void SiluMulRows(cudaStream_t stream, DType act, const void* gate_up, void* out, int64_t num_tokens, int64_t n) {
  const int64_t work = num_tokens * n;
  if (work == 0) return;
  WithActivationType(act, [&](auto zero) {
    using T = decltype(zero);
    LaunchKernel("SiluMulRowsKernel", SiluMulRowsKernel<T>, Blocks(work, 256), 256, 0, stream,
        static_cast<const T*>(gate_up), static_cast<T*>(out), num_tokens, n);
  });
}

void EmbeddingLookup(cudaStream_t stream, DType table_type, const void* table, int64_t width, const int32_t* ids,
                     int64_t num_tokens, float* out, int64_t first_id, int64_t num_ids) {
  const int64_t work = num_tokens * width;
  if (work == 0) return;
  WithActivationType(table_type, [&](auto zero) {
    using T = decltype(zero);
    LaunchKernel("EmbeddingKernel", EmbeddingKernel<T>, Blocks(work, 256), 256, 0, stream,
        static_cast<const T*>(table), width, ids, num_tokens, out, first_id, num_ids);
  });
}

void AddInto(cudaStream_t stream, const float* src, float* dst, int64_t n) {
  if (n == 0) return;
  LaunchKernel("AddIntoKernel", AddIntoKernel, Blocks(n, 256), 256, 0, stream, src, dst, n);
}

void AddBias(cudaStream_t stream, float* y, int64_t num_tokens, int64_t ld, const float* bias, int64_t n) {
  const int64_t work = num_tokens * n;
  if (work == 0) return;
  LaunchKernel("AddBiasKernel", AddBiasKernel, Blocks(work, 256), 256, 0, stream, y, num_tokens, ld, bias, n);
}

void Cast(cudaStream_t stream, DType from, const void* src, DType to, void* dst, int64_t n) {
  if (n == 0) return;
  WithActivationType(from, [&](auto from_zero) {
    WithActivationType(to, [&](auto to_zero) {
      using From = decltype(from_zero);
      using To = decltype(to_zero);
      LaunchKernel("CastKernel", CastKernel<From, To>, Blocks(n, 256), 256, 0, stream, static_cast<const From*>(src),
          static_cast<To*>(dst), n);
    });
  });
}

void FillUniform(cudaStream_t stream, DType t, void* dst, int64_t n, uint64_t seed, float lo, float hi) {
  if (n == 0) return;
  WithActivationType(t, [&](auto zero) {
    using T = decltype(zero);
    // A grid-stride loop: billions of elements need no more than a few waves of blocks.
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65536));
    LaunchKernel("FillUniformKernel", FillUniformKernel<T>, blocks, 256, 0, stream, static_cast<T*>(dst), n, seed, lo,
        hi);
  });
}

}  // namespace shoal::worker::cuda
