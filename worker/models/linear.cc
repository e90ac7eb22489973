#include "worker/models/linear.h"

#include <cstdint>
#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "worker/common/status_macros.h"
#include "worker/model/model_checks.h"
#include "worker/kernels/cpu/fp8_matmul.h"
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
  if (!cpu::MatmulSupports(t->dtype) && t->dtype != DType::kF8E4M3) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor '{}' has dtype {}, which the CPU matmul does not support",
                                                  store.Source(), name, DTypeName(t->dtype)));
  }
  return t;
}

int64_t NumScaleBlocks(int64_t n) { return (n + cpu::kFp8BlockSize - 1) / cpu::kFp8BlockSize; }

// An F8_E4M3 weight `<name>.weight` is only meaningful with its block scales
// `<name>.weight_scale_inv` (DeepSeek-V3's layout: f32, [ceil(out/128), ceil(in/128)]);
// they are attached to the whole-matrix view `m`, in place.
absl::Status AttachBlockScales(const WeightStore& store, const std::string& name,
                               cpu::WeightMatrix* m) {
  if (m->dtype != DType::kF8E4M3) return absl::OkStatus();
  ASSIGN_OR_RETURN(const TensorView* s, FindFp8BlockScales(store, name + ".weight", m->rows, m->cols));
  const int64_t want_cols = NumScaleBlocks(m->cols);
  m->block_scales = reinterpret_cast<const float*>(s->data);
  m->scale_stride = want_cols;
  return absl::OkStatus();
}

// A shard of an FP8 weight must start and end on scale blocks, so that its view of the
// scale grid is a sub-grid (the last shard may end on a partial block).
absl::Status CheckFp8ShardAligned(const WeightStore& store, const std::string& name,
                                  const cpu::WeightMatrix& m, int64_t shard_size, ShardOf shard,
                                  const char* what) {
  if (m.dtype != DType::kF8E4M3 || shard.count == 1 || shard_size % cpu::kFp8BlockSize == 0) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(fmt::format(
      "{}: tensor '{}': {} shards of {} {} do not align to the {}-element FP8 scale blocks",
      store.Source(), name, shard.count, shard_size, what, cpu::kFp8BlockSize));
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
  const std::byte* first = reinterpret_cast<const std::byte*>(t->data) + RowBytes(t->dtype, offset);
  if (t->dtype == DType::kF32 && reinterpret_cast<uintptr_t>(first) % alignof(float) == 0) {
    p.data_ = reinterpret_cast<const float*>(first);  // read in place from the mapped file
  } else if (t->dtype == DType::kF32) {
    // A safetensors tensor may start at any byte (after one of odd size); floats are not
    // loaded from there, a copy is.
    p.owned_.resize(size);
    std::memcpy(p.owned_.data(), first, size * sizeof(float));
    p.data_ = p.owned_.data();
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
  RETURN_IF_ERROR(AttachBlockScales(store, name, &l.w_));
  RETURN_IF_ERROR(CheckFp8ShardAligned(store, wname, l.w_, rows, shard, "output features"));
  l.w_.data = t->row(rows * shard.rank);
  l.w_.rows = rows;
  if (l.w_.block_scales != nullptr) {
    l.w_.block_scales += (rows * shard.rank / cpu::kFp8BlockSize) * l.w_.scale_stride;
  }
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
  RETURN_IF_ERROR(AttachBlockScales(store, name, &l.w_));
  RETURN_IF_ERROR(CheckFp8ShardAligned(store, wname, l.w_, cols, shard, "input features"));
  l.w_.data = t->data + RowBytes(t->dtype, cols * shard.rank);
  l.w_.cols = cols;
  if (l.w_.block_scales != nullptr) l.w_.block_scales += cols * shard.rank / cpu::kFp8BlockSize;
  return l;
}

absl::StatusOr<AttentionHeads> AttentionHeads::Of(const ModelConfig& c, const ShardSpec& shard,
                                                  const std::string& source) {
  const int tp = shard.tp_size;
  const bool kv_replicated = c.num_kv_heads < tp;
  if (c.num_heads % tp != 0 || (kv_replicated ? tp % c.num_kv_heads : c.num_kv_heads % tp) != 0) {
    return absl::InvalidArgumentError(fmt::format(
        "{}: tensor parallel size {} does not divide the {} attention heads, or neither divides the other with the {} kv heads",
        source, tp, c.num_heads, c.num_kv_heads));
  }
  if (c.vocab_size % tp != 0) {
    return absl::InvalidArgumentError(
        fmt::format("{}: tensor parallel size {} does not divide the vocabulary of {}", source, tp, c.vocab_size));
  }
  if (c.num_heads % c.num_kv_heads != 0 || c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(fmt::format("{}: {} heads are not a multiple of {} kv heads, or head_dim {} is odd",
                                                  source, c.num_heads, c.num_kv_heads, c.head_dim));
  }
  AttentionHeads h;
  h.q = ShardOf{shard.tp_rank, tp};
  h.kv = kv_replicated ? ShardOf{shard.tp_rank / (tp / static_cast<int>(c.num_kv_heads)), static_cast<int>(c.num_kv_heads)}
                       : h.q;
  h.num_heads = c.num_heads / tp;
  h.num_kv_heads = kv_replicated ? 1 : c.num_kv_heads / tp;
  return h;
}

}  // namespace shoal::worker
