#pragma once
// The GPU's measured memory bandwidth, the denominator of every roofline the CUDA benches
// print.
#include <cuda_runtime_api.h>

#include <cstddef>

#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/device.h"

namespace shoal::worker {

// Bytes read plus bytes written per second by a large device-to-device copy: what a
// memory-bound kernel can hope for on this GPU. Both directions count because both cross
// the HBM bus: the rate is HBM traffic per second, and a decode step's traffic is almost
// all reads (weights, K/V), so the roofline divides the bytes a step reads by this rate.
// Counting the copy's bytes once would halve the roofline.
inline double CopyBandwidth(size_t bytes, int reps) {
  cuda::DeviceBuffer a(bytes), b(bytes);
  SHOAL_CUDA_CHECK(cudaMemset(a.data(), 1, bytes));
  SHOAL_CUDA_CHECK(cudaMemcpy(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice));  // warm-up
  cudaEvent_t start, stop;
  SHOAL_CUDA_CHECK(cudaEventCreate(&start));
  SHOAL_CUDA_CHECK(cudaEventCreate(&stop));
  SHOAL_CUDA_CHECK(cudaEventRecord(start));
  for (int i = 0; i < reps; ++i) {
    SHOAL_CUDA_CHECK(cudaMemcpyAsync(i % 2 ? a.data() : b.data(), i % 2 ? b.data() : a.data(), bytes,
                                     cudaMemcpyDeviceToDevice));
  }
  SHOAL_CUDA_CHECK(cudaEventRecord(stop));
  SHOAL_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  SHOAL_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return 2.0 * static_cast<double>(bytes) * reps / (ms * 1e-3);
}

}  // namespace shoal::worker
