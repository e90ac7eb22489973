#pragma once
// Elementwise and per-row kernels of a decoder block on the GPU: RMSNorm (fused with the
// residual add, or from an f32 residual stream into the GEMMs' input type), RoPE, SiLU·up,
// embedding lookup, bias add and casts. Activations are f32, f16 or bf16 in device memory;
// every reduction and every product is computed in f32. All pointers are device
// pointers; each call is enqueued on `stream` and returns at once. The CPU kernels of
// worker/kernels/cpu are the reference (tests/kernels/cuda_kernels_test.cc).
#include <cuda_runtime_api.h>

#include <cstdint>

#include "worker/model/dtype.h"

namespace shoal::worker::cuda {

// Activation element types the kernels take.
bool IsActivationType(DType t);

// x: [T, n] rows of `act`. With `residual` (same shape and type) non-null, x += residual
// first (x is the residual stream); then out = x / rms(x) * weight, weight f32 [n].
// out may alias x only without a residual.
void RmsNorm(cudaStream_t stream, DType act, void* x, const void* residual, const float* weight, void* out,
             int64_t num_tokens, int64_t n, float eps);

// Rotates, in place, the first `rotary_dim` dimensions of `num_heads` heads of `head_dim`
// in each of T rows (row stride ld elements) by the angle of the row's position.
// cos/sin: [num_positions, rotary_dim / 2] f32 (the CPU RopeTable's tables, uploaded).
// interleaved: pairs (x[2i], x[2i+1]); otherwise (x[i], x[i + rotary_dim/2]).
void ApplyRope(cudaStream_t stream, DType act, void* x, int64_t num_tokens, int64_t ld, const int64_t* positions,
               int64_t num_heads, int64_t head_dim, int64_t rotary_dim, const float* cos, const float* sin,
               bool interleaved);

// out = silu(gate) * up over n elements; out may alias gate or up.
void SiluMul(cudaStream_t stream, DType act, const void* gate, const void* up, void* out, int64_t n);

// The decoder's norms: an f32 residual stream normalized into the next GEMM's input type.
// out[r] = x[rows[r]] / rms(x[rows[r]]) * weight for r < num_rows (rows null: row r), x
// f32 [*, n], weight f32 [n], out [num_rows, n] of `out_type`. With `rows`, the final
// norm gathers just the rows whose logits are wanted.
void RmsNormRows(cudaStream_t stream, const float* x, const int32_t* rows, const float* weight, DType out_type,
                 void* out, int64_t num_rows, int64_t n, float eps);

// RmsNormRows over strided rows: out[r * ldo ..] = x[r * ldx ..] / rms * weight for
// r < num_rows, n elements each; out may alias x (f32). DeepSeek normalizes its latents
// in place inside wider rows.
void RmsNormStrided(cudaStream_t stream, const float* x, int64_t ldx, const float* weight, DType out_type, void* out,
                    int64_t ldo, int64_t num_rows, int64_t n, float eps);

// out[r] = src[rows[r]] for r < num_rows, rows of n elements of `t` (a mixture of
// experts gathers each expert's tokens into one matrix).
void GatherRows(cudaStream_t stream, DType t, const void* src, const int32_t* rows, void* out, int64_t num_rows,
                int64_t n);

// dst[t] += slot_weights[t*k + j] * src[slot_rows[t*k + j]] for j = 0..k-1 in turn, for
// each of num_tokens rows of n f32 (one fused multiply-add per slot, as the CPU's
// per-expert std::fma); a slot row of -1 adds nothing (its expert lives on another rank). The
// routed experts' outputs back into the residual stream, deterministic (no atomics).
void AddWeightedRows(cudaStream_t stream, const float* src, const int32_t* slot_rows, const float* slot_weights,
                     int64_t k, float* dst, int64_t num_tokens, int64_t n);

// gate_up: [T, 2n] rows of `act`, each the gate's n features then the up projection's
// (one GEMM computes both); out[t] = silu(gate_up[t, :n]) * gate_up[t, n:], [T, n].
void SiluMulRows(cudaStream_t stream, DType act, const void* gate_up, void* out, int64_t num_tokens, int64_t n);

// out[t] = table row ids[t] - first_id, [num_tokens, width] f32; the table [num_ids, width]
// of f32, f16 or bf16 holds ids [first_id, first_id + num_ids). A row whose id is outside
// is zero: a tensor rank holds a slice of the vocabulary, and the ranks' rows add up to
// the embedding. Ids are validated by the caller.
void EmbeddingLookup(cudaStream_t stream, DType table_type, const void* table, int64_t width, const int32_t* ids,
                     int64_t num_tokens, float* out, int64_t first_id, int64_t num_ids);

// dst[i] += src[i] over n f32 (a tensor rank's all-reduced partial sums into the residual).
void AddInto(cudaStream_t stream, const float* src, float* dst, int64_t n);

// y[t * ld + i] += bias[i] for T rows of n (f32).
void AddBias(cudaStream_t stream, float* y, int64_t num_tokens, int64_t ld, const float* bias, int64_t n);

// dst = src converted (round to nearest even) over n elements of f32, f16 or bf16.
void Cast(cudaStream_t stream, DType from, const void* src, DType to, void* dst, int64_t n);

// n values uniform in [lo, hi) from a counter hash of (seed, index), rounded to `t`:
// weights for benchmarks of a model's shape, made in device memory without a file.
void FillUniform(cudaStream_t stream, DType t, void* dst, int64_t n, uint64_t seed, float lo, float hi);

}  // namespace shoal::worker::cuda
