#pragma once
// Dense GEMMs through cuBLAS: y[T, out] = x[T, in] · W[out, in]ᵀ (+ y), the layout of the
// CPU Matmul, with f32 accumulation whatever the element types.
//
// cuBLAS is loaded with dlopen on first use rather than linked: libcublasLt carries ~94 KB
// of static TLS, which a linked library adds to every thread's stack, and threads created
// with a small fixed stack then fail to start (civetweb's, behind the Prometheus exposer
// of every worker, did). A dlopen'ed library's TLS is allocated per thread on demand.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "worker/model/dtype.h"

namespace shoal::worker::cuda {

// Loads libcublas.so.13 (the executable's RUNPATH or LD_LIBRARY_PATH) once; false with
// *why_not ("no cuBLAS: ...") when it or one of its entry points is missing. CublasGemm
// ends the process in that case, so callers that can report errors ask first.
bool LoadCublas(std::string* why_not);

class CublasGemm {
 public:
  explicit CublasGemm(cudaStream_t stream);  // LoadCublas must have succeeded
  ~CublasGemm();
  CublasGemm(const CublasGemm&) = delete;
  CublasGemm& operator=(const CublasGemm&) = delete;

  // x and w: the same type, kF32, kF16 or kBF16; y: kF32 or that type. With
  // `accumulate`, y += x·Wᵀ (the residual stream), else y = x·Wᵀ. Row strides are the
  // dense ones (in for x and w, out for y).
  void Run(DType ab, const void* x, const void* w, int64_t num_tokens, int64_t in, int64_t out, DType y_type,
           void* y, bool accumulate);

  // Gives cuBLAS its workspace (device memory outliving the handle), so a GEMM captured
  // into a CUDA graph allocates nothing; false when this cuBLAS lacks the call.
  bool SetWorkspace(void* workspace, size_t bytes);

  // A matrix of each batch entry b: data + b * stride elements, rows ld elements apart.
  struct Strided {
    const void* data = nullptr;
    int64_t ld = 0;
    int64_t stride = 0;
  };
  // For b < batch: y_b[rows, out] = x_b[rows, in] · W_bᵀ (+ y_b) where W_b is [out, in]
  // (w_out_by_in, the layout of Run), or x_b · W_b where it is [in, out]. y: row stride
  // ldy, entries stride_y apart. Per-head products, e.g. MLA's queries into latent space
  // through each head's slice of kv_b_proj.
  void RunBatched(DType ab, Strided x, Strided w, bool w_out_by_in, int64_t rows, int64_t in, int64_t out,
                  DType y_type, void* y, int64_t ldy, int64_t stride_y, int64_t batch, bool accumulate);

 private:
  cublasHandle_t handle_ = nullptr;
};

}  // namespace shoal::worker::cuda
