#pragma once
// Products of a few rows with a weight matrix read straight from memory, one warp per two
// output rows (each activation load serves both): the shape of a decode step, bound by the weights' bytes, where a GEMM
// library's tiles sit mostly idle. One launch covers a whole stack of matrices, each group
// of rows multiplying its own: DeepSeekMoE's routed experts at decode, where every active
// expert has a few tokens, become one launch per projection instead of one cuBLAS call per
// expert and projection (at batch 64 on DeepSeek-V2-Lite, ~60 experts x 2 x 26 layers).
//
// Weights are f32, f16, bf16, or FP8 e4m3 codes with their per-row 128-column block scales
// (fp8.h); the inputs' and outputs' types are f32, f16 or bf16; accumulation is f32.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "worker/kernels/cuda/launch_types.h"
#include "worker/model/dtype.h"

namespace shoal::worker::cuda {

// Matrices of rows x cols (row stride cols), `matrix_stride` rows apart in one allocation
// (experts stacked): elements of dtype, or for kF8E4M3 codes with f32 block scales
// [rows, Fp8ScaleCols(cols)] per matrix, stacked the same way.
struct StackedMatrices {
  const void* data = nullptr;
  const float* scales = nullptr;  // kF8E4M3 only
  DType dtype = DType::kBF16;
  int64_t rows = 0, cols = 0;
  int64_t matrix_stride = 0;
};

// What a GEMV writes: the products, or, for a matrix whose rows are a SwiGLU's gate rows
// then its up rows ([2F, cols], as a gate_up projection is stored), silu(gate) * up per
// feature: y [*, F], where the products would have been [*, 2F] and a SiluMul after them.
// Saves that launch and the round trip of the products through memory; the products are
// still rounded to y's type before the SiLU, so both ways give the same numbers. Never
// with accumulate.
enum class GemvOutput { kProducts, kSiluGateTimesUp };

// For each of the num_groups groups (a device array) and each row r of it: y[r, o] =
// (accumulate ? y[r, o] : 0) + sum_i x[r, i] * W[o, i] over o < w.rows, W the group's
// matrix. x [*, cols] of x_type, y [*, rows] of y_type, dense rows. Any group size works;
// each 8 rows are one more walk along the weights, so past kGroupedGemvMaxRows a GEMM is
// the faster choice (callers plan that, step_plan.h's PlanExpertSlots). max_group_rows
// bounds every group's rows (a step's token count does): at 1 the launch takes a kernel
// that keeps more weight loads in flight, which a batch-1 step's products are bound by
// (a bigger group there is still multiplied right, a row at a time).
void GroupedGemv(cudaStream_t stream, const StackedMatrices& w, const GemvGroup* groups, int num_groups,
                 int64_t max_group_rows, DType x_type, const void* x, DType y_type, void* y, bool accumulate,
                 GemvOutput output = GemvOutput::kProducts);

// Rows a Gemv multiplies in one walk along the weights: up to here a decode step's dense
// products take it rather than a GEMM (CausalLMOptions.small_step_matmul).
constexpr int64_t kGemvMaxRows = 8;

// One group without a device array: rows [0, num_rows) of x and y times matrix 0.
void Gemv(cudaStream_t stream, const StackedMatrices& w, int64_t num_rows, DType x_type, const void* x, DType y_type,
          void* y, bool accumulate, GemvOutput output = GemvOutput::kProducts);

}  // namespace shoal::worker::cuda
