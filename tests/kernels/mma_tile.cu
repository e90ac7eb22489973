#include "tests/kernels/mma_tile.h"

#include <cuda_runtime.h>

#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/elements.cuh"
#include "worker/kernels/cuda/launch.cuh"
#include "worker/kernels/cuda/mma.cuh"

namespace shoal::worker::cuda {
namespace {

template <typename T>
__global__ void MmaTileKernel(const float* a, const uint16_t* b, float* c, bool split) {
  WaitForPriorKernel();
  const int lane = static_cast<int>(threadIdx.x), g = lane / 4, t = lane % 4;
  uint32_t hi[4], lo[4];
  for (int f = 0; f < 4; ++f) {
    const int row = g + 8 * (f % 2), col = 2 * t + 8 * (f / 2);
    const float x0 = a[row * 16 + col], x1 = a[row * 16 + col + 1];
    if (split) {
      SplitPair<T>(x0, x1, hi[f], lo[f]);
    } else {
      hi[f] = PackPair<T>(x0, x1);
    }
  }
  uint32_t bf[2];
  for (int f = 0; f < 2; ++f) {
    const int k = 2 * t + 8 * f;  // rows k, k + 1 of column g
    bf[f] = static_cast<uint32_t>(b[k * 8 + g]) | (static_cast<uint32_t>(b[(k + 1) * 8 + g]) << 16);
  }
  float acc[4];
  for (int f = 0; f < 4; ++f) acc[f] = c[(g + 8 * (f / 2)) * 8 + 2 * t + f % 2];
  MmaM16N8K16<T>(acc, hi, bf);
  if (split) MmaM16N8K16<T>(acc, lo, bf);
  for (int f = 0; f < 4; ++f) c[(g + 8 * (f / 2)) * 8 + 2 * t + f % 2] = acc[f];
}

}  // namespace

void MmaTileForTest(DType t, const float* a, const uint16_t* b, float* c, bool split) {
  if (t == DType::kF16) {
    LaunchKernel("MmaTileKernel", MmaTileKernel<__half>, 1, 32, 0, nullptr, a, b, c, split);
  } else {
    LaunchKernel("MmaTileKernel", MmaTileKernel<__nv_bfloat16>, 1, 32, 0, nullptr, a, b, c, split);
  }
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace shoal::worker::cuda
