#include "worker/model/deepseek_tensors.h"

#include <fmt/format.h>

#include <string>
#include <vector>

#include "worker/common/status_macros.h"

namespace shoal::worker {

absl::Status ForEachExpectedDeepseekTensor(const ModelConfig& c,
                                           const std::function<absl::Status(const ExpectedTensor&)>& visit) {
  const DeepseekConfig& d = c.deepseek;
  const int64_t hidden = c.hidden_size, heads = c.num_heads;
  std::vector<ExpectedTensor> model = {
      {"model.embed_tokens.weight", {c.vocab_size, hidden}},
      {"model.norm.weight", {hidden}},
  };
  if (!c.tie_word_embeddings) model.push_back({"lm_head.weight", {c.vocab_size, hidden}});
  for (const ExpectedTensor& e : model) RETURN_IF_ERROR(visit(e));

  auto mlp = [&](const std::string& p, int64_t inter) -> absl::Status {
    RETURN_IF_ERROR(visit({p + "gate_proj.weight", {inter, hidden}}));
    RETURN_IF_ERROR(visit({p + "up_proj.weight", {inter, hidden}}));
    return visit({p + "down_proj.weight", {hidden, inter}});
  };
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    std::vector<ExpectedTensor> attn = {
        {p + "input_layernorm.weight", {hidden}},
        {p + "post_attention_layernorm.weight", {hidden}},
        {p + "self_attn.kv_a_proj_with_mqa.weight", {d.kv_lora_rank + d.qk_rope_head_dim, hidden}},
        {p + "self_attn.kv_a_layernorm.weight", {d.kv_lora_rank}},
        {p + "self_attn.kv_b_proj.weight", {heads * (d.qk_nope_head_dim + d.v_head_dim), d.kv_lora_rank}},
        {p + "self_attn.o_proj.weight", {hidden, heads * d.v_head_dim}},
    };
    if (d.q_lora_rank) {
      attn.push_back({p + "self_attn.q_a_proj.weight", {*d.q_lora_rank, hidden}});
      attn.push_back({p + "self_attn.q_a_layernorm.weight", {*d.q_lora_rank}});
      attn.push_back({p + "self_attn.q_b_proj.weight", {heads * d.qk_head_dim(), *d.q_lora_rank}});
    } else {
      attn.push_back({p + "self_attn.q_proj.weight", {heads * d.qk_head_dim(), hidden}});
    }
    for (const ExpectedTensor& e : attn) RETURN_IF_ERROR(visit(e));
    if (!d.IsMoeLayer(l)) {
      RETURN_IF_ERROR(mlp(p + "mlp.", c.intermediate_size));
      continue;
    }
    RETURN_IF_ERROR(visit({p + "mlp.gate.weight", {d.n_routed_experts, hidden}}));
    if (d.topk_method == DeepseekConfig::TopkMethod::kNoauxTc) {
      RETURN_IF_ERROR(visit({p + "mlp.gate.e_score_correction_bias", {d.n_routed_experts}}));
    }
    for (int64_t e = 0; e < d.n_routed_experts; ++e) {
      RETURN_IF_ERROR(mlp(fmt::format("{}mlp.experts.{}.", p, e), d.moe_intermediate_size));
    }
    if (d.n_shared_experts > 0) {
      RETURN_IF_ERROR(mlp(p + "mlp.shared_experts.", d.moe_intermediate_size * d.n_shared_experts));
    }
  }
  return absl::OkStatus();
}

}  // namespace shoal::worker
