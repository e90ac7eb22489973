// The five cuBLAS entry points worker/kernels/cuda/gemm.cc loads (dlopen "libcublas.so.13"),
// computed on the CPU for the SIMT emulator: column-major GEMMs over f32/f16/bf16 with f32
// accumulation, issued on the handle's stream (so a captured graph replays them). Built as
// libcublas.so.13 next to the emulated runtime, where the simt tests' dlopen finds it.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>

struct cublasContext {
  cudaStream_t stream = nullptr;
};

namespace shoal::simt {
void IssueOnStream(cudaStream_t stream, std::function<void()> work);
}  // namespace shoal::simt

namespace {

float LoadAs(const void* p, cudaDataType t, int64_t i) {
  switch (t) {
    case CUDA_R_32F: return static_cast<const float*>(p)[i];
    case CUDA_R_16F: return __half2float(static_cast<const __half*>(p)[i]);
    default: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  }
}

void StoreAs(void* p, cudaDataType t, int64_t i, float v) {
  switch (t) {
    case CUDA_R_32F: static_cast<float*>(p)[i] = v; return;
    case CUDA_R_16F: static_cast<__half*>(p)[i] = __float2half_rn(v); return;
    default: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); return;
  }
}

bool Supported(cudaDataType t) { return t == CUDA_R_32F || t == CUDA_R_16F || t == CUDA_R_16BF; }

size_t ElementBytes(cudaDataType t) { return t == CUDA_R_32F ? 4 : 2; }

struct GemmArgs {
  cublasOperation_t ta, tb;
  int m, n, k;
  float alpha, beta;
  const void* a;
  cudaDataType at;
  int lda;
  const void* b;
  cudaDataType bt;
  int ldb;
  void* c;
  cudaDataType ct;
  int ldc;
};

// C = alpha op(A) op(B) + beta C, column-major; beta 0 does not read C (cuBLAS's rule).
// The sum runs in k order, one rounding per product and per addition; with
// SHOAL_SIMT_GPU_ARITHMETIC it is summed as a tensor-core GEMM would: fused multiply-adds
// over chunks of 16 along k, the chunks' sums added in turn.
void Gemm(const GemmArgs& g) {
#if defined(SHOAL_SIMT_GPU_ARITHMETIC)
  constexpr int kChunk = 16;
#endif
  for (int j = 0; j < g.n; ++j) {
    for (int i = 0; i < g.m; ++i) {
      float sum = 0.0f;
#if defined(SHOAL_SIMT_GPU_ARITHMETIC)
      float chunk = 0.0f;
#endif
      for (int l = 0; l < g.k; ++l) {
        const int64_t ai = g.ta == CUBLAS_OP_N ? i + int64_t{l} * g.lda : l + int64_t{i} * g.lda;
        const int64_t bi = g.tb == CUBLAS_OP_N ? l + int64_t{j} * g.ldb : j + int64_t{l} * g.ldb;
#if defined(SHOAL_SIMT_GPU_ARITHMETIC)
        chunk = std::fma(LoadAs(g.a, g.at, ai), LoadAs(g.b, g.bt, bi), chunk);
        if ((l + 1) % kChunk == 0 || l + 1 == g.k) sum += chunk, chunk = 0.0f;
#else
        sum += LoadAs(g.a, g.at, ai) * LoadAs(g.b, g.bt, bi);
#endif
      }
      const int64_t ci = i + int64_t{j} * g.ldc;
      const float prior = g.beta != 0.0f ? g.beta * LoadAs(g.c, g.ct, ci) : 0.0f;
      StoreAs(g.c, g.ct, ci, g.alpha * sum + prior);
    }
  }
}

cublasStatus_t Check(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                     cudaDataType at, int lda, cudaDataType bt, int ldb, cudaDataType ct, int ldc,
                     cublasComputeType_t compute) {
  if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (compute != CUBLAS_COMPUTE_32F || !Supported(at) || !Supported(bt) || !Supported(ct)) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (m < 0 || n < 0 || k < 0 || (ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T)) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  // cuBLAS's leading-dimension rules.
  if (lda < std::max(1, ta == CUBLAS_OP_N ? m : k) || ldb < std::max(1, tb == CUBLAS_OP_N ? k : n) ||
      ldc < std::max(1, m)) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void*, size_t) {
  return handle != nullptr ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t) {
  const cublasStatus_t st = Check(handle, transa, transb, m, n, k, Atype, lda, Btype, ldb, Ctype, ldc, computeType);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  const GemmArgs g{transa, transb, m, n, k, *static_cast<const float*>(alpha), *static_cast<const float*>(beta),
                   A, Atype, lda, B, Btype, ldb, C, Ctype, ldc};
  shoal::simt::IssueOnStream(handle->stream, [g] { Gemm(g); });
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void* alpha, const void* A, cudaDataType Atype,
                                          int lda, long long int strideA, const void* B, cudaDataType Btype, int ldb,
                                          long long int strideB, const void* beta, void* C, cudaDataType Ctype,
                                          int ldc, long long int strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t) {
  const cublasStatus_t st = Check(handle, transa, transb, m, n, k, Atype, lda, Btype, ldb, Ctype, ldc, computeType);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  if (batchCount < 0) return CUBLAS_STATUS_INVALID_VALUE;
  const GemmArgs g{transa, transb, m, n, k, *static_cast<const float*>(alpha), *static_cast<const float*>(beta),
                   A, Atype, lda, B, Btype, ldb, C, Ctype, ldc};
  shoal::simt::IssueOnStream(handle->stream, [g, strideA, strideB, strideC, batchCount] {
    for (int i = 0; i < batchCount; ++i) {
      GemmArgs one = g;
      one.a = static_cast<const char*>(g.a) + i * strideA * static_cast<long long>(ElementBytes(g.at));
      one.b = static_cast<const char*>(g.b) + i * strideB * static_cast<long long>(ElementBytes(g.bt));
      one.c = static_cast<char*>(g.c) + i * strideC * static_cast<long long>(ElementBytes(g.ct));
      Gemm(one);
    }
  });
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
