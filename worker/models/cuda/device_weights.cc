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

namespace shoal::worker {

using cuda::DeviceBuffer;

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
  const float* scales = nullptr;
  int64_t scale_stride = 0;
  if (t->dtype == DType::kF8E4M3) {
    const std::string sname = name + "_scale_inv";  // "<...>.weight" -> "<...>.weight_scale_inv"
    const int64_t srows = (m.full_rows + cpu::kFp8BlockSize - 1) / cpu::kFp8BlockSize;
    scale_stride = (m.full_cols + cpu::kFp8BlockSize - 1) / cpu::kFp8BlockSize;
    const TensorView* s = store.Find(sname);
    if (s == nullptr || s->dtype != DType::kF32 || s->shape != std::vector<int64_t>{srows, scale_stride}) {
      return absl::InvalidArgumentError(fmt::format("{}: tensor '{}' is F8_E4M3 and needs F32 block scales '{}' of [{}, {}]",
                                                    store.Source(), name, sname, srows, scale_stride));
    }
    scales = reinterpret_cast<const float*>(s->data);
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
      if (scales != nullptr) {
        const uint8_t* codes = reinterpret_cast<const uint8_t*>(t->row(row));
        const float* srow = scales + (row / cpu::kFp8BlockSize) * scale_stride;
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

}  // namespace shoal::worker
