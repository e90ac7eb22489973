#pragma once
// Random inputs for kernel tests: activations, and weight rows in every on-disk format
// with sane scales (random bytes for f16 scales would be NaNs and infinities).
#include <cstddef>
#include <cstring>
#include <random>
#include <vector>

#include "worker/kernels/cpu/quant.h"
#include "worker/model/dtype.h"

namespace shoal::worker::cpu::testing {

inline std::vector<float> RandomFloats(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// `rows` rows of `cols` elements of `dtype`, packed.
inline std::vector<std::byte> RandomWeights(DType dtype, int64_t rows, int64_t cols,
                                            std::mt19937& rng) {
  std::vector<std::byte> out(rows * RowBytes(dtype, cols));
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.002f, 0.05f);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  auto put16 = [&](size_t off, uint16_t v) { std::memcpy(out.data() + off, &v, 2); };
  size_t off = 0;
  if (!IsQuantized(dtype)) {
    for (int64_t i = 0; i < rows * cols; ++i) {
      const float f = normal(rng);
      if (dtype == DType::kF32) {
        std::memcpy(out.data() + off, &f, 4);
        off += 4;
      } else if (dtype == DType::kF16) {
        put16(off, FloatToHalf(f));
        off += 2;
      } else {
        uint32_t bits;
        std::memcpy(&bits, &f, 4);
        put16(off, static_cast<uint16_t>(bits >> 16));
        off += 2;
      }
    }
    return out;
  }
  const size_t block = BlockBytes(dtype);
  const size_t header = dtype == DType::kQ4_1 ? 4 : 2;
  for (size_t b = 0; b < out.size() / block; ++b) {
    const size_t base = b * block;
    put16(base, FloatToHalf(scale(rng)));
    if (dtype == DType::kQ4_1) put16(base + 2, FloatToHalf(-8.0f * scale(rng)));
    for (size_t j = header; j < block; ++j) out[base + j] = static_cast<std::byte>(byte(rng));
  }
  return out;
}

inline float MaxAbs(const std::vector<float>& v) {
  float m = 0;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

inline float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

}  // namespace shoal::worker::cpu::testing
