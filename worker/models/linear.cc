#include "worker/models/linear.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "worker/common/status_macros.h"
#include "worker/kernels/cpu/quant.h"

namespace shoal::worker {
namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// The tensor `name` as a [out, in] matrix the matmul can read.
absl::StatusOr<const TensorView*> GetMatrix(const WeightStore& store, const std::string& name,
                                            int64_t in, int64_t out) {
  ASSIGN_OR_RETURN(const TensorView* t, store.Get(name));
  if (t->shape.size() != 2 || t->shape[0] != out || t->shape[1] != in) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor '{}' has shape {}, expected [{}, {}]",
                                                  store.Source(), name, ShapeString(t->shape), out, in));
  }
  if (!cpu::MatmulSupports(t->dtype)) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor '{}' has dtype {}, which the CPU matmul does not support",
                                                  store.Source(), name, DTypeName(t->dtype)));
  }
  return t;
}

absl::Status CheckDivides(const WeightStore& store, const std::string& name, int64_t n,
                          ShardOf shard, int64_t granule, const char* what) {
  if (shard.count < 1 || shard.rank < 0 || shard.rank >= shard.count) {
    return absl::InvalidArgumentError(fmt::format("tensor '{}': shard {} of {} is out of range", name, shard.rank, shard.count));
  }
  if (n % (static_cast<int64_t>(shard.count) * granule) != 0) {
    return absl::InvalidArgumentError(fmt::format(
        "{}: tensor '{}': {} {} do not split into {} shards of whole {}-element blocks",
        store.Source(), name, n, what, shard.count, granule));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<VectorParam> VectorParam::Load(const WeightStore& store, const std::string& name,
                                              int64_t size, int64_t offset) {
  ASSIGN_OR_RETURN(const TensorView* t, store.Get(name));
  if (t->numel() < offset + size || (t->shape.size() != 1)) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor '{}' has shape {}, expected a vector of at least {}",
                                                  store.Source(), name, ShapeString(t->shape), offset + size));
  }
  if (t->dtype != DType::kF32 && t->dtype != DType::kF16 && t->dtype != DType::kBF16) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor '{}' has dtype {}, expected F32, F16 or BF16",
                                                  store.Source(), name, DTypeName(t->dtype)));
  }
  VectorParam p;
  p.size_ = size;
  if (t->dtype == DType::kF32) {
    p.data_ = reinterpret_cast<const float*>(t->data) + offset;
  } else {
    p.owned_.resize(size);
    cpu::DequantizeRow(t->dtype, t->data + offset * 2, p.owned_.data(), size);
    p.data_ = p.owned_.data();
  }
  return p;
}

absl::StatusOr<ColumnParallelLinear> ColumnParallelLinear::Load(const WeightStore& store,
                                                                const std::string& name, int64_t in,
                                                                int64_t out, bool has_bias,
                                                                ShardOf shard) {
  const std::string wname = name + ".weight";
  ASSIGN_OR_RETURN(const TensorView* t, GetMatrix(store, wname, in, out));
  RETURN_IF_ERROR(CheckDivides(store, wname, out, shard, 1, "output features"));
  if (BlockSize(t->dtype) > 1 && in % BlockSize(t->dtype) != 0) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor '{}': {} columns are not whole {} blocks",
                                                  store.Source(), wname, in, DTypeName(t->dtype)));
  }
  const int64_t rows = out / shard.count;
  ColumnParallelLinear l;
  l.w_ = cpu::WeightMatrix::Of(*t);
  l.w_.data = t->row(rows * shard.rank);
  l.w_.rows = rows;
  if (has_bias) {
    ASSIGN_OR_RETURN(VectorParam b, VectorParam::Load(store, name + ".bias", rows, rows * shard.rank));
    l.bias_ = std::move(b);
  }
  return l;
}

absl::StatusOr<RowParallelLinear> RowParallelLinear::Load(const WeightStore& store,
                                                          const std::string& name, int64_t in,
                                                          int64_t out, ShardOf shard) {
  const std::string wname = name + ".weight";
  ASSIGN_OR_RETURN(const TensorView* t, GetMatrix(store, wname, in, out));
  RETURN_IF_ERROR(CheckDivides(store, wname, in, shard, BlockSize(t->dtype), "input features"));
  const int64_t cols = in / shard.count;
  RowParallelLinear l;
  l.w_ = cpu::WeightMatrix::Of(*t);  // row_stride stays the full row: a strided view
  l.w_.data = t->data + RowBytes(t->dtype, cols * shard.rank);
  l.w_.cols = cols;
  return l;
}

}  // namespace shoal::worker
