#pragma once
// Linear layers that know which tensor-parallel shard of their weight they hold, as
// views into the mapped file (never copies):
//   ColumnParallelLinear  splits output features: rank r holds rows [r*out/n, (r+1)*out/n),
//                         its outputs are complete for those features (q/k/v, gate/up,
//                         lm_head over the vocabulary);
//   RowParallelLinear     splits input features: rank r holds columns [r*in/n, ...) of
//                         every row, its outputs are partial sums that the ranks add up
//                         with an all-reduce (o_proj, down_proj).
// With a shard count of 1 both are the whole matrix.
// FP8 (F8_E4M3) weights bring their 128x128 block scales `<name>.weight_scale_inv` along
// (DeepSeek-V3's release layout); a shard's view of the scale grid is the sub-grid of its
// blocks, so FP8 shards must split on multiples of 128.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/kernels/cpu/matmul.h"
#include "worker/model/model_config.h"
#include "worker/model/weight_store.h"

namespace shoal::worker {

// Which of `count` equal parts this rank holds.
struct ShardOf {
  int rank = 0;
  int count = 1;
};

// How a (GQA) attention block of llama or qwen2 splits over a stage's tensor ranks: the
// query heads (q, o) evenly; the kv heads (k, v) evenly too, or, with fewer kv heads than
// ranks, each kv head whole on tp/kv_heads consecutive ranks, exactly those whose query
// heads read it. The CPU and CUDA models share it, so their shards are the same.
struct AttentionHeads {
  int64_t num_heads = 0;     // query heads of this rank
  int64_t num_kv_heads = 0;  // kv heads of this rank
  ShardOf q;                 // the q/o projections' shard
  ShardOf kv;                // the k/v projections' shard

  // INVALID_ARGUMENT (naming `source`) when the heads, kv heads or the vocabulary (split
  // by the embedding and LM head) do not divide over shard.tp_size, or heads are not a
  // multiple of kv heads, or head_dim is odd.
  static absl::StatusOr<AttentionHeads> Of(const ModelConfig& config, const ShardSpec& shard,
                                           const std::string& source);
};

// A 1-D f32 parameter (norm weight, bias): used in place when the file stores f32,
// converted once otherwise (they are tiny next to the matrices).
class VectorParam {
 public:
  static absl::StatusOr<VectorParam> Load(const WeightStore& store, const std::string& name,
                                          int64_t size, int64_t offset = 0);
  const float* data() const { return data_; }
  size_t bytes() const { return size_ * sizeof(float); }

 private:
  const float* data_ = nullptr;
  int64_t size_ = 0;
  std::vector<float> owned_;
};

class ColumnParallelLinear {
 public:
  // `name` without the ".weight" suffix; the weight must be [out, in].
  static absl::StatusOr<ColumnParallelLinear> Load(const WeightStore& store,
                                                   const std::string& name, int64_t in,
                                                   int64_t out, bool has_bias, ShardOf shard);
  int64_t in_features() const { return w_.cols; }
  int64_t out_features() const { return w_.rows; }  // of this shard
  const cpu::WeightMatrix& weight() const { return w_; }
  cpu::MatmulTarget Target(float* y, int64_t ldy) const {
    return {&w_, y, ldy, bias_.has_value() ? bias_->data() : nullptr, false};
  }
  size_t bytes() const { return w_.bytes() + (bias_.has_value() ? bias_->bytes() : 0); }

 private:
  cpu::WeightMatrix w_;
  std::optional<VectorParam> bias_;
};

class RowParallelLinear {
 public:
  static absl::StatusOr<RowParallelLinear> Load(const WeightStore& store, const std::string& name,
                                                int64_t in, int64_t out, ShardOf shard);
  int64_t in_features() const { return w_.cols; }  // of this shard
  int64_t out_features() const { return w_.rows; }
  // Adds this shard's partial product into y (the residual stream).
  cpu::MatmulTarget AccumulateInto(float* y, int64_t ldy) const {
    return {&w_, y, ldy, nullptr, true};
  }
  size_t bytes() const { return w_.bytes(); }

 private:
  cpu::WeightMatrix w_;
};

}  // namespace shoal::worker
