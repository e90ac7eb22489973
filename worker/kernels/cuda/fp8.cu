#include "worker/kernels/cuda/fp8.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cfloat>
#include <type_traits>

#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/elements.cuh"
#include "worker/kernels/cuda/grouped_gemv.h"
#include "worker/kernels/cuda/launch.cuh"

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
  WaitForPriorKernel();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t n = w.rows * w.cols, scale_cols = ScaleCols(w.cols);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    const int64_t r = e / w.cols, c = e % w.cols;
    Store(dst, e, E4M3(w.codes[e]) * w.scales[r * scale_cols + c / kFp8ScaleBlock]);
  }
}

constexpr float kE4M3Max = 448.0f;

// One warp per (row, 128-column block): lanes take 4 columns each, the block's amax by
// shuffles, then each lane writes its codes.
template <typename X>
__global__ void Fp8QuantizeRowsKernel(const X* x, int64_t rows, int64_t cols, uint8_t* codes, float* scales,
                                      Fp8ScaleLayout layout) {
  WaitForPriorKernel();
  const int64_t scale_cols = ScaleCols(cols);
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (warp >= rows * scale_cols) return;
  const int lane = threadIdx.x % 32;
  const int64_t r = warp / scale_cols, b = warp % scale_cols;
  constexpr int kPerLane = kFp8ScaleBlock / 32;
  float v[kPerLane];
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t c = b * kFp8ScaleBlock + lane * kPerLane + j;
    v[j] = c < cols ? Load(x, r * cols + c) : 0.0f;
    amax = fmaxf(amax, fabsf(v[j]));
  }
  for (int offset = 16; offset > 0; offset /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
  // A block of tiny values keeps a normal scale (amax / 448 would flush to 0, then NaN codes).
  const float scale = amax > 0.0f ? fmaxf(amax / kE4M3Max, FLT_MIN) : 1.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t c = b * kFp8ScaleBlock + lane * kPerLane + j;
    if (c < cols) codes[r * cols + c] = __nv_cvt_float_to_fp8(v[j] / scale, __NV_SATFINITE, __NV_E4M3);
  }
  if (lane == 0) scales[layout.At(r, b, scale_cols)] = scale;
}

__global__ void Fp8ScalesByBlockKernel(const float* scales, int64_t rows, int64_t scale_cols, float* dst, int64_t ld) {
  WaitForPriorKernel();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * scale_cols; i += stride) {
    const int64_t b = i / rows, r = i % rows;  // consecutive threads write consecutive rows of a block
    dst[b * ld + r] = scales[r * scale_cols + b];
  }
}

__device__ __forceinline__ uint64_t Mix(uint64_t z) {  // splitmix64, as ops.cu's FillUniform
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__global__ void Fp8FillKernel(uint8_t* codes, float* scales, int64_t n, int64_t num_scales, uint64_t seed,
                              float bound) {
  WaitForPriorKernel();
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
    LaunchKernel("Fp8DequantizeKernel", Fp8DequantizeKernel<T>, blocks, 256, 0, stream, w, static_cast<T*>(dst));
  });
}

void Fp8QuantizeRows(cudaStream_t stream, DType x_type, const void* x, int64_t rows, int64_t cols, uint8_t* codes,
                     float* scales, Fp8ScaleLayout layout) {
  const int64_t warps = rows * Fp8ScaleCols(cols);
  if (warps == 0) return;
  WithType(x_type, [&](auto zero) {
    using X = decltype(zero);
    const unsigned blocks = static_cast<unsigned>((warps + 7) / 8);
    LaunchKernel("Fp8QuantizeRowsKernel", Fp8QuantizeRowsKernel<X>, blocks, 256, 0, stream, static_cast<const X*>(x),
        rows, cols, codes, scales, layout);
  });
}

void Fp8ScalesByBlock(cudaStream_t stream, const float* scales, int64_t rows, int64_t scale_cols, float* dst,
                      int64_t ld) {
  const int64_t n = rows * scale_cols;
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65536));
  LaunchKernel("Fp8ScalesByBlockKernel", Fp8ScalesByBlockKernel, blocks, 256, 0, stream, scales, rows, scale_cols, dst,
      ld);
}

void Fp8FillUniform(cudaStream_t stream, uint8_t* codes, float* scales, int64_t rows, int64_t cols, uint64_t seed,
                    float bound) {
  const int64_t n = rows * cols, num_scales = rows * Fp8ScaleCols(cols);
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((std::max(n, num_scales) + 255) / 256, 65536));
  LaunchKernel("Fp8FillKernel", Fp8FillKernel, blocks, 256, 0, stream, codes, scales, std::max(n, num_scales),
      num_scales, seed, bound);
}

}  // namespace shoal::worker::cuda
