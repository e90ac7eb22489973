#include "worker/models/deepseek.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "worker/common/status_macros.h"
#include "worker/kernels/cpu/matmul.h"
#include "worker/kernels/cpu/ops.h"
#include "worker/kernels/cpu/thread_pool.h"
#include "worker/kernels/cpu/yarn_rope.h"
#include "worker/models/decoder_step.h"
#include "worker/models/deepseek_moe.h"
#include "worker/models/linear.h"
#include "worker/parallel/communicator.h"

namespace shoal::worker {
namespace {

struct DeepseekLayer {
  VectorParam attn_norm;
  MlaAttention attn;
  VectorParam mlp_norm;
  std::optional<SwiGluMlp> dense;  // the first first_k_dense_replace layers (and off-frequency ones)
  std::optional<DeepseekMoe> moe;

  size_t bytes() const {
    return attn_norm.bytes() + attn.bytes() + mlp_norm.bytes() + (dense ? dense->bytes() : 0) +
           (moe ? moe->bytes() : 0);
  }
};

std::string LayerName(int64_t i, const char* suffix) { return fmt::format("model.layers.{}.{}", i, suffix); }

class DeepseekModel final : public CausalLM {
 public:
  DeepseekModel(const ModelConfig& config, const ShardSpec& shard, ThreadPool* pool, const CausalLMOptions& options,
                const DeepseekOptions& deepseek)
      : config_(config),
        shard_(shard),
        pool_(pool),
        tp_(options.tensor_group),
        kv_dtype_(options.kv_cache_dtype),
        mla_mode_(deepseek.mla_mode),
        rope_(config.deepseek.qk_rope_head_dim, config.rope_theta, config.rope_scaling,
              std::min<int64_t>(config.max_position_embeddings, 4096)) {}

  absl::Status Load(const WeightStore& store);

  const ModelConfig& config() const override { return config_; }
  const ShardSpec& shard() const override { return shard_; }
  // Per token and layer: the latent and the rotary key, shared by all heads.
  size_t KvBytesPerBlock(int block_size) const override {
    return static_cast<size_t>(layers_.size()) * block_size * EntryElements() * BlockBytes(kv_dtype_);
  }
  absl::Status AllocateKvCache(int64_t num_blocks, int block_size) override;
  absl::Status Forward(const ForwardBatch& batch, std::vector<float>* logits) override;
  absl::Status ForwardStage(const ForwardBatch& batch, std::span<const float> hidden_in,
                            std::vector<float>* out) override;
  size_t WeightBytes() const override { return weight_bytes_; }

 private:
  int64_t EntryElements() const { return config_.deepseek.kv_lora_rank + config_.deepseek.qk_rope_head_dim; }
  int tp_size() const { return shard_.tp_size; }
  bool last_stage() const { return lm_head_.has_value(); }
  // h += the tensor ranks' sum of what `partial` adds (with one rank: h += it directly).
  absl::Status AddAcrossRanks(int64_t T, const std::function<void(float*)>& partial);

  ModelConfig config_;
  ShardSpec shard_;
  ThreadPool* pool_;
  Communicator* tp_;  // the stage's tensor ranks; null with one
  DType kv_dtype_;
  MlaMode mla_mode_;
  std::optional<cpu::WeightMatrix> embed_;
  std::vector<DeepseekLayer> layers_;  // layers [first_layer, end_layer)
  std::optional<VectorParam> final_norm_;
  std::optional<ColumnParallelLinear> lm_head_;
  size_t weight_bytes_ = 0;
  cpu::YarnRopeTable rope_;

  int64_t num_blocks_ = 0;
  int block_size_ = 0;
  std::vector<std::unique_ptr<std::byte[]>> cache_;  // per layer [num_blocks, block_size, entry]

  std::vector<float> h_, xn_, part_, mlp_scratch_, local_logits_, gathered_;
  StepRows step_;
};

// Only decoder layers [0, num_hidden_layers) are read. DeepSeek-V3/R1 checkpoints also
// carry num_nextn_predict_layers multi-token-prediction (MTP) modules as
// model.layers.<num_hidden_layers + i>.* (enorm, hnorm, eh_proj, a full decoder block and
// shared_head); they are never looked up, so they cost only mapped address space.
// Running them as a speculative-decoding draft would need: Forward to hand out the
// final hidden states (before model.norm), an MTP module computing
// block(eh_proj([enorm(embed(next token)), hnorm(hidden)])) with its own latent KV
// cache, shared_head's norm + lm_head proposing the token after next, and the engine
// verifying proposals with the main model in the following step.
absl::Status DeepseekModel::Load(const WeightStore& store) {
  const ModelConfig& c = config_;
  const DeepseekConfig& d = c.deepseek;
  const ShardOf tp{shard_.tp_rank, shard_.tp_size};
  if (c.num_heads % shard_.tp_size != 0) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor parallel size {} does not divide the {} attention heads",
                                                  store.Source(), shard_.tp_size, c.num_heads));
  }
  const int64_t hidden = c.hidden_size;
  if (shard_.is_first_stage()) {
    ASSIGN_OR_RETURN(const TensorView* e, store.Get("model.embed_tokens.weight"));
    if (e->shape.size() != 2 || e->shape[0] != c.vocab_size || e->shape[1] != hidden ||
        !cpu::MatmulSupports(e->dtype) || e->dtype == DType::kF8E4M3) {
      return absl::InvalidArgumentError(fmt::format(
          "{}: tensor 'model.embed_tokens.weight' is {} of shape [{}], expected [{}, {}] of a float type",
          store.Source(), DTypeName(e->dtype), fmt::join(e->shape, ", "), c.vocab_size, hidden));
    }
    embed_ = cpu::WeightMatrix::Of(*e);
    weight_bytes_ += embed_->bytes();
  }
  // The tensor ranks split the routed experts (expert parallelism) and everything else
  // by heads / features / vocabulary; the embedding table, q_a/kv_a and the router are
  // whole on every rank (every rank needs all of their outputs).
  const ExpertRange experts = ExpertRange::Of(d.n_routed_experts, shard_.tp_rank, shard_.tp_size);
  for (int64_t i = shard_.first_layer; i < shard_.end_layer; ++i) {
    ASSIGN_OR_RETURN(VectorParam attn_norm, VectorParam::Load(store, LayerName(i, "input_layernorm.weight"), hidden));
    ASSIGN_OR_RETURN(MlaAttention attn, MlaAttention::Load(pool_, store, LayerName(i, "self_attn."), c, tp));
    ASSIGN_OR_RETURN(VectorParam mlp_norm,
                     VectorParam::Load(store, LayerName(i, "post_attention_layernorm.weight"), hidden));
    DeepseekLayer layer{std::move(attn_norm), std::move(attn), std::move(mlp_norm), std::nullopt, std::nullopt};
    if (d.IsMoeLayer(i)) {
      ASSIGN_OR_RETURN(layer.moe, DeepseekMoe::Load(store, LayerName(i, "mlp."), c, experts, tp));
    } else {
      ASSIGN_OR_RETURN(layer.dense, SwiGluMlp::Load(store, LayerName(i, "mlp."), hidden, c.intermediate_size, tp));
    }
    weight_bytes_ += layer.bytes();
    layers_.push_back(std::move(layer));
  }
  if (shard_.end_layer == c.num_layers) {
    ASSIGN_OR_RETURN(final_norm_, VectorParam::Load(store, "model.norm.weight", hidden));
    const std::string head = c.tie_word_embeddings ? "model.embed_tokens" : "lm_head";
    ASSIGN_OR_RETURN(lm_head_, ColumnParallelLinear::Load(store, head, hidden, c.vocab_size, false, tp));
    if (!(c.tie_word_embeddings && embed_.has_value())) weight_bytes_ += lm_head_->bytes();
    weight_bytes_ += final_norm_->bytes();
  }
  return absl::OkStatus();
}

absl::Status DeepseekModel::AllocateKvCache(int64_t num_blocks, int block_size) {
  if (num_blocks <= 0 || block_size <= 0) {
    return absl::InvalidArgumentError(
        fmt::format("KV cache of {} blocks of {} tokens: both must be positive", num_blocks, block_size));
  }
  const size_t bytes = static_cast<size_t>(num_blocks) * block_size * EntryElements() * BlockBytes(kv_dtype_);
  cache_.clear();
  // Not zero-filled: a slot is always written before any query can see it.
  for (size_t l = 0; l < layers_.size(); ++l) cache_.push_back(std::make_unique_for_overwrite<std::byte[]>(bytes));
  num_blocks_ = num_blocks;
  block_size_ = block_size;
  return absl::OkStatus();
}

absl::Status DeepseekModel::AddAcrossRanks(int64_t T, const std::function<void(float*)>& partial) {
  if (tp_size() == 1) {
    partial(h_.data());
    return absl::OkStatus();
  }
  const int64_t n = T * config_.hidden_size;
  part_.assign(n, 0.0f);
  partial(part_.data());
  RETURN_IF_ERROR(tp_->AllReduceSum(std::span<float>(part_.data(), n)));
  for (int64_t i = 0; i < n; ++i) h_[i] += part_[i];
  return absl::OkStatus();
}

absl::Status DeepseekModel::Forward(const ForwardBatch& batch, std::vector<float>* logits) {
  if (!shard_.is_first_stage() || !last_stage()) return WholeModelOnly(shard_, config_.num_layers);
  return ForwardStage(batch, {}, logits);
}

// Same step shape as llama: the new tokens of all sequences end to end as one matrix for
// every projection; only attention looks at sequences one by one. With tensor ranks,
// attention and the MLP/MoE each end in one all-reduce of their partial outputs.
absl::Status DeepseekModel::ForwardStage(const ForwardBatch& batch, std::span<const float> hidden_in,
                                         std::vector<float>* out) {
  RETURN_IF_ERROR(step_.Reset(batch, num_blocks_, block_size_, config_.vocab_size));
  const int64_t hidden = config_.hidden_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const int64_t T = step_.num_tokens();
  if (step_.max_pos > rope_.num_positions()) rope_.Reserve(std::max(step_.max_pos, 2 * rope_.num_positions()));
  h_.resize(T * hidden);
  xn_.resize(T * hidden);
  if (shard_.is_first_stage()) {
    cpu::EmbeddingLookup(*embed_, step_.tokens.data(), T, h_.data());
  } else {
    RETURN_IF_ERROR(CheckHiddenIn(shard_, hidden_in, T, hidden));
    std::copy(hidden_in.begin(), hidden_in.end(), h_.begin());
  }

  const DeepseekConfig& d = config_.deepseek;
  for (size_t l = 0; l < layers_.size(); ++l) {
    DeepseekLayer& L = layers_[l];
    const cpu::PagedLatentLayer cache{cache_[l].get(), num_blocks_, block_size_, d.kv_lora_rank,
                                      d.qk_rope_head_dim, kv_dtype_};
    cpu::RmsNorm(h_.data(), L.attn_norm.data(), xn_.data(), T, hidden, eps);
    RETURN_IF_ERROR(AddAcrossRanks(T, [&](float* y) {
      L.attn.Forward(pool_, xn_.data(), T, step_.seqs, step_.positions.data(), rope_, cache, mla_mode_, y);
    }));
    cpu::RmsNorm(h_.data(), L.mlp_norm.data(), xn_.data(), T, hidden, eps);
    RETURN_IF_ERROR(AddAcrossRanks(T, [&](float* y) {
      if (L.moe) {
        L.moe->Forward(pool_, xn_.data(), T, y);
      } else {
        L.dense->Run(pool_, xn_.data(), T, hidden, y, /*accumulate=*/true, &mlp_scratch_);
      }
    }));
  }
  if (!last_stage()) {
    out->assign(h_.begin(), h_.end());
    return absl::OkStatus();
  }
  // Final norm and vocabulary projection only for the rows the caller samples from.
  const int64_t rows = static_cast<int64_t>(step_.logit_rows.size());
  for (int64_t r = 0; r < rows; ++r) {
    cpu::RmsNorm(&h_[step_.logit_rows[r] * hidden], final_norm_->data(), &xn_[r * hidden], 1, hidden, eps);
  }
  return ProjectLogits(pool_, tp_, tp_size(), *lm_head_, xn_.data(), rows, hidden, &local_logits_, &gathered_, out);
}

}  // namespace

absl::StatusOr<std::unique_ptr<CausalLM>> CreateDeepseek(const LoadedModel& model, const ShardSpec& shard_in,
                                                         ThreadPool* pool, const CausalLMOptions& options,
                                                         const DeepseekOptions& deepseek) {
  const ModelConfig& c = model.config;
  if (!IsDeepseek(c.arch)) {
    return absl::InvalidArgumentError(fmt::format("{}: architecture '{}' is not DeepSeek", model.path, c.arch_name));
  }
  ShardSpec shard = shard_in;
  RETURN_IF_ERROR(CheckModelArgs(model, pool, options, &shard));
  if (c.rope_scaling.type == RopeScaling::Type::kLlama3) {
    return absl::InvalidArgumentError(
        fmt::format("{}: rope scaling llama3 is not a DeepSeek rope scaling (use yarn)", model.path));
  }
  auto m = std::make_unique<DeepseekModel>(c, shard, pool, options, deepseek);
  RETURN_IF_ERROR(m->Load(*model.weights));
  return std::unique_ptr<CausalLM>(std::move(m));
}

}  // namespace shoal::worker
