#pragma once
// Dense GEMMs through cuBLAS: y[T, out] = x[T, in] · W[out, in]ᵀ (+ y), the layout of the
// CPU Matmul, with f32 accumulation whatever the element types.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "worker/model/dtype.h"

namespace shoal::worker::cuda {

class CublasGemm {
 public:
  explicit CublasGemm(cudaStream_t stream);
  ~CublasGemm();
  CublasGemm(const CublasGemm&) = delete;
  CublasGemm& operator=(const CublasGemm&) = delete;

  // x and w: the same type, kF32, kF16 or kBF16; y: kF32 or that type. With
  // `accumulate`, y += x·Wᵀ (the residual stream), else y = x·Wᵀ. Row strides are the
  // dense ones (in for x and w, out for y).
  void Run(DType ab, const void* x, const void* w, int64_t num_tokens, int64_t in, int64_t out, DType y_type,
           void* y, bool accumulate);

 private:
  cublasHandle_t handle_ = nullptr;
};

}  // namespace shoal::worker::cuda
