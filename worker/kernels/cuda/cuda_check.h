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

// cuBLAS is loaded at run time (gemm.h), so its own cublasGetStatusString may not be
// there to call when a check fails.
inline const char* CublasStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
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
      ::shoal::worker::cuda::DieOnCudaError(#expr, ::shoal::worker::cuda::CublasStatusName(shoal_cublas_err_), \
                                            __FILE__, __LINE__);                                       \
    }                                                                                                  \
  } while (0)

// After a kernel launch: a bad launch configuration shows up here, not at the next sync.
#define SHOAL_CUDA_CHECK_LAUNCH() SHOAL_CUDA_CHECK(cudaGetLastError())
