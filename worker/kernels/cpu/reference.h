#pragma once
// Plain scalar versions of every CPU kernel, written for clarity, not speed. The unit
// tests check the SIMD kernels against these; nothing on the serving path calls them.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "worker/kernels/cpu/attention.h"
#include "worker/kernels/cpu/matmul.h"
#include "worker/kernels/cpu/quant.h"

namespace shoal::worker::cpu::reference {

float HalfToFloat(uint16_t h);  // bit-level IEEE binary16 decoding
void DequantizeRow(DType dtype, const std::byte* src, float* dst, int64_t n);
void QuantizeRowQ8Act(const float* x, BlockQ8Act* y, int64_t n);

// y[t, o] = sum_i x[t, i] * W[o, i] in double, with W dequantized.
void Matmul(const float* x, int64_t num_tokens, const WeightMatrix& w, float* y);
// The same with x first rounded through 8-bit blocks, as the integer path does (Q4_1's min
// times the blocks' stored sums); quantized weights only. Agrees with the fast kernel up
// to float summation order.
void MatmulQuantizedActivations(const float* x, int64_t num_tokens, const WeightMatrix& w,
                                float* y);

void RmsNorm(const float* x, const float* weight, float* y, int64_t num_tokens, int64_t n,
             float eps);
// Rotation by angle pos * inv_freq[i] computed in double.
void Rope(float* x, int64_t num_tokens, int64_t ld, const int64_t* positions,
          int64_t num_heads, int64_t head_dim, const std::vector<double>& inv_freq,
          bool interleaved);
void SiluMul(const float* gate, const float* up, float* out, int64_t n);
void Softmax(float* x, int64_t n);

// Causal attention with K/V gathered position by position from the paged cache, scores
// in a full buffer and a two-pass softmax in double.
void PagedAttention(const PagedKvLayer& cache, std::span<const AttentionSequence> seqs,
                    const float* q, int64_t ldq, int64_t num_heads, float scale, float* out,
                    int64_t ldo);

}  // namespace shoal::worker::cpu::reference
