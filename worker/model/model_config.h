#pragma once
// The architecture description every other layer reads: filled from a Hugging Face
// config.json or from GGUF metadata, validated once, then immutable.
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace shoal::worker {

enum class Arch { kLlama, kQwen2, kDeepseekV2, kDeepseekV3 };

// Rotary embedding frequency scaling, as in transformers' `rope_scaling`.
struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3, kYarn } type = Type::kNone;
  double factor = 1.0;
  // llama3 only
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;  // llama3 and yarn
  // yarn only (DeepSeek-V2/V3): dimensions whose wavelength fits the original context
  // between beta_fast and beta_slow rotations are blended from extrapolated to
  // interpolated frequencies; mscale/mscale_all_dim set the cos/sin magnitude
  // (attention_factor) and the softmax scale (see worker/kernels/cpu/yarn_rope.h).
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;          // 0 = absent
  double mscale_all_dim = 0.0;  // 0 = absent
  std::optional<double> attention_factor;  // explicit cos/sin scale, else derived
  bool truncate = true;  // round the blend range to whole dimensions
};

// DeepSeek-V2/V3: multi-head latent attention (MLA) and DeepSeekMoE, as the HF
// config.json names them. Filled only for Arch::kDeepseekV2 / kDeepseekV3.
struct DeepseekConfig {
  // MLA. q is a low-rank projection (q_a_proj -> q_a_layernorm -> q_b_proj) when
  // q_lora_rank is set, a plain q_proj otherwise (V2-Lite). Keys and values come from a
  // per-token latent of kv_lora_rank plus one shared rotary key of qk_rope_head_dim.
  std::optional<int64_t> q_lora_rank;
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  // Rotary pairs are (x[2i], x[2i+1]) (DeepSeek's layout) rather than (x[i], x[i+d/2]).
  bool rope_interleave = true;

  // DeepSeekMoE. Layer l is MoE when l >= first_k_dense_replace and l % moe_layer_freq
  // == 0, dense (intermediate_size) otherwise.
  int64_t n_routed_experts = 0;
  int64_t n_shared_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  int64_t n_group = 1;     // experts are split into n_group equal groups ...
  int64_t topk_group = 1;  // ... and a token picks experts from its best topk_group groups
  enum class TopkMethod { kGreedy, kGroupLimitedGreedy, kNoauxTc } topk_method = TopkMethod::kGreedy;
  enum class ScoringFunc { kSoftmax, kSigmoid } scoring_func = ScoringFunc::kSoftmax;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
  // Multi-token-prediction layers stored after the last decoder layer (V3); not run.
  int64_t num_nextn_predict_layers = 0;

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool IsMoeLayer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
};

struct ModelConfig {
  Arch arch = Arch::kLlama;
  std::string arch_name;  // "llama", "qwen2": as the HF `model_type`
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // hidden_size / num_heads unless the config says otherwise
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  // GGUF files converted from llama checkpoints have q/k rows permuted so that rotary
  // pairs are adjacent (x[2i], x[2i+1]); HF checkpoints pair x[i] with x[i + d/2].
  bool rope_interleaved = false;
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections have a bias (qwen2)
  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;
  // For DeepSeek, num_kv_heads = num_heads and head_dim = qk_head_dim (MLA has no kv
  // heads of its own; these keep the generic checks meaningful).
  DeepseekConfig deepseek;
};

inline bool IsDeepseek(Arch a) { return a == Arch::kDeepseekV2 || a == Arch::kDeepseekV3; }

// Which part of the model one rank holds. Tensor parallel splits heads, MLP columns and
// the vocabulary `tp_size` ways; pipeline parallel gives each stage the layers
// [first_layer, end_layer). A single-process model is {0, 1, 0, num_layers}.
struct ShardSpec {
  int tp_rank = 0;
  int tp_size = 1;
  int64_t first_layer = 0;
  int64_t end_layer = -1;  // -1 = num_layers
  bool is_first_stage() const { return first_layer == 0; }
};

// The routed experts [begin, end) one rank of an expert-parallel group holds (MoE
// models; the tensor ranks of a stage split the experts this way): contiguous slices,
// the remainder spread over the first ranks. Every rank routes all tokens and the
// ranks' partial outputs add up.
struct ExpertRange {
  int64_t begin = 0;
  int64_t end = 0;
  bool Contains(int64_t e) const { return e >= begin && e < end; }
  static ExpertRange Of(int64_t num_experts, int rank, int size) {
    const int64_t base = num_experts / size, extra = num_experts % size;
    const int64_t begin = rank * base + std::min<int64_t>(rank, extra);
    return {begin, begin + base + (rank < extra ? 1 : 0)};
  }
};

}  // namespace shoal::worker
