#include "worker/kernels/cuda/fp8.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <type_traits>

#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/elements.cuh"

namespace shoal::worker::cuda {
namespace {

// e4m3fn code -> its exact value (every e4m3 value is a half, so the conversion through
// half is exact; 0x7f / 0xff are NaN, as on the CPU).
__device__ __forceinline__ float E4M3(uint8_t code) {
  __nv_fp8_e4m3 v;
  v.__x = code;
  return static_cast<float>(v);
}

// Fp8ScaleCols, for device code.
__device__ __forceinline__ int64_t ScaleCols(int64_t cols) { return (cols + kFp8ScaleBlock - 1) / kFp8ScaleBlock; }

constexpr int kGemvWarps = 8;

// One warp per output row o. Lanes take 16 consecutive codes at a time (one 16-byte
// load when the row is aligned for it), all inside one scale block.
template <typename X, typename Y>
__global__ void Fp8GemvKernel(Fp8Matrix w, const X* x, int64_t num_rows, Y* y, bool accumulate) {
  const int lane = threadIdx.x % 32;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kGemvWarps + threadIdx.x / 32;
  if (o >= w.rows) return;  // whole warps only: o is the same on every lane
  const uint8_t* row = w.codes + o * w.cols;
  const float* scales = w.scales + o * ScaleCols(w.cols);
  float acc[kFp8GemvMaxRows] = {};
  const bool vector = w.cols % 16 == 0 && (reinterpret_cast<uintptr_t>(row) % 16) == 0;
  for (int64_t i0 = static_cast<int64_t>(lane) * 16; i0 < w.cols; i0 += 32 * 16) {
    alignas(16) uint8_t codes[16];
    if (vector) {
      *reinterpret_cast<uint4*>(codes) = *reinterpret_cast<const uint4*>(row + i0);
    } else {
      for (int j = 0; j < 16; ++j) codes[j] = i0 + j < w.cols ? row[i0 + j] : 0;
    }
    // The 16 columns share one block scale (16 divides kFp8ScaleBlock).
    const float scale = scales[i0 / kFp8ScaleBlock];
    const int n = w.cols - i0 < 16 ? static_cast<int>(w.cols - i0) : 16;
    if (n == 16) {
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const float wv = E4M3(codes[j]) * scale;
        for (int64_t t = 0; t < num_rows; ++t) acc[t] += wv * Load(x, t * w.cols + i0 + j);
      }
    } else {
      for (int j = 0; j < n; ++j) {
        const float wv = E4M3(codes[j]) * scale;
        for (int64_t t = 0; t < num_rows; ++t) acc[t] += wv * Load(x, t * w.cols + i0 + j);
      }
    }
  }
  for (int64_t t = 0; t < num_rows; ++t) {
    float v = acc[t];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) Store(y, t * w.rows + o, accumulate ? Load(y, t * w.rows + o) + v : v);
  }
}

template <typename T>
__global__ void Fp8DequantizeKernel(Fp8Matrix w, T* dst) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t n = w.rows * w.cols, scale_cols = ScaleCols(w.cols);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    const int64_t r = e / w.cols, c = e % w.cols;
    Store(dst, e, E4M3(w.codes[e]) * w.scales[r * scale_cols + c / kFp8ScaleBlock]);
  }
}

__device__ __forceinline__ uint64_t Mix(uint64_t z) {  // splitmix64, as ops.cu's FillUniform
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__global__ void Fp8FillKernel(uint8_t* codes, float* scales, int64_t n, int64_t num_scales, uint64_t seed,
                              float bound) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float u = static_cast<float>(Mix(seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(i)) >> 40) *
                    (2.0f / 16777216.0f) - 1.0f;
    codes[i] = __nv_fp8_e4m3(u).__x;
    if (i < num_scales) scales[i] = bound;
  }
}

template <typename Fn>
void WithType(DType t, Fn&& fn) {
  WithFloatType(t, "FP8 operand type", fn);
}

}  // namespace

void Fp8Gemv(cudaStream_t stream, const Fp8Matrix& w, DType x_type, const void* x, int64_t num_rows, DType y_type,
             void* y, bool accumulate) {
  if (num_rows == 0 || w.rows == 0) return;
  if (num_rows > kFp8GemvMaxRows) DieOnCudaError("Fp8Gemv", "more rows than kFp8GemvMaxRows", __FILE__, __LINE__);
  const unsigned blocks = static_cast<unsigned>((w.rows + kGemvWarps - 1) / kGemvWarps);
  WithType(x_type, [&](auto xz) {
    WithType(y_type, [&](auto yz) {
      using X = decltype(xz);
      using Y = decltype(yz);
      Fp8GemvKernel<X, Y><<<blocks, 32 * kGemvWarps, 0, stream>>>(w, static_cast<const X*>(x), num_rows,
                                                                   static_cast<Y*>(y), accumulate);
    });
  });
  SHOAL_CUDA_CHECK_LAUNCH();
}

void Fp8Dequantize(cudaStream_t stream, const Fp8Matrix& w, DType to, void* dst) {
  const int64_t n = w.rows * w.cols;
  if (n == 0) return;
  WithType(to, [&](auto zero) {
    using T = decltype(zero);
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65536));
    Fp8DequantizeKernel<T><<<blocks, 256, 0, stream>>>(w, static_cast<T*>(dst));
  });
  SHOAL_CUDA_CHECK_LAUNCH();
}

void Fp8FillUniform(cudaStream_t stream, uint8_t* codes, float* scales, int64_t rows, int64_t cols, uint64_t seed,
                    float bound) {
  const int64_t n = rows * cols, num_scales = rows * Fp8ScaleCols(cols);
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((std::max(n, num_scales) + 255) / 256, 65536));
  Fp8FillKernel<<<blocks, 256, 0, stream>>>(codes, scales, std::max(n, num_scales), num_scales, seed, bound);
  SHOAL_CUDA_CHECK_LAUNCH();
}

}  // namespace shoal::worker::cuda
