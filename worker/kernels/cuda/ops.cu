#include "worker/kernels/cuda/ops.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "worker/kernels/cuda/cuda_check.h"

namespace shoal::worker::cuda {
namespace {

template <typename T>
__device__ __forceinline__ float Load(const T* p, int64_t i) {
  if constexpr (std::is_same_v<T, float>) {
    return p[i];
  } else if constexpr (std::is_same_v<T, __half>) {
    return __half2float(p[i]);
  } else {
    return __bfloat162float(p[i]);
  }
}

template <typename T>
__device__ __forceinline__ void Store(T* p, int64_t i, float v) {
  if constexpr (std::is_same_v<T, float>) {
    p[i] = v;
  } else if constexpr (std::is_same_v<T, __half>) {
    p[i] = __float2half_rn(v);
  } else {
    p[i] = __float2bfloat16_rn(v);
  }
}

constexpr int kNormThreads = 256;

// One block per row: each thread sums the squares of a strided slice, warps reduce with
// shuffles, the block through shared memory.
template <typename T>
__global__ void RmsNormKernel(T* x, const T* residual, const float* weight, T* out, int64_t n, float eps) {
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
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = Load(gate, i);
  Store(out, i, g / (1.0f + __expf(-g)) * Load(up, i));
}

unsigned Blocks(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

// Calls fn(T{}) with the CUDA element type of `act`.
template <typename Fn>
void WithActivationType(DType act, Fn&& fn) {
  switch (act) {
    case DType::kF32: fn(float{}); return;
    case DType::kF16: fn(__half{}); return;
    case DType::kBF16: fn(__nv_bfloat16{}); return;
    default:
      DieOnCudaError("activation type", DTypeName(act).data(), __FILE__, __LINE__);
  }
}

}  // namespace

bool IsActivationType(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

void RmsNorm(cudaStream_t stream, DType act, void* x, const void* residual, const float* weight, void* out,
             int64_t num_tokens, int64_t n, float eps) {
  if (num_tokens == 0) return;
  WithActivationType(act, [&](auto zero) {
    using T = decltype(zero);
    RmsNormKernel<T><<<static_cast<unsigned>(num_tokens), kNormThreads, 0, stream>>>(
        static_cast<T*>(x), static_cast<const T*>(residual), weight, static_cast<T*>(out), n, eps);
  });
  SHOAL_CUDA_CHECK_LAUNCH();
}

void ApplyRope(cudaStream_t stream, DType act, void* x, int64_t num_tokens, int64_t ld, const int64_t* positions,
               int64_t num_heads, int64_t head_dim, int64_t rotary_dim, const float* cos, const float* sin,
               bool interleaved) {
  const int64_t work = num_tokens * num_heads * (rotary_dim / 2);
  if (work == 0) return;
  WithActivationType(act, [&](auto zero) {
    using T = decltype(zero);
    RopeKernel<T><<<Blocks(work, 256), 256, 0, stream>>>(static_cast<T*>(x), num_tokens, ld, positions, num_heads,
                                                         head_dim, rotary_dim, cos, sin, interleaved);
  });
  SHOAL_CUDA_CHECK_LAUNCH();
}

void SiluMul(cudaStream_t stream, DType act, const void* gate, const void* up, void* out, int64_t n) {
  if (n == 0) return;
  WithActivationType(act, [&](auto zero) {
    using T = decltype(zero);
    SiluMulKernel<T><<<Blocks(n, 256), 256, 0, stream>>>(static_cast<const T*>(gate), static_cast<const T*>(up),
                                                         static_cast<T*>(out), n);
  });
  SHOAL_CUDA_CHECK_LAUNCH();
}

}  // namespace shoal::worker::cuda
