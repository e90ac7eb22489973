#pragma once
// DeepSeek-V2, V2-Lite, V3 and R1: decoder blocks of multi-head latent attention
// (deepseek_mla.h) and either a dense SwiGLU MLP (the first first_k_dense_replace layers)
// or DeepSeekMoE (deepseek_moe.h). The paged KV cache holds, per token and layer, only
// the compressed latent and the rotary key: (kv_lora_rank + qk_rope_head_dim) elements.
#include <memory>

#include "absl/status/statusor.h"
#include "worker/models/causal_lm.h"
#include "worker/models/deepseek_mla.h"

namespace shoal::worker {

// DeepSeek-only choices, for tests and benchmarks; CreateCausalLM uses the defaults.
struct DeepseekOptions {
  MlaMode mla_mode = MlaMode::kAuto;
};

absl::StatusOr<std::unique_ptr<CausalLM>> CreateDeepseek(const LoadedModel& model, const ShardSpec& shard,
                                                         ThreadPool* pool, const CausalLMOptions& options,
                                                         const DeepseekOptions& deepseek = {});

}  // namespace shoal::worker
