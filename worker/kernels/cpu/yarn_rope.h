#pragma once
// Rotary embeddings for DeepSeek's decoupled rotary key/query parts, computed the way
// Hugging Face's DeepSeek-V2/V3 code computes them, including YaRN context extension:
//   inv_freq[i] = blend of 1/theta^(2i/d) (extrapolation, kept for high-frequency pairs
//                 that rotate more than beta_fast times over the original context) and
//                 the same divided by `factor` (interpolation, for pairs rotating fewer
//                 than beta_slow times), with a linear ramp between;
//   cos, sin    = cos/sin(f32(pos) * inv_freq) * attention_factor, where attention_factor
//                 = mscale(factor, mscale) / mscale(factor, mscale_all_dim);
//   the softmax scale is qk_head_dim^-0.5 * mscale(factor, mscale_all_dim)^2
//   (MlaSoftmaxScale).
// The frequencies are rounded to f32 at the same points as the reference's f32 tensors.
#include <cstdint>
#include <vector>

#include "worker/model/model_config.h"

namespace shoal::worker::cpu {

// DeepSeek's yarn_get_mscale: 0.1 * mscale * ln(scale) + 1 for scale > 1, else 1.
double YarnGetMscale(double scale, double mscale);

// 1/sqrt(qk_head_dim), times mscale(factor, mscale_all_dim)^2 when the rope is scaled
// and mscale_all_dim is set.
double MlaSoftmaxScale(int64_t qk_head_dim, const RopeScaling& scaling);

class YarnRopeTable {
 public:
  // Scaling types kNone, kLinear and kYarn; kLlama3 is not a DeepSeek scaling (the
  // model rejects it before building a table).
  YarnRopeTable(int64_t rotary_dim, double theta, const RopeScaling& scaling, int64_t num_positions);
  int64_t rotary_dim() const { return rotary_dim_; }
  int64_t num_positions() const { return num_positions_; }
  float attention_factor() const { return attention_factor_; }
  const std::vector<float>& inv_freq() const { return inv_freq_; }
  // Grows the table to cover positions [0, n). Not thread-safe; call before parallel work.
  void Reserve(int64_t n);
  const float* cos(int64_t pos) const { return cos_.data() + pos * (rotary_dim_ / 2); }
  const float* sin(int64_t pos) const { return sin_.data() + pos * (rotary_dim_ / 2); }

 private:
  int64_t rotary_dim_;
  int64_t num_positions_ = 0;
  float attention_factor_ = 1.0f;
  std::vector<float> inv_freq_;   // [rotary_dim/2]
  std::vector<float> cos_, sin_;  // [num_positions, rotary_dim/2], attention_factor included
};

// Rotates, in place, the first rotary_dim elements of `num_heads` vectors in each of T
// rows: vector h of row t starts at x + t*ld + h*head_stride. interleaved: pairs
// (x[2i], x[2i+1]) (DeepSeek's layout: HF V2's complex product, V3's
// apply_rotary_pos_emb_interleave up to a permutation shared by q and k); otherwise
// pairs (x[i], x[i + d/2]).
void ApplyYarnRope(const YarnRopeTable& table, float* x, int64_t num_tokens, int64_t ld,
                   const int64_t* positions, int64_t num_heads, int64_t head_stride, bool interleaved);

}  // namespace shoal::worker::cpu
