#include "tests/kernels/mma_tile.h"

#include <cuda_runtime.h>

#include "worker/kernels/cuda/async_copy.cuh"
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

__global__ void MatrixLoadsKernel(const uint16_t* matrix, int unread_row, uint32_t* out) {
  WaitForPriorKernel();
  constexpr int kRowWords = 8 + 4;  // 16 elements and a 16-byte pad, as the attention tiles' rows
  __shared__ __align__(16) uint32_t tile[16][kRowWords];
  const int lane = static_cast<int>(threadIdx.x);
  // Lane l copies half h = l % 2 of row l / 2.
  const int r = lane / 2, h = lane % 2;
  CopyAsync16(&tile[r][4 * h], matrix + 16 * r + 8 * h, r != unread_row);
  CommitCopies();
  WaitCopies<0>();
  __syncthreads();
  const int i = lane / 8;
  const uint32_t* row = &tile[8 * (i % 2) + lane % 8][4 * (i / 2)];
  uint32_t m[4], mt[4];
  LoadMatrices<false>(row, m);
  LoadMatrices<true>(row, mt);
  for (int k = 0; k < 4; ++k) {
    out[8 * lane + k] = m[k];
    out[8 * lane + 4 + k] = mt[k];
  }
}

}  // namespace

void MatrixLoadsForTest(const uint16_t* matrix, int unread_row, uint32_t* out) {
  LaunchKernel("MatrixLoadsKernel", MatrixLoadsKernel, 1, 32, 0, nullptr, matrix, unread_row, out);
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
}

void MmaTileForTest(DType t, const float* a, const uint16_t* b, float* c, bool split) {
  if (t == DType::kF16) {
    LaunchKernel("MmaTileKernel", MmaTileKernel<__half>, 1, 32, 0, nullptr, a, b, c, split);
  } else {
    LaunchKernel("MmaTileKernel", MmaTileKernel<__nv_bfloat16>, 1, 32, 0, nullptr, a, b, c, split);
  }
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace shoal::worker::cuda
