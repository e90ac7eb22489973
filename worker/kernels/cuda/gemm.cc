#include "worker/kernels/cuda/gemm.h"

#include "worker/kernels/cuda/cuda_check.h"

namespace shoal::worker::cuda {
namespace {

cudaDataType_t CudaType(DType t) {
  switch (t) {
    case DType::kF32: return CUDA_R_32F;
    case DType::kF16: return CUDA_R_16F;
    case DType::kBF16: return CUDA_R_16BF;
    default: DieOnCudaError("GEMM element type", DTypeName(t).data(), __FILE__, __LINE__);
  }
}

}  // namespace

CublasGemm::CublasGemm(cudaStream_t stream) {
  SHOAL_CUBLAS_CHECK(cublasCreate(&handle_));
  SHOAL_CUBLAS_CHECK(cublasSetStream(handle_, stream));
}

CublasGemm::~CublasGemm() {
  if (handle_ != nullptr) cublasDestroy(handle_);
}

// cuBLAS is column-major: the row-major y[T, out] is the column-major yᵀ[out, T], which
// is W (column-major [in, out], transposed) times xᵀ (column-major [in, T]).
void CublasGemm::Run(DType ab, const void* x, const void* w, int64_t num_tokens, int64_t in, int64_t out,
                     DType y_type, void* y, bool accumulate) {
  if (num_tokens == 0 || out == 0) return;
  if (y_type != DType::kF32 && y_type != ab) {
    DieOnCudaError("GEMM output type (f32 or the inputs' type)", DTypeName(y_type).data(), __FILE__, __LINE__);
  }
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  SHOAL_CUBLAS_CHECK(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out),
                                  static_cast<int>(num_tokens), static_cast<int>(in), &alpha, w, CudaType(ab),
                                  static_cast<int>(in), x, CudaType(ab), static_cast<int>(in), &beta, y,
                                  CudaType(y_type), static_cast<int>(out), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace shoal::worker::cuda
