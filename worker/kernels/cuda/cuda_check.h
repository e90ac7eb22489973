#pragma once
// CUDA and cuBLAS failures are programming or hardware errors, not bad input: they end the
// process with the device, file and line, and Kubernetes restarts the pod (STYLE.md).
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>

namespace shoal::worker::cuda {

[[noreturn]] inline void DieOnCudaError(const char* what, const char* message, const char* file, int line) {
  int device = -1;
  cudaGetDevice(&device);
  std::fprintf(stderr, "fatal: CUDA error on device %d at %s:%d: %s: %s\n", device, file, line, what, message);
  std::abort();
}

}  // namespace shoal::worker::cuda

#define SHOAL_CUDA_CHECK(expr)                                                                    \
  do {                                                                                            \
    const cudaError_t shoal_cuda_err_ = (expr);                                                   \
    if (shoal_cuda_err_ != cudaSuccess) {                                                         \
      ::shoal::worker::cuda::DieOnCudaError(#expr, cudaGetErrorString(shoal_cuda_err_), __FILE__, \
                                            __LINE__);                                            \
    }                                                                                             \
  } while (0)

#define SHOAL_CUBLAS_CHECK(expr)                                                                       \
  do {                                                                                                 \
    const cublasStatus_t shoal_cublas_err_ = (expr);                                                   \
    if (shoal_cublas_err_ != CUBLAS_STATUS_SUCCESS) {                                                  \
      ::shoal::worker::cuda::DieOnCudaError(#expr, cublasGetStatusString(shoal_cublas_err_), __FILE__, \
                                            __LINE__);                                                 \
    }                                                                                                  \
  } while (0)

// After a kernel launch: a bad launch configuration shows up here, not at the next sync.
#define SHOAL_CUDA_CHECK_LAUNCH() SHOAL_CUDA_CHECK(cudaGetLastError())
