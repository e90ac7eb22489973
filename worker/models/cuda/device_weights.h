#pragma once
// Weights from a mapped checkpoint into device memory: a rank's slice of a matrix
// dequantized on the host row by row (GGUF blocks, f16/bf16/f32, FP8 with block scales)
// and stored as the device weight type, and 1-D parameters as f32. Shared by the CUDA
// decoders (cuda_llama.cc, cuda_deepseek.cc).
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "worker/kernels/cuda/device.h"
#include "worker/model/dtype.h"
#include "worker/model/weight_store.h"
#include "worker/models/linear.h"

namespace shoal::worker {

// Bytes of one element of a device weight or activation type (f32, f16, bf16).
size_t ElementBytes(DType t);

// RESOURCE_EXHAUSTED naming `what`, the bytes asked for and the device's free bytes.
absl::Status OutOfDeviceMemory(const std::string& what, size_t bytes);
absl::Status Allocate(const std::string& what, size_t bytes, cuda::DeviceBuffer* out);

// Which part of a [full_rows, full_cols] file matrix a rank keeps: rows [row_begin,
// row_begin + rows) (a column-parallel shard) and columns [col_begin, col_begin + cols)
// (a row-parallel one); the whole matrix for a single rank.
struct MatrixSlice {
  int64_t full_rows = 0, full_cols = 0;
  int64_t row_begin = 0, rows = 0;
  int64_t col_begin = 0, cols = 0;

  static MatrixSlice Whole(int64_t rows, int64_t cols) { return {rows, cols, 0, rows, 0, cols}; }
  // Output features split: this shard's rows.
  static MatrixSlice Columns(int64_t rows, int64_t cols, ShardOf s) {
    const int64_t n = rows / s.count;
    return {rows, cols, n * s.rank, n, 0, cols};
  }
  // Input features split: this shard's columns of every row.
  static MatrixSlice Rows(int64_t rows, int64_t cols, ShardOf s) {
    const int64_t n = cols / s.count;
    return {rows, cols, 0, rows, n * s.rank, n};
  }
};

// The slice of matrix `name` (any dtype DequantizeRow reads, or F8_E4M3 with its 128x128
// block scales `<name>_scale_inv`), stored as `to` at dst, `row_offset` rows in (stacked
// matrices such as q/k/v share one device matrix). Only the slice's rows of the mapped
// file are read, so a rank touches only its shard's pages. INVALID_ARGUMENT naming the
// file and tensor for a wrong shape or dtype.
absl::Status UploadMatrix(const WeightStore& store, const std::string& name, const MatrixSlice& m, DType to,
                          const cuda::DeviceBuffer& dst, int64_t row_offset);

// Elements [begin, begin + n) of the 1-D parameter `name` of full_n (a norm weight, a
// bias or a rank's slice of one) as f32 at dst + offset elements.
absl::Status UploadVector(const WeightStore& store, const std::string& name, int64_t full_n, int64_t begin, int64_t n,
                          const cuda::DeviceBuffer& dst, int64_t offset);
inline absl::Status UploadVector(const WeightStore& store, const std::string& name, int64_t n,
                                 const cuda::DeviceBuffer& dst) {
  return UploadVector(store, name, n, 0, n, dst, 0);
}

}  // namespace shoal::worker
