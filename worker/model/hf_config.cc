#include "worker/model/hf_config.h"

#include <fmt/format.h>

#include <cmath>
#include <utility>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>

#include "worker/common/status_macros.h"
#include "worker/model/model_checks.h"

namespace shoal::worker {
namespace {

using Json = nlohmann::json;

absl::StatusOr<Json> ParseJsonObject(const std::string& source, const std::string& text) {
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(fmt::format("{}: not valid JSON", source));
  if (!j.is_object()) return absl::InvalidArgumentError(fmt::format("{}: not a JSON object", source));
  return j;
}

// Field readers over an untrusted object: absent or null gives nullopt, a wrong type an
// error naming the field.
class JsonFields {
 public:
  JsonFields(const std::string& source, const Json& j) : source_(source), j_(j) {}

  absl::Status Error(std::string_view field, const std::string& what) const {
    return absl::InvalidArgumentError(fmt::format("{}: field '{}' {}", source_, field, what));
  }
  const Json* Find(std::string_view field) const {
    auto it = j_.find(field);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  absl::StatusOr<std::optional<int64_t>> Int(std::string_view field) const {
    const Json* v = Find(field);
    if (v == nullptr) return std::optional<int64_t>();
    if (!v->is_number_integer()) return Error(field, "is not an integer");
    if (v->is_number_unsigned() &&
        v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Error(field, "is too large");
    }
    return v->get<int64_t>();
  }
  absl::StatusOr<int64_t> RequiredInt(std::string_view field) const {
    ASSIGN_OR_RETURN(std::optional<int64_t> v, Int(field));
    if (!v) return Error(field, "is missing");
    return *v;
  }
  absl::StatusOr<std::optional<double>> Number(std::string_view field) const {
    const Json* v = Find(field);
    if (v == nullptr) return std::optional<double>();
    if (!v->is_number()) return Error(field, "is not a number");
    return v->get<double>();
  }
  absl::StatusOr<std::optional<bool>> Bool(std::string_view field) const {
    const Json* v = Find(field);
    if (v == nullptr) return std::optional<bool>();
    if (!v->is_boolean()) return Error(field, "is not a boolean");
    return v->get<bool>();
  }
  absl::StatusOr<std::optional<std::string>> String(std::string_view field) const {
    const Json* v = Find(field);
    if (v == nullptr) return std::optional<std::string>();
    if (!v->is_string()) return Error(field, "is not a string");
    return v->get<std::string>();
  }
  // An id or a list of ids (eos_token_id is either).
  absl::StatusOr<std::vector<int32_t>> TokenIds(std::string_view field) const {
    std::vector<int32_t> ids;
    const Json* v = Find(field);
    if (v == nullptr) return ids;
    auto add = [&](const Json& x) -> absl::Status {
      if (!x.is_number_integer() || x.get<int64_t>() < 0 ||
          x.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        return Error(field, "must be a token id or a list of token ids");
      }
      ids.push_back(static_cast<int32_t>(x.get<int64_t>()));
      return absl::OkStatus();
    };
    if (v->is_array()) {
      for (const Json& x : *v) RETURN_IF_ERROR(add(x));
    } else {
      RETURN_IF_ERROR(add(*v));
    }
    return ids;
  }

 private:
  const std::string& source_;
  const Json& j_;
};

// transformers 5 writes `rope_parameters` (rope_type, rope_theta and the scaling
// factors together); older versions write `rope_scaling` and a top-level `rope_theta`.
// `field` is whichever of the two the file has.
absl::Status ParseRopeScaling(const std::string& source, const Json& config,
                              const char* field, RopeScaling* out) {
  auto it = config.find(field);
  if (it == config.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_object()) {
    return absl::InvalidArgumentError(
        fmt::format("{}: field '{}' is not an object", source, field));
  }
  JsonFields f(source, *it);
  // transformers renamed `type` to `rope_type`; files carry either.
  ASSIGN_OR_RETURN(std::optional<std::string> type, f.String("rope_type"));
  if (!type) {
    ASSIGN_OR_RETURN(type, f.String("type"));
  }
  if (!type || *type == "default") return absl::OkStatus();
  ASSIGN_OR_RETURN(std::optional<double> factor, f.Number("factor"));
  if (*type == "linear") {
    out->type = RopeScaling::Type::kLinear;
  } else if (*type == "llama3") {
    out->type = RopeScaling::Type::kLlama3;
    ASSIGN_OR_RETURN(std::optional<double> low, f.Number("low_freq_factor"));
    ASSIGN_OR_RETURN(std::optional<double> high, f.Number("high_freq_factor"));
    ASSIGN_OR_RETURN(std::optional<int64_t> orig, f.Int("original_max_position_embeddings"));
    if (!low || !high || !orig) {
      return absl::InvalidArgumentError(fmt::format(
          "{}: field '{}' of type llama3 needs low_freq_factor, high_freq_factor and "
          "original_max_position_embeddings",
          source, field));
    }
    out->low_freq_factor = *low;
    out->high_freq_factor = *high;
    out->original_max_position_embeddings = *orig;
  } else if (*type == "yarn") {
    out->type = RopeScaling::Type::kYarn;
    ASSIGN_OR_RETURN(std::optional<int64_t> orig, f.Int("original_max_position_embeddings"));
    if (!orig || *orig <= 0) {
      return absl::InvalidArgumentError(fmt::format(
          "{}: field '{}' of type yarn needs a positive original_max_position_embeddings",
          source, field));
    }
    out->original_max_position_embeddings = *orig;
    ASSIGN_OR_RETURN(std::optional<double> beta_fast, f.Number("beta_fast"));
    ASSIGN_OR_RETURN(std::optional<double> beta_slow, f.Number("beta_slow"));
    ASSIGN_OR_RETURN(std::optional<double> mscale, f.Number("mscale"));
    ASSIGN_OR_RETURN(std::optional<double> mscale_all_dim, f.Number("mscale_all_dim"));
    ASSIGN_OR_RETURN(out->attention_factor, f.Number("attention_factor"));
    ASSIGN_OR_RETURN(std::optional<bool> truncate, f.Bool("truncate"));
    // transformers treats 0 like absent for the betas (`or 32`), so do we.
    out->beta_fast = beta_fast && *beta_fast != 0 ? *beta_fast : 32.0;
    out->beta_slow = beta_slow && *beta_slow != 0 ? *beta_slow : 1.0;
    out->mscale = mscale.value_or(0.0);
    out->mscale_all_dim = mscale_all_dim.value_or(0.0);
    out->truncate = truncate.value_or(true);
    if (!(out->beta_slow > 0) || !(out->beta_fast > out->beta_slow)) {
      return absl::InvalidArgumentError(fmt::format(
          "{}: field '{}': beta_fast {} must be greater than beta_slow {}, and both positive", source, field,
          out->beta_fast, out->beta_slow));
    }
    // yarn_get_mscale(factor, m) = 0.1 m ln(factor) + 1 scales cos/sin and the softmax; at
    // or below 0 every logit turns infinite or NaN, so refuse it here with its field.
    const double yarn_factor = factor.value_or(1.0);
    const auto mscale_of = [&](double m) { return yarn_factor > 1 ? 0.1 * m * std::log(yarn_factor) + 1.0 : 1.0; };
    for (const auto& [name, m] : {std::pair{"mscale", out->mscale}, std::pair{"mscale_all_dim", out->mscale_all_dim}}) {
      if (!(mscale_of(m) > 0)) {
        return absl::InvalidArgumentError(fmt::format(
            "{}: field '{}.{}': {} makes YaRN's mscale 0.1 * {} * ln({}) + 1 = {}, which must be positive", source,
            field, name, m, m, yarn_factor, mscale_of(m)));
      }
    }
    if (out->attention_factor && !(*out->attention_factor > 0)) {
      return absl::InvalidArgumentError(fmt::format("{}: field '{}.attention_factor' is {}, expected > 0", source,
                                                    field, *out->attention_factor));
    }
  } else {
    return absl::InvalidArgumentError(fmt::format(
        "{}: field '{}' has type '{}', which is not supported (supported: linear, llama3, yarn)",
        source, field, *type));
  }
  if (!factor) {
    return absl::InvalidArgumentError(
        fmt::format("{}: field '{}' of type {} needs 'factor'", source, field, *type));
  }
  out->factor = *factor;
  return absl::OkStatus();
}

// DeepSeek-V2/V3's MLA and MoE fields, checked against each other here because only
// this parser knows them (ValidateModelConfig checks the generic part). Absent fields
// take the defaults of DeepSeek's own configuration classes.
absl::Status ParseDeepseekFields(const JsonFields& f, ModelConfig* c) {
  DeepseekConfig& d = c->deepseek;
  const bool v3 = c->arch == Arch::kDeepseekV3;
  ASSIGN_OR_RETURN(d.q_lora_rank, f.Int("q_lora_rank"));
  ASSIGN_OR_RETURN(d.kv_lora_rank, f.RequiredInt("kv_lora_rank"));
  ASSIGN_OR_RETURN(d.qk_nope_head_dim, f.RequiredInt("qk_nope_head_dim"));
  ASSIGN_OR_RETURN(d.qk_rope_head_dim, f.RequiredInt("qk_rope_head_dim"));
  ASSIGN_OR_RETURN(d.v_head_dim, f.RequiredInt("v_head_dim"));
  ASSIGN_OR_RETURN(std::optional<bool> interleave, f.Bool("rope_interleave"));
  d.rope_interleave = interleave.value_or(true);  // V2 always interleaves
  ASSIGN_OR_RETURN(std::optional<int64_t> routed, f.Int("n_routed_experts"));
  d.n_routed_experts = routed.value_or(0);  // absent: a dense model
  ASSIGN_OR_RETURN(std::optional<int64_t> shared, f.Int("n_shared_experts"));
  d.n_shared_experts = shared.value_or(0);
  ASSIGN_OR_RETURN(std::optional<int64_t> per_tok, f.Int("num_experts_per_tok"));
  d.num_experts_per_tok = per_tok.value_or(0);
  ASSIGN_OR_RETURN(std::optional<int64_t> moe_inter, f.Int("moe_intermediate_size"));
  d.moe_intermediate_size = moe_inter.value_or(0);
  ASSIGN_OR_RETURN(std::optional<int64_t> first_dense, f.Int("first_k_dense_replace"));
  d.first_k_dense_replace = first_dense.value_or(0);
  ASSIGN_OR_RETURN(std::optional<int64_t> freq, f.Int("moe_layer_freq"));
  d.moe_layer_freq = freq.value_or(1);
  ASSIGN_OR_RETURN(std::optional<int64_t> n_group, f.Int("n_group"));
  d.n_group = n_group.value_or(1);
  ASSIGN_OR_RETURN(std::optional<int64_t> topk_group, f.Int("topk_group"));
  d.topk_group = topk_group.value_or(1);
  ASSIGN_OR_RETURN(std::optional<bool> norm, f.Bool("norm_topk_prob"));
  d.norm_topk_prob = norm.value_or(v3);
  ASSIGN_OR_RETURN(std::optional<double> scaling, f.Number("routed_scaling_factor"));
  d.routed_scaling_factor = scaling.value_or(v3 ? 2.5 : 1.0);  // DeepseekV3Config's default is 2.5
  ASSIGN_OR_RETURN(std::optional<int64_t> nextn, f.Int("num_nextn_predict_layers"));
  d.num_nextn_predict_layers = nextn.value_or(0);

  ASSIGN_OR_RETURN(std::optional<std::string> scoring, f.String("scoring_func"));
  const std::string scoring_name = scoring.value_or(v3 ? "sigmoid" : "softmax");
  if (scoring_name == "softmax") {
    d.scoring_func = DeepseekConfig::ScoringFunc::kSoftmax;
  } else if (scoring_name == "sigmoid") {
    d.scoring_func = DeepseekConfig::ScoringFunc::kSigmoid;
  } else {
    return f.Error("scoring_func", fmt::format("is '{}' (expected softmax or sigmoid)", scoring_name));
  }
  ASSIGN_OR_RETURN(std::optional<std::string> method, f.String("topk_method"));
  const std::string method_name = method.value_or(v3 ? "noaux_tc" : "greedy");
  if (method_name == "greedy") {
    d.topk_method = DeepseekConfig::TopkMethod::kGreedy;
  } else if (method_name == "group_limited_greedy") {
    d.topk_method = DeepseekConfig::TopkMethod::kGroupLimitedGreedy;
  } else if (method_name == "noaux_tc") {
    d.topk_method = DeepseekConfig::TopkMethod::kNoauxTc;
  } else {
    return f.Error("topk_method", fmt::format("is '{}' (expected greedy, group_limited_greedy or noaux_tc)",
                                              method_name));
  }
  // noaux_tc is defined over sigmoid scores plus the correction bias; the greedy methods
  // over softmax probabilities. The other pairings exist in no checkpoint.
  const bool sigmoid = d.scoring_func == DeepseekConfig::ScoringFunc::kSigmoid;
  if (sigmoid != (d.topk_method == DeepseekConfig::TopkMethod::kNoauxTc)) {
    return f.Error("topk_method", fmt::format("'{}' does not go with scoring_func '{}' (noaux_tc needs "
                                              "sigmoid; greedy and group_limited_greedy need softmax)",
                                              method_name, scoring_name));
  }

  // MLA has one latent "kv head" shared by all query heads; the generic fields are set
  // so that ValidateModelConfig's head checks hold (HF's DeepSeek-V3 config writes a
  // num_key_value_heads and a head_dim that MLA does not use).
  c->num_kv_heads = c->num_heads;
  c->head_dim = d.qk_nope_head_dim + d.qk_rope_head_dim;

  constexpr int64_t kMaxSize = kMaxConfigSize;
  auto positive = [&](const char* field, int64_t v) -> absl::Status {
    if (v <= 0 || v > kMaxSize) return f.Error(field, fmt::format("is {} (expected 1 to {})", v, kMaxSize));
    return absl::OkStatus();
  };
  if (d.q_lora_rank) RETURN_IF_ERROR(positive("q_lora_rank", *d.q_lora_rank));
  RETURN_IF_ERROR(positive("kv_lora_rank", d.kv_lora_rank));
  RETURN_IF_ERROR(positive("qk_rope_head_dim", d.qk_rope_head_dim));
  RETURN_IF_ERROR(positive("v_head_dim", d.v_head_dim));
  if (d.qk_nope_head_dim < 0 || d.qk_nope_head_dim > kMaxSize) {
    return f.Error("qk_nope_head_dim", fmt::format("is {} (expected 0 to {})", d.qk_nope_head_dim, kMaxSize));
  }
  if (d.qk_rope_head_dim % 2 != 0) {
    return f.Error("qk_rope_head_dim", fmt::format("is {}, which is odd; rotary embeddings need pairs",
                                                   d.qk_rope_head_dim));
  }
  if (d.n_routed_experts < 0 || d.n_routed_experts > kMaxSize) {
    return f.Error("n_routed_experts", fmt::format("is {} (expected 0 to {})", d.n_routed_experts, kMaxSize));
  }
  if (const std::optional<FieldProblem> p = DeepseekRoutingProblem(d)) return f.Error(p->field.c_str(), p->what);
  if (d.num_nextn_predict_layers < 0) {
    return f.Error("num_nextn_predict_layers", fmt::format("is {} (expected >= 0)", d.num_nextn_predict_layers));
  }
  return absl::OkStatus();
}

// `quantization_config`: the only scheme read is DeepSeek-V3's FP8 (e4m3 weights with one
// scale per 128x128 block in `<name>.weight_scale_inv`, activations kept in f32, which
// is at least as exact as the dynamic per-token FP8 the config names). The weights' own
// dtype says which tensors are FP8 (worker/models/linear.cc); anything else is refused
// here rather than misread there.
absl::Status CheckQuantizationConfig(const std::string& source, const Json& config) {
  auto it = config.find("quantization_config");
  if (it == config.end() || it->is_null()) return absl::OkStatus();
  auto bad = [&](std::string_view sub_field, const std::string& what) {
    return absl::InvalidArgumentError(
        fmt::format("{}: field 'quantization_config{}' {}", source, sub_field, what));
  };
  if (!it->is_object()) return bad("", "is not an object");
  auto text = [&](const char* key) -> std::optional<std::string> {
    auto v = it->find(key);
    if (v == it->end() || !v->is_string()) return std::nullopt;
    return v->get<std::string>();
  };
  const std::optional<std::string> method = text("quant_method");
  if (method != "fp8") {
    return bad(".quant_method", fmt::format("is '{}' (supported: fp8, DeepSeek-V3's block-scaled FP8)",
                                            method.value_or("")));
  }
  if (const auto fmt_name = text("fmt"); fmt_name && *fmt_name != "e4m3") {
    return bad(".fmt", fmt::format("is '{}' (supported: e4m3)", *fmt_name));
  }
  if (const auto scheme = text("activation_scheme"); scheme && *scheme != "dynamic") {
    return bad(".activation_scheme", fmt::format("is '{}' (supported: dynamic)", *scheme));
  }
  if (auto block = it->find("weight_block_size"); block != it->end()) {
    if (!block->is_array() || block->size() != 2 || !(*block)[0].is_number_integer() ||
        !(*block)[1].is_number_integer() || (*block)[0].get<int64_t>() != 128 ||
        (*block)[1].get<int64_t>() != 128) {
      return bad(".weight_block_size", "must be [128, 128]");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseHfConfig(const std::string& source, const std::string& text) {
  ASSIGN_OR_RETURN(Json j, ParseJsonObject(source, text));
  JsonFields f(source, j);
  ASSIGN_OR_RETURN(std::optional<std::string> model_type, f.String("model_type"));
  if (!model_type) return f.Error("model_type", "is missing");
  ModelConfig c;
  if (*model_type == "llama") {
    c.arch = Arch::kLlama;
  } else if (*model_type == "qwen2") {
    c.arch = Arch::kQwen2;
  } else if (*model_type == "deepseek_v2") {
    c.arch = Arch::kDeepseekV2;
  } else if (*model_type == "deepseek_v3") {
    c.arch = Arch::kDeepseekV3;
  } else {
    return f.Error("model_type", fmt::format("is '{}', which is not supported (supported: "
                                             "llama, qwen2, deepseek_v2, deepseek_v3)",
                                             *model_type));
  }
  c.arch_name = *model_type;
  ASSIGN_OR_RETURN(c.hidden_size, f.RequiredInt("hidden_size"));
  ASSIGN_OR_RETURN(c.intermediate_size, f.RequiredInt("intermediate_size"));
  ASSIGN_OR_RETURN(c.num_layers, f.RequiredInt("num_hidden_layers"));
  ASSIGN_OR_RETURN(c.num_heads, f.RequiredInt("num_attention_heads"));
  ASSIGN_OR_RETURN(c.vocab_size, f.RequiredInt("vocab_size"));
  ASSIGN_OR_RETURN(std::optional<int64_t> kv_heads, f.Int("num_key_value_heads"));
  c.num_kv_heads = kv_heads.value_or(c.num_heads);
  ASSIGN_OR_RETURN(std::optional<int64_t> head_dim, f.Int("head_dim"));
  c.head_dim = head_dim.value_or(0);
  ASSIGN_OR_RETURN(std::optional<double> eps, f.Number("rms_norm_eps"));
  c.rms_norm_eps = eps.value_or(1e-6);
  ASSIGN_OR_RETURN(std::optional<double> theta, f.Number("rope_theta"));
  const Json* rope_parameters = f.Find("rope_parameters");
  if (!theta && rope_parameters != nullptr && rope_parameters->is_object()) {
    ASSIGN_OR_RETURN(theta, JsonFields(source, *rope_parameters).Number("rope_theta"));
  }
  c.rope_theta = theta.value_or(10000.0);
  const char* scaling_field = f.Find("rope_scaling") != nullptr ? "rope_scaling" : "rope_parameters";
  RETURN_IF_ERROR(ParseRopeScaling(source, j, scaling_field, &c.rope_scaling));
  ASSIGN_OR_RETURN(std::optional<int64_t> max_pos, f.Int("max_position_embeddings"));
  c.max_position_embeddings = max_pos.value_or(2048);
  ASSIGN_OR_RETURN(std::optional<bool> tie, f.Bool("tie_word_embeddings"));
  c.tie_word_embeddings = tie.value_or(false);
  // Qwen2 always has q/k/v biases; llama has them only when the config says so.
  ASSIGN_OR_RETURN(std::optional<bool> bias, f.Bool("attention_bias"));
  c.attention_bias = c.arch == Arch::kQwen2 ? true : bias.value_or(false);
  c.rope_interleaved = false;  // HF checkpoints rotate halves: x[i] pairs with x[i + d/2]
  ASSIGN_OR_RETURN(std::vector<int32_t> bos, f.TokenIds("bos_token_id"));
  if (bos.size() > 1) return f.Error("bos_token_id", "must be a single token id");
  if (!bos.empty()) c.bos_token_id = bos[0];
  ASSIGN_OR_RETURN(c.eos_token_ids, f.TokenIds("eos_token_id"));
  RETURN_IF_ERROR(CheckQuantizationConfig(source, j));
  if (IsDeepseek(c.arch)) {
    RETURN_IF_ERROR(ParseDeepseekFields(f, &c));
  } else if (c.rope_scaling.type == RopeScaling::Type::kYarn) {
    return f.Error(scaling_field, fmt::format("has type yarn, which model_type {} does not support "
                                              "(only deepseek_v2 and deepseek_v3 do)",
                                              c.arch_name));
  }
  return c;
}

absl::StatusOr<std::vector<int32_t>> ParseGenerationConfigEos(const std::string& source,
                                                              const std::string& text) {
  ASSIGN_OR_RETURN(Json j, ParseJsonObject(source, text));
  return JsonFields(source, j).TokenIds("eos_token_id");
}

absl::StatusOr<std::string> ParseTokenizerConfigChatTemplate(const std::string& source,
                                                             const std::string& text) {
  ASSIGN_OR_RETURN(Json j, ParseJsonObject(source, text));
  JsonFields f(source, j);
  const Json* t = f.Find("chat_template");
  if (t == nullptr) return std::string();
  if (t->is_string()) return t->get<std::string>();
  if (t->is_array()) {
    for (const Json& entry : *t) {
      if (entry.is_object() && entry.value("name", Json()) == "default" &&
          entry.contains("template") && entry["template"].is_string()) {
        return entry["template"].get<std::string>();
      }
    }
    return f.Error("chat_template", "is a list of templates without one named \"default\"");
  }
  return f.Error("chat_template", "is neither a string nor a list of named templates");
}

}  // namespace shoal::worker
