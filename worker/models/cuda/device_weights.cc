#include "worker/models/cuda/device_weights.h"

#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "worker/common/status_macros.h"
#include "worker/kernels/cpu/fp8_matmul.h"
#include "worker/kernels/cpu/ops.h"
#include "worker/kernels/cpu/quant.h"
#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/fp8.h"
#include "worker/model/model_checks.h"

namespace shoal::worker {

using cuda::DeviceBuffer;

// One FP8 scale block, as the checkpoint checks, the CPU matmul and the GPU kernels see it.
static_assert(kFp8ScaleBlockSize == cpu::kFp8BlockSize && kFp8ScaleBlockSize == cuda::kFp8ScaleBlock);

size_t ElementBytes(DType t) { return t == DType::kF32 ? 4 : 2; }

namespace {

uint16_t FloatToBf16(float f) {  // round to nearest even, as __float2bfloat16_rn
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

// Host floats → `to` (f32, f16 or bf16) at dst.
void ConvertFloats(const float* src, int64_t n, DType to, std::byte* dst) {
  if (to == DType::kF32) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  uint16_t* h = reinterpret_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) h[i] = to == DType::kF16 ? cpu::FloatToHalf(src[i]) : FloatToBf16(src[i]);
}

// Host rows are converted in pieces of about this many bytes, so a large matrix never
// needs a second whole copy in host memory.
constexpr size_t kUploadChunkBytes = 32u << 20;

}  // namespace

absl::Status OutOfDeviceMemory(const std::string& what, size_t bytes) {
  size_t free_bytes = 0, total = 0;
  cuda::DeviceMemory(&free_bytes, &total);
  return absl::ResourceExhaustedError(fmt::format("{}: {} bytes do not fit on the GPU ({} of {} bytes free)", what,
                                                  bytes, free_bytes, total));
}

absl::Status Allocate(const std::string& what, size_t bytes, DeviceBuffer* out) {
  if (!DeviceBuffer::TryAllocate(bytes, out)) return OutOfDeviceMemory(what, bytes);
  return absl::OkStatus();
}

absl::Status UploadMatrix(const WeightStore& store, const std::string& name, const MatrixSlice& m, DType to,
                          const DeviceBuffer& dst, int64_t row_offset) {
  ASSIGN_OR_RETURN(const TensorView* t, store.Get(name));
  if (t->shape.size() != 2 || t->shape[0] != m.full_rows || t->shape[1] != m.full_cols) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor '{}' has shape [{}], expected [{}, {}]", store.Source(),
                                                  name, fmt::join(t->shape, ", "), m.full_rows, m.full_cols));
  }
  const std::byte* scales_bytes = nullptr;  // the mapped f32 block scales, maybe unaligned
  int64_t scale_stride = 0;
  if (t->dtype == DType::kF8E4M3) {
    ASSIGN_OR_RETURN(const TensorView* s, FindFp8BlockScales(store, name, m.full_rows, m.full_cols));
    scale_stride = s->shape[1];
    scales_bytes = reinterpret_cast<const std::byte*>(s->data);
  } else if (!cpu::MatmulSupports(t->dtype)) {
    return absl::InvalidArgumentError(
        fmt::format("{}: tensor '{}' has dtype {}, which the CUDA model cannot load", store.Source(), name,
                    DTypeName(t->dtype)));
  }
  const size_t out_row = m.cols * ElementBytes(to);
  if ((row_offset + m.rows) * out_row > dst.bytes()) {
    return absl::InternalError(fmt::format("tensor '{}': rows [{}, {}) past its device matrix", name, row_offset,
                                           row_offset + m.rows));
  }
  const int64_t chunk_rows = std::max<int64_t>(1, static_cast<int64_t>(kUploadChunkBytes / out_row));
  std::vector<float> f(m.full_cols);
  std::vector<std::byte> host(std::min(m.rows, chunk_rows) * out_row);
  for (int64_t r0 = 0; r0 < m.rows; r0 += chunk_rows) {
    const int64_t n = std::min(chunk_rows, m.rows - r0);
    for (int64_t r = 0; r < n; ++r) {
      const int64_t row = m.row_begin + r0 + r;
      // Whole rows: quantized blocks and FP8 scale blocks span columns of other shards.
      if (scales_bytes != nullptr) {
        const uint8_t* codes = reinterpret_cast<const uint8_t*>(t->row(row));
        std::vector<float> srow(scale_stride);
        std::memcpy(srow.data(), scales_bytes + (row / cpu::kFp8BlockSize) * scale_stride * sizeof(float),
                    scale_stride * sizeof(float));
        for (int64_t c = 0; c < m.full_cols; ++c) f[c] = cpu::E4M3ToFloat(codes[c]) * srow[c / cpu::kFp8BlockSize];
      } else {
        cpu::DequantizeRow(t->dtype, t->row(row), f.data(), m.full_cols);
      }
      ConvertFloats(f.data() + m.col_begin, m.cols, to, host.data() + r * out_row);
    }
    SHOAL_CUDA_CHECK(cudaMemcpy(dst.as<std::byte>() + (row_offset + r0) * out_row, host.data(), n * out_row,
                                cudaMemcpyHostToDevice));
  }
  return absl::OkStatus();
}

absl::Status UploadVector(const WeightStore& store, const std::string& name, int64_t full_n, int64_t begin, int64_t n,
                          const DeviceBuffer& dst, int64_t offset) {
  ASSIGN_OR_RETURN(const TensorView* t, store.Get(name));
  if (t->shape.size() != 1 || t->shape[0] != full_n ||
      (t->dtype != DType::kF32 && t->dtype != DType::kF16 && t->dtype != DType::kBF16)) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor '{}' is {} of shape [{}], expected F32, F16 or BF16 [{}]",
                                                  store.Source(), name, DTypeName(t->dtype),
                                                  fmt::join(t->shape, ", "), full_n));
  }
  std::vector<float> f(full_n);
  cpu::DequantizeRow(t->dtype, t->data, f.data(), full_n);
  SHOAL_CUDA_CHECK(cudaMemcpy(dst.as<float>() + offset, f.data() + begin, n * sizeof(float), cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

size_t DeviceMatrix::bytes() const { return data.bytes() + scales.bytes(); }

MatrixView DeviceMatrix::Rows(int64_t row_begin, int64_t n) const {
  MatrixView v{nullptr, nullptr, dtype, n, cols};
  if (dtype == DType::kF8E4M3) {
    v.data = data.as<std::byte>() + row_begin * cols;
    v.scales = scales.as<float>() + row_begin * cuda::Fp8ScaleCols(cols);
  } else {
    v.data = data.as<std::byte>() + row_begin * cols * ElementBytes(dtype);
  }
  return v;
}

bool KeepsFp8(const WeightStore* store, const std::string& name, const MatrixSlice& m) {
  if (store == nullptr) return true;  // random weights of an FP8 model's shape
  const TensorView* t = store->Find(name);
  // A column slice must start on a scale block for its rows of block scales to be whole.
  return t != nullptr && t->dtype == DType::kF8E4M3 && m.col_begin % cuda::kFp8ScaleBlock == 0;
}

absl::Status AllocateMatrix(const std::string& what, int64_t rows, int64_t cols, DType dtype, DeviceMatrix* m) {
  m->dtype = dtype;
  m->rows = rows;
  m->cols = cols;
  if (dtype != DType::kF8E4M3) return Allocate(what, rows * cols * ElementBytes(dtype), &m->data);
  RETURN_IF_ERROR(Allocate(what, rows * cols, &m->data));
  return Allocate(what + " scales", rows * cuda::Fp8ScaleCols(cols) * sizeof(float), &m->scales);
}

absl::Status UploadMatrix(const WeightStore& store, const std::string& name, const MatrixSlice& m,
                          const DeviceMatrix& dst, int64_t row_offset) {
  if (dst.dtype != DType::kF8E4M3) return UploadMatrix(store, name, m, dst.dtype, dst.data, row_offset);
  ASSIGN_OR_RETURN(const TensorView* t, store.Get(name));
  if (t->dtype != DType::kF8E4M3 || t->shape != std::vector<int64_t>{m.full_rows, m.full_cols}) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor '{}' must be F8_E4M3 [{}, {}] to stay FP8 on the GPU",
                                                  store.Source(), name, m.full_rows, m.full_cols));
  }
  ASSIGN_OR_RETURN(const TensorView* s, FindFp8BlockScales(store, name, m.full_rows, m.full_cols));
  const int64_t sstride = s->shape[1];
  if (m.col_begin % cpu::kFp8BlockSize != 0 || row_offset + m.rows > dst.rows || m.cols != dst.cols) {
    return absl::InternalError(fmt::format("tensor '{}': slice does not fit its FP8 device matrix", name));
  }
  // Codes copied as they are; each row gets its own row of the slice's block scales.
  const int64_t scale_cols = cuda::Fp8ScaleCols(m.cols), first_block = m.col_begin / cpu::kFp8BlockSize;
  std::vector<uint8_t> codes(m.rows * m.cols);
  std::vector<float> scales(m.rows * scale_cols), block_row(sstride);
  const auto* sbytes = reinterpret_cast<const std::byte*>(s->data);
  for (int64_t r = 0; r < m.rows; ++r) {
    const int64_t row = m.row_begin + r;
    std::memcpy(codes.data() + r * m.cols, reinterpret_cast<const uint8_t*>(t->row(row)) + m.col_begin, m.cols);
    std::memcpy(block_row.data(), sbytes + (row / cpu::kFp8BlockSize) * sstride * sizeof(float),
                sstride * sizeof(float));
    std::copy_n(block_row.begin() + first_block, scale_cols, scales.begin() + r * scale_cols);
  }
  SHOAL_CUDA_CHECK(cudaMemcpy(dst.data.as<uint8_t>() + row_offset * m.cols, codes.data(), codes.size(),
                              cudaMemcpyHostToDevice));
  SHOAL_CUDA_CHECK(cudaMemcpy(dst.scales.as<float>() + row_offset * scale_cols, scales.data(),
                              scales.size() * sizeof(float), cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

}  // namespace shoal::worker
