#pragma once
// FP8 (e4m3fn) weights kept at one byte each on the GPU, as DeepSeek-V3/R1 ship them, with
// their 128-column block scales (the checkpoint's 128 x 128 `weight_scale_inv`, stored one
// row of block scales per weight row so any row range or stacking of matrices stays
// addressable): element (r, c) = e4m3(codes[r, c]) * scales[r, c / 128], exactly the f32
// product the CPU's FP8 matmul and Hugging Face's `fp8.float() * scale` compute.
//
// Decode steps (a few rows) multiply straight from the codes (Fp8Gemv: half the bytes of
// bf16 weights per token, the bandwidth a batch-1 step is bound by). Longer steps run on
// FP8 tensor cores with the activations quantized (fp8_gemm.h: Fp8QuantizeRows below), or
// widen the matrix into a scratch of the activations' type for cuBLAS (Fp8Dequantize).
#include <cuda_runtime_api.h>

#include <cstdint>

#include "worker/model/dtype.h"

namespace shoal::worker::cuda {

constexpr int64_t kFp8ScaleBlock = 128;  // columns sharing one scale
constexpr int64_t kFp8GemvMaxRows = 8;   // Fp8Gemv takes at most this many rows of x

// Scales per weight row: one per kFp8ScaleBlock columns.
constexpr int64_t Fp8ScaleCols(int64_t cols) { return (cols + kFp8ScaleBlock - 1) / kFp8ScaleBlock; }

// One FP8 matrix of `rows` x `cols` in device memory: codes row stride cols; scales
// [rows, Fp8ScaleCols(cols)] f32.
struct Fp8Matrix {
  const uint8_t* codes = nullptr;
  const float* scales = nullptr;
  int64_t rows = 0, cols = 0;
};

// y[t, o] = (accumulate ? y[t, o] : 0) + sum_i x[t, i] * W[o, i] for t < num_rows <=
// kFp8GemvMaxRows; x [num_rows, cols] of x_type (f32, f16 or bf16), y [num_rows, rows] f32
// or x_type, dense rows. The GEMV kernel (grouped_gemv.h), f32 accumulation.
void Fp8Gemv(cudaStream_t stream, const Fp8Matrix& w, DType x_type, const void* x, int64_t num_rows, DType y_type,
             void* y, bool accumulate);

// dst [rows, cols] of `to` (f32, f16 or bf16) = the dequantized matrix.
void Fp8Dequantize(cudaStream_t stream, const Fp8Matrix& w, DType to, void* dst);

// Where a [rows, Fp8ScaleCols(cols)] table of block scales lies: row by row (row r's
// scales together, the weights' own layout) or block by block (block b of every row
// together: scale (r, b) at b * ld + r).
struct Fp8ScaleLayout {
  bool by_block = false;
  int64_t ld = 0;  // by_block: elements from one block's scales to the next (>= rows)
  __host__ __device__ int64_t At(int64_t r, int64_t b, int64_t scale_cols) const { return by_block ? b * ld + r : r * scale_cols + b; }
};

// x [rows, cols] of x_type (f32, f16 or bf16) to FP8 with one scale per row and 128
// columns, as DeepSeek-V3 quantizes activations for its FP8 GEMMs: scale = amax / 448
// (1 for an all-zero block), code = e4m3(x / scale), saturating. codes [rows, cols];
// scales in `layout`.
void Fp8QuantizeRows(cudaStream_t stream, DType x_type, const void* x, int64_t rows, int64_t cols, uint8_t* codes,
                     float* scales, Fp8ScaleLayout layout);

// A weight's row-by-row block scales [rows, scale_cols] rewritten block by block into
// dst (ld elements apart), for a GEMM that wants them so.
void Fp8ScalesByBlock(cudaStream_t stream, const float* scales, int64_t rows, int64_t scale_cols, float* dst,
                      int64_t ld);

// Random weights of an FP8 matrix's shape for benchmarks: codes of values uniform in
// [-1, 1) from a counter hash of (seed, index), every block scale `bound`.
void Fp8FillUniform(cudaStream_t stream, uint8_t* codes, float* scales, int64_t rows, int64_t cols, uint64_t seed,
                    float bound);

}  // namespace shoal::worker::cuda
