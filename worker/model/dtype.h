#pragma once
// Element types of weights as they sit on disk. Block-quantized types store `BlockSize()`
// elements in `BlockBytes()` bytes (the GGML layouts: Q8_0 = f16 scale + 32 int8;
// Q4_0 = f16 scale + 16 bytes of nibbles; Q4_1 = f16 scale + f16 min + 16 bytes).
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace shoal::worker {

enum class DType : uint8_t {
  kF32,
  kF16,
  kBF16,
  kQ8_0,
  kQ4_0,
  kQ4_1,
  kF8E4M3,  // DeepSeek-V3 FP8 weights (scaled by 128x128 blocks of weight_scale_inv)
  kI32,
  kI64,
};

constexpr int64_t BlockSize(DType t) {
  switch (t) {
    case DType::kQ8_0:
    case DType::kQ4_0:
    case DType::kQ4_1:
      return 32;
    default:
      return 1;
  }
}

constexpr size_t BlockBytes(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kQ8_0: return 2 + 32;
    case DType::kQ4_0: return 2 + 16;
    case DType::kQ4_1: return 2 + 2 + 16;
    case DType::kF8E4M3: return 1;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
  }
  return 0;
}

constexpr bool IsQuantized(DType t) { return BlockSize(t) > 1; }

// Bytes of `n` consecutive elements; `n` must be a multiple of BlockSize(t).
constexpr size_t RowBytes(DType t, int64_t n) {
  return static_cast<size_t>(n / BlockSize(t)) * BlockBytes(t);
}

constexpr std::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kQ8_0: return "Q8_0";
    case DType::kQ4_0: return "Q4_0";
    case DType::kQ4_1: return "Q4_1";
    case DType::kF8E4M3: return "F8_E4M3";
    case DType::kI32: return "I32";
    case DType::kI64: return "I64";
  }
  return "?";
}

}  // namespace shoal::worker
