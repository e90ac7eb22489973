#include "worker/model/hf_config.h"

#include <fmt/format.h>

#include <limits>
#include <nlohmann/json.hpp>
#include <optional>

#include "worker/common/status_macros.h"

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
  } else {
    return absl::InvalidArgumentError(fmt::format(
        "{}: field '{}' has type '{}', which is not supported (supported: linear, llama3)",
        source, field, *type));
  }
  if (!factor) {
    return absl::InvalidArgumentError(
        fmt::format("{}: field '{}' of type {} needs 'factor'", source, field, *type));
  }
  out->factor = *factor;
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
  } else {
    return f.Error("model_type", fmt::format("is '{}', which is not supported (supported: "
                                             "llama, qwen2)",
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
