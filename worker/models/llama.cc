#include "worker/models/llama.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "worker/common/status_macros.h"
#include "worker/kernels/cpu/attention.h"
#include "worker/kernels/cpu/matmul.h"
#include "worker/kernels/cpu/ops.h"
#include "worker/kernels/cpu/quant.h"
#include "worker/kernels/cpu/thread_pool.h"
#include "worker/models/decoder_step.h"
#include "worker/models/linear.h"
#include "worker/parallel/communicator.h"

namespace shoal::worker {
namespace {

struct LlamaLayer {
  VectorParam attn_norm;
  ColumnParallelLinear q, k, v;  // heads split across tensor ranks
  RowParallelLinear o;
  VectorParam mlp_norm;
  ColumnParallelLinear gate, up;  // intermediate features split across tensor ranks
  RowParallelLinear down;

  size_t bytes() const {
    return attn_norm.bytes() + q.bytes() + k.bytes() + v.bytes() + o.bytes() + mlp_norm.bytes() +
           gate.bytes() + up.bytes() + down.bytes();
  }
};

std::string LayerName(int64_t i, const char* suffix) {
  return fmt::format("model.layers.{}.{}", i, suffix);
}

class LlamaModel final : public CausalLM {
 public:
  LlamaModel(const ModelConfig& config, const ShardSpec& shard, ThreadPool* pool,
             const CausalLMOptions& options)
      : config_(config),
        shard_(shard),
        pool_(pool),
        kv_dtype_(options.kv_cache_dtype),
        tp_(options.tensor_group),
        rope_(config.head_dim, config.rope_theta, config.rope_scaling,
              std::min<int64_t>(config.max_position_embeddings, 4096)) {}

  absl::Status Load(const WeightStore& store);

  const ModelConfig& config() const override { return config_; }
  const ShardSpec& shard() const override { return shard_; }
  size_t KvBytesPerBlock(int block_size) const override {
    return static_cast<size_t>(layers_.size()) * 2 * block_size * num_kv_heads_ *
           config_.head_dim * BlockBytes(kv_dtype_);
  }
  absl::Status AllocateKvCache(int64_t num_blocks, int block_size) override;
  absl::Status Forward(const ForwardBatch& batch, std::vector<float>* logits) override;
  absl::Status ForwardStage(const ForwardBatch& batch, std::span<const float> hidden_in,
                            std::vector<float>* out) override;
  size_t WeightBytes() const override { return weight_bytes_; }

 private:
  absl::Status RunLayer(size_t l, int64_t num_tokens, std::span<const cpu::AttentionSequence> seqs);
  // Embeds `tokens` into h_: with tensor parallelism each rank holds a slice of the
  // vocabulary, fills the rows of its own tokens, zeroes the rest, and the all-reduce sums
  // the one non-zero row per token.
  absl::Status Embed(const std::vector<int32_t>& tokens);
  // h += the row-parallel product in part_, summed over the tensor ranks.
  absl::Status AddReduced(int64_t T);
  bool last_stage() const { return lm_head_.has_value(); }
  int tp_size() const { return shard_.tp_size; }
  // fn(begin, end) over token rows, split across threads when there are enough of them.
  void ForTokens(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    if (n >= 32) {
      pool_->ParallelFor(n, fn);
    } else {
      fn(0, n);
    }
  }

  ModelConfig config_;
  ShardSpec shard_;
  ThreadPool* pool_;
  DType kv_dtype_;            // kF16 or kF32
  Communicator* tp_;          // tensor ranks of this stage; null when tp_size == 1
  int64_t num_heads_ = 0;     // of this tensor rank
  int64_t num_kv_heads_ = 0;  // of this tensor rank
  int64_t intermediate_ = 0;  // of this tensor rank
  std::optional<cpu::WeightMatrix> embed_;  // first pipeline stage only; this rank's vocabulary rows
  int64_t vocab_begin_ = 0;                 // first token id of this rank's vocabulary slice
  std::vector<LlamaLayer> layers_;          // layers [first_layer, end_layer)
  std::optional<VectorParam> final_norm_;   // last pipeline stage only
  std::optional<ColumnParallelLinear> lm_head_;
  size_t weight_bytes_ = 0;
  cpu::RopeTable rope_;

  // Paged KV cache, per layer [num_blocks, block_size, num_kv_heads_, head_dim] of kv_dtype_.
  int64_t num_blocks_ = 0;
  int block_size_ = 0;
  std::vector<std::unique_ptr<std::byte[]>> k_cache_, v_cache_;

  // Activations of the current step, reused across steps.
  std::vector<float> h_, xn_, q_, k_, v_, attn_, gate_, up_;
  std::vector<float> part_, local_logits_, gathered_;  // tensor parallel only
  StepRows step_;
};

absl::Status LlamaModel::Load(const WeightStore& store) {
  const ModelConfig& c = config_;
  ASSIGN_OR_RETURN(const AttentionHeads heads, AttentionHeads::Of(c, shard_, store.Source()));
  const ShardOf tp = heads.q, kv_tp = heads.kv;
  num_heads_ = heads.num_heads;
  num_kv_heads_ = heads.num_kv_heads;
  const int64_t hidden = c.hidden_size, hd = c.head_dim;

  if (shard_.is_first_stage()) {
    ASSIGN_OR_RETURN(const TensorView* e, store.Get("model.embed_tokens.weight"));
    if (e->shape.size() != 2 || e->shape[0] != c.vocab_size || e->shape[1] != hidden ||
        !cpu::MatmulSupports(e->dtype)) {
      return absl::InvalidArgumentError(fmt::format(
          "{}: tensor 'model.embed_tokens.weight' is {} of shape [{}], expected [{}, {}] of a float or Q8_0/Q4_0/Q4_1 type",
          store.Source(), DTypeName(e->dtype), fmt::join(e->shape, ", "), c.vocab_size, hidden));
    }
    embed_ = cpu::WeightMatrix::Of(*e);
    const int64_t rows = c.vocab_size / shard_.tp_size;
    vocab_begin_ = rows * shard_.tp_rank;
    embed_->data = e->row(vocab_begin_);
    embed_->rows = rows;
    weight_bytes_ += embed_->bytes();
  }
  for (int64_t i = shard_.first_layer; i < shard_.end_layer; ++i) {
    ASSIGN_OR_RETURN(VectorParam attn_norm, VectorParam::Load(store, LayerName(i, "input_layernorm.weight"), hidden));
    ASSIGN_OR_RETURN(auto q, ColumnParallelLinear::Load(store, LayerName(i, "self_attn.q_proj"), hidden, c.num_heads * hd, c.attention_bias, tp));
    ASSIGN_OR_RETURN(auto k, ColumnParallelLinear::Load(store, LayerName(i, "self_attn.k_proj"), hidden, c.num_kv_heads * hd, c.attention_bias, kv_tp));
    ASSIGN_OR_RETURN(auto v, ColumnParallelLinear::Load(store, LayerName(i, "self_attn.v_proj"), hidden, c.num_kv_heads * hd, c.attention_bias, kv_tp));
    ASSIGN_OR_RETURN(auto o, RowParallelLinear::Load(store, LayerName(i, "self_attn.o_proj"), c.num_heads * hd, hidden, tp));
    ASSIGN_OR_RETURN(VectorParam mlp_norm, VectorParam::Load(store, LayerName(i, "post_attention_layernorm.weight"), hidden));
    ASSIGN_OR_RETURN(auto gate, ColumnParallelLinear::Load(store, LayerName(i, "mlp.gate_proj"), hidden, c.intermediate_size, false, tp));
    ASSIGN_OR_RETURN(auto up, ColumnParallelLinear::Load(store, LayerName(i, "mlp.up_proj"), hidden, c.intermediate_size, false, tp));
    ASSIGN_OR_RETURN(auto down, RowParallelLinear::Load(store, LayerName(i, "mlp.down_proj"), c.intermediate_size, hidden, tp));
    layers_.push_back(LlamaLayer{std::move(attn_norm), std::move(q), std::move(k), std::move(v), std::move(o),
                                 std::move(mlp_norm), std::move(gate), std::move(up), std::move(down)});
    weight_bytes_ += layers_.back().bytes();
  }
  intermediate_ = c.intermediate_size / shard_.tp_size;
  if (shard_.end_layer == c.num_layers) {  // the last pipeline stage
    ASSIGN_OR_RETURN(VectorParam norm, VectorParam::Load(store, "model.norm.weight", hidden));
    final_norm_ = std::move(norm);
    // Tied embeddings: the output projection is the embedding table itself, read in
    // place (token_embd is Q8_0 in SmolLM2's GGUF and serves both roles).
    const std::string head = c.tie_word_embeddings ? "model.embed_tokens" : "lm_head";
    ASSIGN_OR_RETURN(auto lm_head, ColumnParallelLinear::Load(store, head, hidden, c.vocab_size, false, tp));
    lm_head_ = std::move(lm_head);
    if (!(c.tie_word_embeddings && embed_.has_value())) weight_bytes_ += lm_head_->bytes();
    weight_bytes_ += final_norm_->bytes();
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::AllocateKvCache(int64_t num_blocks, int block_size) {
  if (num_blocks <= 0 || block_size <= 0) {
    return absl::InvalidArgumentError(fmt::format("KV cache of {} blocks of {} tokens: both must be positive",
                                                  num_blocks, block_size));
  }
  const size_t bytes = static_cast<size_t>(num_blocks) * block_size * num_kv_heads_ *
                       config_.head_dim * BlockBytes(kv_dtype_);
  k_cache_.clear();
  v_cache_.clear();
  for (size_t l = 0; l < layers_.size(); ++l) {
    // Not zero-filled: a slot is always written before any query can see it, and
    // untouched pages of a large cache then cost no resident memory.
    k_cache_.push_back(std::make_unique_for_overwrite<std::byte[]>(bytes));
    v_cache_.push_back(std::make_unique_for_overwrite<std::byte[]>(bytes));
  }
  num_blocks_ = num_blocks;
  block_size_ = block_size;
  return absl::OkStatus();
}

// One decoder block over all T tokens of the step: the linear layers see the tokens of
// every sequence as one matrix; only attention looks at sequences one by one.
absl::Status LlamaModel::RunLayer(size_t l, int64_t T, std::span<const cpu::AttentionSequence> seqs) {
  const LlamaLayer& L = layers_[l];
  const int64_t hidden = config_.hidden_size, hd = config_.head_dim;
  const int64_t q_width = num_heads_ * hd, kv_width = num_kv_heads_ * hd;
  const float eps = static_cast<float>(config_.rms_norm_eps);

  // xn = rmsnorm(h); q, k, v = xn·Wq, xn·Wk, xn·Wv in one pass over xn.
  ForTokens(T, [&](int64_t b, int64_t e) {
    cpu::RmsNorm(&h_[b * hidden], L.attn_norm.data(), &xn_[b * hidden], e - b, hidden, eps);
  });
  const cpu::MatmulTarget qkv[3] = {L.q.Target(q_.data(), q_width), L.k.Target(k_.data(), kv_width),
                                    L.v.Target(v_.data(), kv_width)};
  cpu::Matmul(pool_, xn_.data(), T, hidden, qkv);
  ForTokens(T, [&](int64_t b, int64_t e) {
    cpu::ApplyRope(rope_, &q_[b * q_width], e - b, q_width, &step_.positions[b], num_heads_, hd, config_.rope_interleaved);
    cpu::ApplyRope(rope_, &k_[b * kv_width], e - b, kv_width, &step_.positions[b], num_kv_heads_, hd, config_.rope_interleaved);
  });

  // k, v → their cache slots; attention reads the new keys from the cache like the old.
  const cpu::PagedKvLayer cache{k_cache_[l].get(), v_cache_[l].get(), num_blocks_, block_size_,
                                num_kv_heads_, hd, kv_dtype_};
  for (const cpu::AttentionSequence& s : seqs) cpu::WriteKv(cache, s, k_.data(), kv_width, v_.data(), kv_width);
  cpu::PagedAttention(pool_, cache, seqs, q_.data(), q_width, num_heads_,
                      1.0f / std::sqrt(static_cast<float>(hd)), attn_.data(), q_width);

  // h += attn·Wo; with tensor parallelism each rank's product is a partial sum over its
  // heads, added up across ranks before it joins the residual stream.
  if (tp_size() == 1) {
    const cpu::MatmulTarget o = L.o.AccumulateInto(h_.data(), hidden);
    cpu::Matmul(pool_, attn_.data(), T, q_width, {&o, 1});
  } else {
    cpu::MatmulTarget o = L.o.AccumulateInto(part_.data(), hidden);
    o.accumulate = false;
    cpu::Matmul(pool_, attn_.data(), T, q_width, {&o, 1});
    RETURN_IF_ERROR(AddReduced(T));
  }

  // h += (silu(xn·Wgate) * xn·Wup)·Wdown
  ForTokens(T, [&](int64_t b, int64_t e) {
    cpu::RmsNorm(&h_[b * hidden], L.mlp_norm.data(), &xn_[b * hidden], e - b, hidden, eps);
  });
  const cpu::MatmulTarget gate_up[2] = {L.gate.Target(gate_.data(), intermediate_),
                                        L.up.Target(up_.data(), intermediate_)};
  cpu::Matmul(pool_, xn_.data(), T, hidden, gate_up);
  ForTokens(T, [&](int64_t b, int64_t e) {
    cpu::SiluMul(&gate_[b * intermediate_], &up_[b * intermediate_], &gate_[b * intermediate_],
                 (e - b) * intermediate_);
  });
  if (tp_size() == 1) {
    const cpu::MatmulTarget down = L.down.AccumulateInto(h_.data(), hidden);
    cpu::Matmul(pool_, gate_.data(), T, intermediate_, {&down, 1});
    return absl::OkStatus();
  }
  cpu::MatmulTarget down = L.down.AccumulateInto(part_.data(), hidden);
  down.accumulate = false;
  cpu::Matmul(pool_, gate_.data(), T, intermediate_, {&down, 1});
  return AddReduced(T);
}

absl::Status LlamaModel::AddReduced(int64_t T) {
  const int64_t n = T * config_.hidden_size;
  RETURN_IF_ERROR(tp_->AllReduceSum(std::span<float>(part_.data(), n)));
  for (int64_t i = 0; i < n; ++i) h_[i] += part_[i];
  return absl::OkStatus();
}

absl::Status LlamaModel::Embed(const std::vector<int32_t>& tokens) {
  const int64_t T = static_cast<int64_t>(tokens.size()), hidden = config_.hidden_size;
  if (tp_size() == 1) {
    cpu::EmbeddingLookup(*embed_, tokens.data(), T, h_.data());
    return absl::OkStatus();
  }
  for (int64_t t = 0; t < T; ++t) {
    const int32_t local = tokens[t] - static_cast<int32_t>(vocab_begin_);
    if (local >= 0 && local < embed_->rows) {
      cpu::EmbeddingLookup(*embed_, &local, 1, &h_[t * hidden]);
    } else {
      std::fill_n(&h_[t * hidden], hidden, 0.0f);
    }
  }
  return tp_->AllReduceSum(std::span<float>(h_.data(), T * hidden));
}

absl::Status LlamaModel::Forward(const ForwardBatch& batch, std::vector<float>* logits) {
  if (!shard_.is_first_stage() || !last_stage()) return WholeModelOnly(shard_, config_.num_layers);
  return ForwardStage(batch, {}, logits);
}

absl::Status LlamaModel::ForwardStage(const ForwardBatch& batch, std::span<const float> hidden_in,
                                      std::vector<float>* out) {
  RETURN_IF_ERROR(step_.Reset(batch, num_blocks_, block_size_, config_.vocab_size));
  const int64_t hidden = config_.hidden_size, hd = config_.head_dim;
  const int64_t T = step_.num_tokens();
  if (step_.max_pos > rope_.num_positions()) rope_.Reserve(std::max(step_.max_pos, 2 * rope_.num_positions()));

  h_.resize(T * hidden);
  xn_.resize(T * hidden);
  q_.resize(T * num_heads_ * hd);
  attn_.resize(T * num_heads_ * hd);
  k_.resize(T * num_kv_heads_ * hd);
  v_.resize(T * num_kv_heads_ * hd);
  gate_.resize(T * intermediate_);
  up_.resize(T * intermediate_);
  if (tp_size() > 1) part_.resize(T * hidden);

  if (shard_.is_first_stage()) {
    RETURN_IF_ERROR(Embed(step_.tokens));
  } else {
    RETURN_IF_ERROR(CheckHiddenIn(shard_, hidden_in, T, hidden));
    std::copy(hidden_in.begin(), hidden_in.end(), h_.begin());
  }
  for (size_t l = 0; l < layers_.size(); ++l) RETURN_IF_ERROR(RunLayer(l, T, step_.seqs));

  if (!last_stage()) {
    out->assign(h_.begin(), h_.end());
    return absl::OkStatus();
  }
  // Final norm and vocabulary projection only for the rows the caller samples from.
  const int64_t rows = static_cast<int64_t>(step_.logit_rows.size());
  for (int64_t r = 0; r < rows; ++r) {
    cpu::RmsNorm(&h_[step_.logit_rows[r] * hidden], final_norm_->data(), &xn_[r * hidden], 1, hidden,
                 static_cast<float>(config_.rms_norm_eps));
  }
  return ProjectLogits(pool_, tp_, tp_size(), *lm_head_, xn_.data(), rows, hidden, &local_logits_, &gathered_, out);
}

}  // namespace

absl::StatusOr<std::unique_ptr<CausalLM>> CreateLlama(const LoadedModel& model,
                                                      const ShardSpec& shard_in, ThreadPool* pool,
                                                      const CausalLMOptions& options) {
  const ModelConfig& c = model.config;
  ShardSpec shard = shard_in;
  RETURN_IF_ERROR(CheckModelArgs(model, pool, options, &shard));
  if (c.head_dim <= 0 || c.hidden_size <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 || c.vocab_size <= 0) {
    return absl::InvalidArgumentError(fmt::format("{}: config has non-positive sizes (hidden {}, heads {}, kv heads {}, head_dim {}, vocab {})",
                                                  model.path, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size));
  }
  auto m = std::make_unique<LlamaModel>(c, shard, pool, options);
  RETURN_IF_ERROR(m->Load(*model.weights));
  return std::unique_ptr<CausalLM>(std::move(m));
}

}  // namespace shoal::worker
