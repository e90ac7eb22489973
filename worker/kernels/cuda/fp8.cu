#include "worker/kernels/cuda/fp8.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <type_traits>

#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/elements.cuh"
#include "worker/kernels/cuda/grouped_gemv.h"

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
  if (num_rows > kFp8GemvMaxRows) DieOnCudaError("Fp8Gemv", "more rows than kFp8GemvMaxRows", __FILE__, __LINE__);
  Gemv(stream, StackedMatrices{w.codes, w.scales, DType::kF8E4M3, w.rows, w.cols, w.rows}, num_rows, x_type, x,
       y_type, y, accumulate);
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
