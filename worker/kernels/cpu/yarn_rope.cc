#include "worker/kernels/cpu/yarn_rope.h"

#include <algorithm>
#include <cmath>

namespace shoal::worker::cpu {

double YarnGetMscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

double MlaSoftmaxScale(int64_t qk_head_dim, const RopeScaling& scaling) {
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim));
  if (scaling.type != RopeScaling::Type::kNone && scaling.mscale_all_dim != 0.0) {
    const double m = YarnGetMscale(scaling.factor, scaling.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

namespace {

// The dimension (as a fractional pair index times 2) at which a frequency completes
// `num_rotations` turns over `max_pos` positions.
double CorrectionDim(double num_rotations, int64_t dim, double base, double max_pos) {
  return (static_cast<double>(dim) * std::log(max_pos / (num_rotations * 2.0 * M_PI))) /
         (2.0 * std::log(base));
}

}  // namespace

YarnRopeTable::YarnRopeTable(int64_t rotary_dim, double theta, const RopeScaling& s,
                             int64_t num_positions)
    : rotary_dim_(rotary_dim) {
  const int64_t half = rotary_dim / 2;
  inv_freq_.resize(half);
  // base ** (arange(0, d, 2) / d) in f32, as the reference's tensors.
  std::vector<float> pos_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(rotary_dim);
    pos_freq[i] = std::pow(static_cast<float>(theta), exponent);
  }
  switch (s.type) {
    case RopeScaling::Type::kYarn: {
      const float factor = static_cast<float>(s.factor);
      double low = CorrectionDim(s.beta_fast, rotary_dim, theta, static_cast<double>(s.original_max_position_embeddings));
      double high = CorrectionDim(s.beta_slow, rotary_dim, theta, static_cast<double>(s.original_max_position_embeddings));
      if (s.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(rotary_dim - 1));
      if (low == high) high += 0.001;  // no zero-width ramp
      const float lo = static_cast<float>(low), span = static_cast<float>(high - low);
      for (int64_t i = 0; i < half; ++i) {
        const float extrapolated = 1.0f / pos_freq[i];
        const float interpolated = 1.0f / (factor * pos_freq[i]);
        const float ramp = std::clamp((static_cast<float>(i) - lo) / span, 0.0f, 1.0f);
        const float keep = 1.0f - ramp;  // share of the extrapolated (unscaled) frequency
        inv_freq_[i] = interpolated * (1.0f - keep) + extrapolated * keep;
      }
      if (s.attention_factor) {
        attention_factor_ = static_cast<float>(*s.attention_factor);
      } else if (s.mscale != 0.0 && s.mscale_all_dim != 0.0) {
        attention_factor_ = static_cast<float>(YarnGetMscale(s.factor, s.mscale) /
                                               YarnGetMscale(s.factor, s.mscale_all_dim));
      } else {
        attention_factor_ = static_cast<float>(YarnGetMscale(s.factor, 1.0));
      }
      break;
    }
    case RopeScaling::Type::kLinear:
      for (int64_t i = 0; i < half; ++i) inv_freq_[i] = 1.0f / pos_freq[i] / static_cast<float>(s.factor);
      break;
    case RopeScaling::Type::kNone:
    case RopeScaling::Type::kLlama3:
      for (int64_t i = 0; i < half; ++i) inv_freq_[i] = 1.0f / pos_freq[i];
      break;
  }
  Reserve(num_positions);
}

void YarnRopeTable::Reserve(int64_t n) {
  if (n <= num_positions_) return;
  const int64_t half = rotary_dim_ / 2;
  cos_.resize(n * half);
  sin_.resize(n * half);
  for (int64_t p = num_positions_; p < n; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * inv_freq_[i];
      cos_[p * half + i] = std::cos(angle) * attention_factor_;
      sin_[p * half + i] = std::sin(angle) * attention_factor_;
    }
  }
  num_positions_ = n;
}

void ApplyYarnRope(const YarnRopeTable& table, float* x, int64_t num_tokens, int64_t ld,
                   const int64_t* positions, int64_t num_heads, int64_t head_stride, bool interleaved) {
  const int64_t half = table.rotary_dim() / 2;
  for (int64_t t = 0; t < num_tokens; ++t) {
    const float* c = table.cos(positions[t]);
    const float* s = table.sin(positions[t]);
    for (int64_t h = 0; h < num_heads; ++h) {
      float* v = x + t * ld + h * head_stride;
      for (int64_t i = 0; i < half; ++i) {
        float* a = interleaved ? &v[2 * i] : &v[i];
        float* b = interleaved ? &v[2 * i + 1] : &v[i + half];
        const float xa = *a, xb = *b;
        *a = xa * c[i] - xb * s[i];
        *b = xb * c[i] + xa * s[i];
      }
    }
  }
}

}  // namespace shoal::worker::cpu
