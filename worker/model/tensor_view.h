#pragma once
// A read-only view of one weight tensor inside a mapped model file. The bytes belong to
// the WeightStore that handed out the view (usually an mmap), so views are cheap to copy
// and never own memory.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "worker/model/dtype.h"

namespace shoal::worker {

struct TensorView {
  std::string name;            // Hugging Face name, e.g. "model.layers.0.self_attn.q_proj.weight"
  DType dtype = DType::kF32;
  // Outermost dimension first, as in PyTorch: a Linear weight is [out_features, in_features]
  // and each row (one output feature) is contiguous.
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  size_t nbytes = 0;

  int64_t dim(int i) const { return shape[i]; }
  int64_t rows() const { return shape.size() == 1 ? 1 : shape[0]; }
  int64_t cols() const { return shape.back(); }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  // Bytes of one row (for 2-D tensors; the last dim is the row).
  size_t row_bytes() const { return RowBytes(dtype, cols()); }
  const std::byte* row(int64_t r) const { return data + r * row_bytes(); }
};

}  // namespace shoal::worker
