#pragma once
// Real models' shapes for benchmarks that draw random weights of them (no checkpoint
// files here): the numbers of their config.json.
#include "worker/model/model_config.h"

namespace shoal::worker {

// DeepSeek-R1-Distill-Qwen-7B's config.json (qwen2).
inline ModelConfig R1DistillQwen7B() {
  ModelConfig c;
  c.arch = Arch::kQwen2;
  c.arch_name = "qwen2";
  c.vocab_size = 152064;
  c.hidden_size = 3584;
  c.intermediate_size = 18944;
  c.num_layers = 28;
  c.num_heads = 28;
  c.num_kv_heads = 4;
  c.head_dim = 128;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000.0;
  c.max_position_embeddings = 131072;
  c.attention_bias = true;
  c.tie_word_embeddings = false;
  return c;
}

// DeepSeek-V2-Lite's config.json.
inline ModelConfig DeepseekV2Lite() {
  ModelConfig c;
  c.arch = Arch::kDeepseekV2;
  c.arch_name = "deepseek_v2";
  c.vocab_size = 102400;
  c.hidden_size = 2048;
  c.intermediate_size = 10944;
  c.num_layers = 27;
  c.num_heads = 16;
  c.num_kv_heads = 16;
  c.head_dim = 192;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000.0;
  c.max_position_embeddings = 163840;
  c.rope_scaling.type = RopeScaling::Type::kYarn;
  c.rope_scaling.factor = 40.0;
  c.rope_scaling.original_max_position_embeddings = 4096;
  c.rope_scaling.beta_fast = 32.0;
  c.rope_scaling.beta_slow = 1.0;
  c.rope_scaling.mscale = 0.707;
  c.rope_scaling.mscale_all_dim = 0.707;
  DeepseekConfig& d = c.deepseek;
  d.kv_lora_rank = 512;
  d.qk_nope_head_dim = 128;
  d.qk_rope_head_dim = 64;
  d.v_head_dim = 128;
  d.n_routed_experts = 64;
  d.n_shared_experts = 2;
  d.num_experts_per_tok = 6;
  d.moe_intermediate_size = 1408;
  d.first_k_dense_replace = 1;
  d.topk_method = DeepseekConfig::TopkMethod::kGreedy;
  d.scoring_func = DeepseekConfig::ScoringFunc::kSoftmax;
  return c;
}

}  // namespace shoal::worker
