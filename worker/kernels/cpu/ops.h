#pragma once
// Element-wise and row-wise operators of a transformer block: RMSNorm, rotary position
// embedding, SiLU gating, softmax, residual add and embedding lookup.
#include <cstdint>
#include <vector>

#include "worker/kernels/cpu/matmul.h"
#include "worker/model/model_config.h"

namespace shoal::worker {
class ThreadPool;
}

namespace shoal::worker::cpu {

// y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight, for T rows of n; y may alias x.
void RmsNorm(const float* x, const float* weight, float* y, int64_t num_tokens, int64_t n,
             float eps);

// Rotary frequencies for `rotary_dim` dimensions (pairs i = 0..rotary_dim/2-1), with the
// base `theta` and optional linear or llama3 scaling, tabulated as cos/sin per position so
// the per-token work is two FMAs per pair. The angles are computed in f32 the way GGML
// computes them (see Reserve), so rotations match llama.cpp's.
class RopeTable {
 public:
  RopeTable(int64_t rotary_dim, double theta, const RopeScaling& scaling, int64_t num_positions);
  int64_t rotary_dim() const { return rotary_dim_; }
  int64_t num_positions() const { return num_positions_; }
  // Grows the table to cover positions [0, n). Not thread-safe; call before parallel work.
  void Reserve(int64_t n);
  const float* cos(int64_t pos) const { return cos_.data() + pos * (rotary_dim_ / 2); }
  const float* sin(int64_t pos) const { return sin_.data() + pos * (rotary_dim_ / 2); }
  const std::vector<double>& inv_freq() const { return inv_freq_; }

 private:
  int64_t rotary_dim_;
  int64_t num_positions_ = 0;
  std::vector<double> inv_freq_;
  float step_ = 1.0f;                // theta^(-2/rotary_dim) in f32: pair i+1's angle / pair i's
  std::vector<float> freq_factor_;   // per pair, unscaled / scaled frequency (1 without scaling)
  std::vector<float> cos_, sin_;  // [num_positions, rotary_dim/2]
};

// Rotates, in place, `num_heads` heads of `head_dim` in each of T rows (row stride ld)
// by the angle of that row's position. interleaved: pairs (x[2i], x[2i+1]) (GGUF llama
// layout); otherwise pairs (x[i], x[i + d/2]) (Hugging Face rotate_half).
void ApplyRope(const RopeTable& table, float* x, int64_t num_tokens, int64_t ld,
               const int64_t* positions, int64_t num_heads, int64_t head_dim, bool interleaved);

// out = silu(gate) * up, n elements; out may alias gate or up.
void SiluMul(const float* gate, const float* up, float* out, int64_t n);

// In-place numerically stable softmax of n values.
void Softmax(float* x, int64_t n);

// y += x, n elements.
void AddInPlace(float* y, const float* x, int64_t n);

// out[t] = row ids[t] of the embedding table, dequantized to f32. Ids are validated by
// the caller.
void EmbeddingLookup(const WeightMatrix& table, const int32_t* ids, int64_t num_tokens,
                     float* out);

}  // namespace shoal::worker::cpu
