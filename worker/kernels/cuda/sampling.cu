#include "worker/kernels/cuda/sampling.h"

#include <cmath>

#include "worker/kernels/cuda/cuda_check.h"

namespace shoal::worker::cuda {
namespace {

constexpr int kThreads = 512;

// (value, index) pairs ordered by value, then by the lower index.
__device__ __forceinline__ bool Better(float v, int64_t i, float best, int64_t best_i) {
  return v > best || (v == best && i < best_i);
}

// One block per row: threads scan strided slices, then warps and the block reduce.
__global__ void ArgmaxKernel(const float* logits, int64_t n, int32_t* out) {
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * n;
  float best = -INFINITY;
  int64_t best_i = n;  // "none yet": loses every comparison with a real index at -inf
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = row[i];
    if (!isnan(v) && Better(v, i, best, best_i)) best = v, best_i = i;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    const float v = __shfl_xor_sync(0xffffffffu, best, offset);
    const int64_t i = __shfl_xor_sync(0xffffffffu, best_i, offset);
    if (Better(v, i, best, best_i)) best = v, best_i = i;
  }
  __shared__ float warp_best[kThreads / 32];
  __shared__ int64_t warp_i[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_best[warp] = best, warp_i[warp] = best_i;
  __syncthreads();
  if (warp == 0) {
    best = lane < blockDim.x / 32 ? warp_best[lane] : -INFINITY;
    best_i = lane < blockDim.x / 32 ? warp_i[lane] : n;
    for (int offset = 16; offset > 0; offset /= 2) {
      const float v = __shfl_xor_sync(0xffffffffu, best, offset);
      const int64_t i = __shfl_xor_sync(0xffffffffu, best_i, offset);
      if (Better(v, i, best, best_i)) best = v, best_i = i;
    }
    // A row of NaNs only: token 0, as std::max_element would answer.
    if (lane == 0) out[blockIdx.x] = static_cast<int32_t>(best_i < n ? best_i : 0);
  }
}

}  // namespace

void ArgmaxRows(cudaStream_t stream, const float* logits, int64_t num_rows, int64_t n, int32_t* out) {
  if (num_rows == 0) return;
  ArgmaxKernel<<<static_cast<unsigned>(num_rows), kThreads, 0, stream>>>(logits, n, out);
  SHOAL_CUDA_CHECK_LAUNCH();
}

}  // namespace shoal::worker::cuda
