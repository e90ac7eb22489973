#pragma once
// Elementwise and per-row kernels of a decoder block on the GPU: RMSNorm (fused with the
// residual add), RoPE and SiLU·up. Activations are f32, f16 or bf16 in device memory;
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

}  // namespace shoal::worker::cuda
