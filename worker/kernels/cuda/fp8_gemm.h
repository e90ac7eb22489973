#pragma once
// FP8 x FP8 GEMMs on tensor cores (Hopper, sm_90) with DeepSeek-V3's block scaling,
// through cuBLASLt: y[T, out] = x[T, in] · Wᵀ for an FP8 W with per-row 128-column block
// scales (fp8.h) and x quantized on the fly to FP8 with one scale per row and 128 columns
// (Fp8QuantizeRows). That is W8A8 with fine-grained scales, the recipe DeepSeek-V3 was
// trained with and that its reference inference, vLLM and SGLang serve it with: each weight
// byte is read once, where the exact path (Fp8Dequantize, then a bf16 GEMM) writes and
// reads a bf16 copy of the matrix. Activations lose precision to e4m3 (3 mantissa bits
// under a per-128 scale), which is why the decoder keeps the exact path selectable
// (CausalLMOptions.fp8_gemm).
//
// cuBLASLt describes the layout of its scale tables in its documentation, not in its
// header, and no test can read that. So Create checks before it trusts: it runs one
// product of an awkward shape under each candidate layout of the two tables against the
// exact product and keeps the first that matches. With none (or no cuBLASLt, or no kernel
// for the GPU) it says why, and the caller keeps widening.
//
// cuBLASLt is dlopen'ed, as cuBLAS is (gemm.h says why).
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "worker/kernels/cuda/device.h"
#include "worker/kernels/cuda/fp8.h"
#include "worker/model/dtype.h"

namespace shoal::worker::cuda {

class CublasGemm;

// Where cuBLASLt reads each scale table from (the probe's finding).
struct Fp8GemmLayouts {
  bool weights_by_block = false;      // else the weights' own row-by-row table
  bool activations_by_block = false;  // else row by row
  bool pad_to_4 = false;              // by block: rows of a block's scales rounded up to 4
  std::string Describe() const;
};

class Fp8BlockGemm {
 public:
  // nullptr with *why_not when cuBLASLt, a block-scaled FP8 kernel for this GPU or a
  // scale layout that gives the exact product is missing. `reference` computes the exact
  // product the probe compares with; both run on `stream`, which Create synchronizes.
  static std::unique_ptr<Fp8BlockGemm> Create(cudaStream_t stream, CublasGemm* reference, std::string* why_not);
  ~Fp8BlockGemm();
  Fp8BlockGemm(const Fp8BlockGemm&) = delete;
  Fp8BlockGemm& operator=(const Fp8BlockGemm&) = delete;

  // The device scratch Run needs for T rows times a [rows, cols] matrix.
  size_t ScratchBytes(int64_t T, int64_t rows, int64_t cols) const;

  // Whether Run takes this product: W's rows a multiple of 16 and columns of 128 (the
  // tensor cores' tiles; every DeepSeek projection is), and a kernel cuBLASLt offers.
  bool Supports(int64_t T, int64_t rows, int64_t cols, DType y_type, bool accumulate);

  // y [T, w.rows] of y_type (f32, f16 or bf16) = (accumulate ? y : 0) + x · Wᵀ, x
  // [T, w.cols] of x_type. Supports() must hold; scratch at least ScratchBytes.
  void Run(const Fp8Matrix& w, DType x_type, const void* x, int64_t T, DType y_type, void* y, bool accumulate,
           void* scratch);

  const Fp8GemmLayouts& layouts() const { return layouts_; }

 private:
  struct Plan;
  static constexpr size_t kMaxPlans = 512;
  Fp8BlockGemm(cudaStream_t stream, Fp8GemmLayouts layouts, void* handle);
  // Run's work, its cuBLASLt status returned (the probe tries layouts that may fail).
  int Enqueue(const Fp8Matrix& w, DType x_type, const void* x, int64_t T, DType y_type, void* y, bool accumulate,
              void* scratch);
  // The descriptors and algorithm for one shape, made on first use; nullptr when
  // cuBLASLt offers no kernel for it.
  Plan* PlanFor(int64_t T, int64_t rows, int64_t cols, DType y_type, bool accumulate);

  cudaStream_t stream_;
  Fp8GemmLayouts layouts_;
  void* handle_ = nullptr;  // cublasLtHandle_t
  DeviceBuffer workspace_;
  std::map<std::tuple<int64_t, int64_t, int64_t, DType, bool>, std::unique_ptr<Plan>> plans_;
};

}  // namespace shoal::worker::cuda
