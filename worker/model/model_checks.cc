#include "worker/model/model_checks.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <utility>

#include "worker/common/status_macros.h"
#include "worker/model/deepseek_tensors.h"

namespace shoal::worker {

absl::Status ValidateModelConfig(const std::string& source, ModelConfig* c) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(fmt::format("{}: {}", source, what));
  };
  const std::pair<const char*, int64_t> sizes[] = {
      {"vocab_size", c->vocab_size},
      {"hidden_size", c->hidden_size},
      {"intermediate_size", c->intermediate_size},
      {"num_hidden_layers", c->num_layers},
      {"num_attention_heads", c->num_heads},
      {"num_key_value_heads", c->num_kv_heads},
  };
  // No real model comes near 2^26 in any dimension; the cap keeps products such as
  // heads * head_dim far from overflow when a corrupt file says otherwise.
  constexpr int64_t kMaxSize = int64_t{1} << 26;
  for (const auto& [name, v] : sizes) {
    if (v <= 0 || v > kMaxSize) {
      return bad(fmt::format("{} is {} (expected 1 to {})", name, v, kMaxSize));
    }
  }
  if (c->head_dim < 0 || c->head_dim > kMaxSize) {
    return bad(fmt::format("head_dim is {} (expected 1 to {})", c->head_dim, kMaxSize));
  }
  if (c->head_dim == 0) {
    if (c->hidden_size % c->num_heads != 0) {
      return bad(fmt::format("hidden_size {} is not a multiple of num_attention_heads {} "
                             "and no head_dim is given",
                             c->hidden_size, c->num_heads));
    }
    c->head_dim = c->hidden_size / c->num_heads;
  }
  if (c->num_heads % c->num_kv_heads != 0) {
    return bad(fmt::format("num_attention_heads {} is not a multiple of num_key_value_heads {}",
                           c->num_heads, c->num_kv_heads));
  }
  // DeepSeek's head_dim is qk_nope + qk_rope; only the rope part (checked even with the
  // DeepSeek fields) rotates.
  if (c->head_dim % 2 != 0 && !IsDeepseek(c->arch)) {
    return bad(fmt::format("head_dim {} is odd; rotary embeddings need pairs", c->head_dim));
  }
  if (!(c->rms_norm_eps > 0) || !std::isfinite(c->rms_norm_eps)) {
    return bad(fmt::format("rms_norm_eps is {} (expected > 0)", c->rms_norm_eps));
  }
  if (!(c->rope_theta > 0) || !std::isfinite(c->rope_theta)) {
    return bad(fmt::format("rope_theta is {} (expected > 0)", c->rope_theta));
  }
  if (c->max_position_embeddings <= 0) {
    return bad(fmt::format("max_position_embeddings is {} (expected > 0)",
                           c->max_position_embeddings));
  }
  if (c->rope_scaling.type != RopeScaling::Type::kNone && !(c->rope_scaling.factor > 0)) {
    return bad(fmt::format("rope_scaling factor is {} (expected > 0)", c->rope_scaling.factor));
  }
  auto check_token = [&](const char* name, int32_t id) -> absl::Status {
    if (id < 0 || id >= c->vocab_size) {
      return bad(fmt::format("{} {} is outside the vocabulary of {}", name, id, c->vocab_size));
    }
    return absl::OkStatus();
  };
  if (c->bos_token_id) {
    absl::Status s = check_token("bos_token_id", *c->bos_token_id);
    if (!s.ok()) return s;
  }
  for (int32_t id : c->eos_token_ids) {
    absl::Status s = check_token("eos_token_id", id);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status ForEachExpectedTensor(const ModelConfig& c,
                                   const std::function<absl::Status(const ExpectedTensor&)>& visit) {
  if (IsDeepseek(c.arch)) return ForEachExpectedDeepseekTensor(c, visit);
  const int64_t hidden = c.hidden_size;
  const int64_t q_out = c.num_heads * c.head_dim;
  const int64_t kv_out = c.num_kv_heads * c.head_dim;
  std::vector<ExpectedTensor> model = {
      {"model.embed_tokens.weight", {c.vocab_size, hidden}},
      {"model.norm.weight", {hidden}},
  };
  if (!c.tie_word_embeddings) model.push_back({"lm_head.weight", {c.vocab_size, hidden}});
  for (const ExpectedTensor& e : model) RETURN_IF_ERROR(visit(e));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    std::string p = fmt::format("model.layers.{}.", l);
    std::vector<ExpectedTensor> layer = {
        {p + "input_layernorm.weight", {hidden}},
        {p + "post_attention_layernorm.weight", {hidden}},
        {p + "self_attn.q_proj.weight", {q_out, hidden}},
        {p + "self_attn.k_proj.weight", {kv_out, hidden}},
        {p + "self_attn.v_proj.weight", {kv_out, hidden}},
        {p + "self_attn.o_proj.weight", {hidden, q_out}},
        {p + "mlp.gate_proj.weight", {c.intermediate_size, hidden}},
        {p + "mlp.up_proj.weight", {c.intermediate_size, hidden}},
        {p + "mlp.down_proj.weight", {hidden, c.intermediate_size}},
    };
    if (c.attention_bias) {
      layer.push_back({p + "self_attn.q_proj.bias", {q_out}});
      layer.push_back({p + "self_attn.k_proj.bias", {kv_out}});
      layer.push_back({p + "self_attn.v_proj.bias", {kv_out}});
    }
    for (const ExpectedTensor& e : layer) RETURN_IF_ERROR(visit(e));
  }
  return absl::OkStatus();
}

absl::Status CheckModelTensors(const ModelConfig& config, const WeightStore& weights) {
  return ForEachExpectedTensor(config, [&](const ExpectedTensor& e) -> absl::Status {
    const TensorView* t = weights.Find(e.name);
    if (t == nullptr) {
      return absl::InvalidArgumentError(
          fmt::format("{}: tensor '{}' is missing (expected shape [{}])", weights.Source(),
                      e.name, fmt::join(e.shape, ", ")));
    }
    if (t->shape != e.shape) {
      return absl::InvalidArgumentError(fmt::format(
          "{}: tensor '{}' has shape [{}], expected [{}]", weights.Source(), e.name,
          fmt::join(t->shape, ", "), fmt::join(e.shape, ", ")));
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<const TensorView*> FindFp8BlockScales(const WeightStore& store, const std::string& weight,
                                                     int64_t rows, int64_t cols) {
  const std::string sname = weight + "_scale_inv";
  const TensorView* s = store.Find(sname);
  if (s == nullptr) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor '{}' is F8_E4M3 but its block scales '{}' are missing",
                                                  store.Source(), weight, sname));
  }
  const int64_t want_rows = (rows + kFp8ScaleBlockSize - 1) / kFp8ScaleBlockSize;
  const int64_t want_cols = (cols + kFp8ScaleBlockSize - 1) / kFp8ScaleBlockSize;
  if (s->dtype != DType::kF32 || s->shape != std::vector<int64_t>{want_rows, want_cols}) {
    return absl::InvalidArgumentError(fmt::format(
        "{}: tensor '{}' is {} of shape [{}], expected F32 [{}, {}] (one scale per {}x{} block of the [{}, {}] "
        "weight)",
        store.Source(), sname, DTypeName(s->dtype), fmt::join(s->shape, ", "), want_rows, want_cols,
        kFp8ScaleBlockSize, kFp8ScaleBlockSize, rows, cols));
  }
  return s;
}

std::optional<FieldProblem> DeepseekRoutingProblem(const DeepseekConfig& d) {
  if (d.n_routed_experts <= 0) return std::nullopt;
  constexpr int64_t kMaxSize = kMaxConfigSize;
  const std::pair<const char*, int64_t> positive[] = {{"num_experts_per_tok", d.num_experts_per_tok},
                                                      {"moe_intermediate_size", d.moe_intermediate_size},
                                                      {"moe_layer_freq", d.moe_layer_freq},
                                                      {"n_group", d.n_group},
                                                      {"topk_group", d.topk_group}};
  for (const auto& [field, v] : positive) {
    if (v <= 0 || v > kMaxSize) return FieldProblem{field, fmt::format("is {} (expected 1 to {})", v, kMaxSize)};
  }
  if (d.n_shared_experts < 0 || d.n_shared_experts > kMaxSize) {
    return FieldProblem{"n_shared_experts", fmt::format("is {} (expected 0 to {})", d.n_shared_experts, kMaxSize)};
  }
  if (d.first_k_dense_replace < 0) {
    return FieldProblem{"first_k_dense_replace", fmt::format("is {} (expected >= 0)", d.first_k_dense_replace)};
  }
  if (d.num_experts_per_tok > d.n_routed_experts) {
    return FieldProblem{"num_experts_per_tok", fmt::format("is {}, more than the {} n_routed_experts",
                                                      d.num_experts_per_tok, d.n_routed_experts)};
  }
  if (d.n_routed_experts % d.n_group != 0) {
    return FieldProblem{"n_group", fmt::format("is {}, which does not divide the {} n_routed_experts", d.n_group,
                                          d.n_routed_experts)};
  }
  if (d.topk_group > d.n_group) {
    return FieldProblem{"topk_group", fmt::format("is {}, more than the {} groups (n_group)", d.topk_group, d.n_group)};
  }
  const int64_t per_group = d.n_routed_experts / d.n_group;
  if (d.topk_method != DeepseekConfig::TopkMethod::kGreedy && d.topk_group * per_group < d.num_experts_per_tok) {
    return FieldProblem{"topk_group", fmt::format("is {}: {} groups of {} experts cannot supply the {} "
                                             "num_experts_per_tok",
                                             d.topk_group, d.topk_group, per_group, d.num_experts_per_tok)};
  }
  // noaux_tc scores a group by its best two experts.
  if (d.topk_method == DeepseekConfig::TopkMethod::kNoauxTc && per_group < 2) {
    return FieldProblem{"n_group", fmt::format("is {}: noaux_tc needs at least 2 experts per group, "
                                          "{} n_routed_experts give {}",
                                          d.n_group, d.n_routed_experts, per_group)};
  }
  if (!(d.routed_scaling_factor > 0) || !std::isfinite(d.routed_scaling_factor)) {
    return FieldProblem{"routed_scaling_factor", fmt::format("is {} (expected > 0)", d.routed_scaling_factor)};
  }
  return std::nullopt;
}

}  // namespace shoal::worker
