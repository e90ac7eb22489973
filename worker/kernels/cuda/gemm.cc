#include "worker/kernels/cuda/gemm.h"

#include <dlfcn.h>

#include <string>

#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/dl_library.h"

namespace shoal::worker::cuda {
namespace {

// The cuBLAS entry points used, resolved from the loaded library (cublas_v2.h maps
// cublasCreate and friends to their _v2 symbols).
struct CublasApi {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  // The C entry point (C++ sees an overload set): compute type as cublasComputeType_t.
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                            const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                            cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
  decltype(&cublasSetWorkspace_v2) set_workspace = nullptr;  // optional
  cublasStatus_t (*gemm_strided_batched_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                            const void*, const void*, cudaDataType, int, long long, const void*,
                                            cudaDataType, int, long long, const void*, void*, cudaDataType, int,
                                            long long, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
};

struct LoadedCublas {
  CublasApi api;
  std::string error;  // empty when loaded
};

const LoadedCublas& Cublas() {
  static const LoadedCublas* loaded = [] {
    auto* l = new LoadedCublas();  // never freed: cuBLAS stays loaded for the process
    void* h = OpenLibrary({"libcublas.so.13", "libcublas.so"}, "cuBLAS", &l->error);
    if (h == nullptr) return l;
    ResolveSymbol(h, "cublasCreate_v2", "cuBLAS", &l->api.create, &l->error);
    ResolveSymbol(h, "cublasDestroy_v2", "cuBLAS", &l->api.destroy, &l->error);
    ResolveSymbol(h, "cublasSetStream_v2", "cuBLAS", &l->api.set_stream, &l->error);
    ResolveSymbol(h, "cublasGemmEx", "cuBLAS", &l->api.gemm_ex, &l->error);
    ResolveSymbol(h, "cublasGemmStridedBatchedEx", "cuBLAS", &l->api.gemm_strided_batched_ex, &l->error);
    l->api.set_workspace = reinterpret_cast<decltype(&cublasSetWorkspace_v2)>(dlsym(h, "cublasSetWorkspace_v2"));
    return l;
  }();
  return *loaded;
}

const CublasApi& Api() {
  const LoadedCublas& l = Cublas();
  if (!l.error.empty()) DieOnCudaError("cuBLAS", l.error.c_str(), __FILE__, __LINE__);
  return l.api;
}

cudaDataType_t CudaType(DType t) {
  switch (t) {
    case DType::kF32: return CUDA_R_32F;
    case DType::kF16: return CUDA_R_16F;
    case DType::kBF16: return CUDA_R_16BF;
    default: DieOnCudaError("GEMM element type", DTypeName(t).data(), __FILE__, __LINE__);
  }
}

}  // namespace

bool LoadCublas(std::string* why_not) {
  const LoadedCublas& l = Cublas();
  if (l.error.empty()) return true;
  *why_not = l.error;
  return false;
}

CublasGemm::CublasGemm(cudaStream_t stream) {
  SHOAL_CUBLAS_CHECK(Api().create(&handle_));
  SHOAL_CUBLAS_CHECK(Api().set_stream(handle_, stream));
}

bool CublasGemm::SetWorkspace(void* workspace, size_t bytes) {
  return Api().set_workspace != nullptr && Api().set_workspace(handle_, workspace, bytes) == CUBLAS_STATUS_SUCCESS;
}

CublasGemm::~CublasGemm() {
  if (handle_ != nullptr) Api().destroy(handle_);
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
  SHOAL_CUBLAS_CHECK(Api().gemm_ex(handle_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out),
                                   static_cast<int>(num_tokens), static_cast<int>(in), &alpha, w, CudaType(ab),
                                   static_cast<int>(in), x, CudaType(ab), static_cast<int>(in), &beta, y,
                                   CudaType(y_type), static_cast<int>(out), CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
}

// Column-major per entry: yᵀ[out, rows] = op(A) · xᵀ[in, rows], where A is W's row-major
// storage read column-major: [in, out] for an [out, in] W (op = T), [out, in] for an
// [in, out] W (op = N).
void CublasGemm::RunBatched(DType ab, Strided x, Strided w, bool w_out_by_in, int64_t rows, int64_t in, int64_t out,
                            DType y_type, void* y, int64_t ldy, int64_t stride_y, int64_t batch, bool accumulate) {
  if (rows == 0 || out == 0 || batch == 0) return;
  if (y_type != DType::kF32 && y_type != ab) {
    DieOnCudaError("GEMM output type (f32 or the inputs' type)", DTypeName(y_type).data(), __FILE__, __LINE__);
  }
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  SHOAL_CUBLAS_CHECK(Api().gemm_strided_batched_ex(
      handle_, w_out_by_in ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(rows),
      static_cast<int>(in), &alpha, w.data, CudaType(ab), static_cast<int>(w.ld), w.stride, x.data, CudaType(ab),
      static_cast<int>(x.ld), x.stride, &beta, y, CudaType(y_type), static_cast<int>(ldy), stride_y,
      static_cast<int>(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace shoal::worker::cuda
