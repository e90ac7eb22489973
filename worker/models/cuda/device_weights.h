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

// Rows of a device weight matrix, for a GEMM (CudaDecoder::Gemm): elements of `dtype`,
// or FP8 codes with one row of block scales per weight row (worker/kernels/cuda/fp8.h).
struct MatrixView {
  const void* data = nullptr;
  const float* scales = nullptr;  // FP8 only
  DType dtype = DType::kBF16;
  int64_t rows = 0, cols = 0;
};

// A weight matrix on the device in the device weight type, or kept FP8 as the checkpoint
// ships it (one byte a weight: DeepSeek-V3's 671 B parameters fit where bf16's do not).
struct DeviceMatrix {
  cuda::DeviceBuffer data;
  cuda::DeviceBuffer scales;  // FP8: f32 [rows, Fp8ScaleCols(cols)]
  DType dtype = DType::kBF16;
  int64_t rows = 0, cols = 0;
  size_t bytes() const;
  MatrixView Rows(int64_t row_begin, int64_t rows) const;
  MatrixView All() const { return Rows(0, rows); }
};

// Whether matrix `name`'s slice can stay FP8: the checkpoint holds it as F8_E4M3 and a
// column slice starts on a scale block (true without a store: random FP8 weights).
bool KeepsFp8(const WeightStore* store, const std::string& name, const MatrixSlice& m);

absl::Status AllocateMatrix(const std::string& what, int64_t rows, int64_t cols, DType dtype, DeviceMatrix* m);

// The slice into dst, row_offset rows in: dequantized to dst.dtype, or for an FP8 matrix
// its codes and block scales as they are (INVALID_ARGUMENT unless the tensor is FP8).
absl::Status UploadMatrix(const WeightStore& store, const std::string& name, const MatrixSlice& m,
                          const DeviceMatrix& dst, int64_t row_offset);

}  // namespace shoal::worker
