#include "worker/model/gguf_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <utility>

#include "worker/common/status_macros.h"
#include "worker/model/gguf_names.h"
#include "worker/model/mapped_file.h"
#include "worker/model/mapped_weight_store.h"
#include "worker/model/model_checks.h"

namespace shoal::worker {
namespace {

absl::Status MetadataError(const GgufFile& f, std::string_view key, const std::string& what) {
  return absl::InvalidArgumentError(fmt::format("{}: metadata '{}' {}", f.source, key, what));
}

// Typed lookups: nullopt when the key is absent, an error naming the key when it has the
// wrong type.
absl::StatusOr<std::optional<int64_t>> FindInt(const GgufFile& f, std::string_view key) {
  const GgufValue* v = f.Find(key);
  if (v == nullptr) return std::optional<int64_t>();
  std::optional<int64_t> i = v->AsInt();
  if (!i) {
    return MetadataError(f, key, fmt::format("has type {}, expected an integer",
                                             GgufTypeName(v->type)));
  }
  return i;
}

absl::StatusOr<int64_t> GetInt(const GgufFile& f, std::string_view key) {
  ASSIGN_OR_RETURN(std::optional<int64_t> i, FindInt(f, key));
  if (!i) return MetadataError(f, key, "is missing");
  return *i;
}

absl::StatusOr<std::optional<double>> FindDouble(const GgufFile& f, std::string_view key) {
  const GgufValue* v = f.Find(key);
  if (v == nullptr) return std::optional<double>();
  std::optional<double> d = v->AsDouble();
  if (!d) {
    return MetadataError(f, key, fmt::format("has type {}, expected a number",
                                             GgufTypeName(v->type)));
  }
  return d;
}

absl::StatusOr<std::optional<std::string>> FindString(const GgufFile& f, std::string_view key) {
  const GgufValue* v = f.Find(key);
  if (v == nullptr) return std::optional<std::string>();
  if (v->AsString() == nullptr) {
    return MetadataError(f, key, fmt::format("has type {}, expected a string",
                                             GgufTypeName(v->type)));
  }
  return *v->AsString();
}

// An array whose every element is a string (`want_strings`) or an integer of any width;
// nullptr when absent.
absl::StatusOr<const GgufArray*> FindArray(const GgufFile& f, std::string_view key,
                                           bool want_strings) {
  const GgufValue* v = f.Find(key);
  if (v == nullptr) return static_cast<const GgufArray*>(nullptr);
  const GgufArray* a = v->AsArray();
  bool ok = a != nullptr;
  if (ok && want_strings) {
    ok = a->element_type == GgufType::kString;
  } else if (ok) {
    for (const GgufValue& item : a->items) ok = ok && item.AsInt().has_value();
  }
  if (!ok) {
    std::string got = a == nullptr ? std::string(GgufTypeName(v->type))
                                   : fmt::format("array of {}", GgufTypeName(a->element_type));
    return MetadataError(f, key, fmt::format("has type {}, expected an array of {}", got,
                                             want_strings ? "string" : "integers"));
  }
  return a;
}

absl::StatusOr<std::optional<int32_t>> FindTokenId(const GgufFile& f, std::string_view key,
                                                   size_t num_tokens) {
  ASSIGN_OR_RETURN(std::optional<int64_t> id, FindInt(f, key));
  if (!id) return std::optional<int32_t>();
  if (*id < 0 || static_cast<uint64_t>(*id) >= num_tokens) {
    return MetadataError(f, key, fmt::format("is {}, outside the {} tokens", *id, num_tokens));
  }
  return static_cast<int32_t>(*id);
}

absl::StatusOr<LoadedModel> BuildGgufModel(const std::string& source,
                                           std::span<const std::byte> bytes,
                                           std::vector<MappedFile> files) {
  ASSIGN_OR_RETURN(GgufFile file, ParseGguf(source, bytes));
  LoadedModel model;
  model.path = source;
  ASSIGN_OR_RETURN(model.config, GgufModelConfig(file));
  ASSIGN_OR_RETURN(model.gguf_vocab, GgufVocabulary(file));
  if (static_cast<int64_t>(model.gguf_vocab->tokens.size()) > model.config.vocab_size) {
    return absl::InvalidArgumentError(
        fmt::format("{}: tokenizer has {} tokens but the model's vocab_size is {}", source,
                    model.gguf_vocab->tokens.size(), model.config.vocab_size));
  }
  RETURN_IF_ERROR(ValidateModelConfig(source, &model.config));
  ASSIGN_OR_RETURN(std::optional<std::string> tmpl, FindString(file, "tokenizer.chat_template"));
  model.chat_template = tmpl.value_or("");

  std::vector<TensorView> views;
  views.reserve(file.tensors.size());
  for (GgufTensorInfo& t : file.tensors) {
    if (std::optional<std::string> hf = GgufToHfTensorName(t.name)) t.view.name = std::move(*hf);
    views.push_back(std::move(t.view));
  }
  ASSIGN_OR_RETURN(model.weights,
                   MappedWeightStore::Create(source, std::move(views), std::move(files)));
  RETURN_IF_ERROR(CheckModelTensors(model.config, *model.weights));
  return model;
}

}  // namespace

absl::StatusOr<ModelConfig> GgufModelConfig(const GgufFile& f) {
  ASSIGN_OR_RETURN(std::optional<std::string> arch_name, FindString(f, "general.architecture"));
  if (!arch_name) return MetadataError(f, "general.architecture", "is missing");
  const GgufArchitecture* arch = FindGgufArchitecture(*arch_name);
  if (arch == nullptr) {
    return MetadataError(f, "general.architecture",
                         fmt::format("is '{}', which is not supported (supported: llama, qwen2)",
                                     *arch_name));
  }
  auto key = [&](std::string_view suffix) { return fmt::format("{}.{}", *arch_name, suffix); };

  ModelConfig c;
  c.arch = arch->arch;
  c.arch_name = std::string(arch->hf_name);
  c.rope_interleaved = arch->rope_interleaved;
  ASSIGN_OR_RETURN(c.num_layers, GetInt(f, key("block_count")));
  ASSIGN_OR_RETURN(c.hidden_size, GetInt(f, key("embedding_length")));
  ASSIGN_OR_RETURN(c.intermediate_size, GetInt(f, key("feed_forward_length")));
  ASSIGN_OR_RETURN(c.num_heads, GetInt(f, key("attention.head_count")));
  ASSIGN_OR_RETURN(std::optional<int64_t> kv_heads, FindInt(f, key("attention.head_count_kv")));
  c.num_kv_heads = kv_heads.value_or(c.num_heads);
  ASSIGN_OR_RETURN(c.max_position_embeddings, GetInt(f, key("context_length")));

  ASSIGN_OR_RETURN(std::optional<double> eps, FindDouble(f, key("attention.layer_norm_rms_epsilon")));
  if (!eps) return MetadataError(f, key("attention.layer_norm_rms_epsilon"), "is missing");
  c.rms_norm_eps = *eps;
  ASSIGN_OR_RETURN(std::optional<double> theta, FindDouble(f, key("rope.freq_base")));
  c.rope_theta = theta.value_or(10000.0);

  // head_dim: explicit key_length, else hidden / heads (ValidateModelConfig fills it).
  ASSIGN_OR_RETURN(std::optional<int64_t> key_length, FindInt(f, key("attention.key_length")));
  ASSIGN_OR_RETURN(std::optional<int64_t> value_length, FindInt(f, key("attention.value_length")));
  if (key_length && value_length && *key_length != *value_length) {
    return MetadataError(f, key("attention.value_length"),
                         fmt::format("is {} but key_length is {}; they must match",
                                     *value_length, *key_length));
  }
  c.head_dim = key_length.value_or(0);
  ASSIGN_OR_RETURN(std::optional<int64_t> rope_dims, FindInt(f, key("rope.dimension_count")));
  if (rope_dims) {
    int64_t head_dim = c.head_dim > 0 ? c.head_dim
                       : c.num_heads > 0 ? c.hidden_size / c.num_heads : 0;
    // Partial rotary (rope over part of each head) is not what llama or qwen2 do.
    if (*rope_dims != head_dim) {
      return MetadataError(f, key("rope.dimension_count"),
                           fmt::format("is {} but the head dimension is {}; partial rotary "
                                       "embeddings are not supported",
                                       *rope_dims, head_dim));
    }
  }

  ASSIGN_OR_RETURN(std::optional<std::string> scaling, FindString(f, key("rope.scaling.type")));
  ASSIGN_OR_RETURN(std::optional<double> factor, FindDouble(f, key("rope.scaling.factor")));
  if (scaling && *scaling == "linear") {
    c.rope_scaling.type = RopeScaling::Type::kLinear;
    c.rope_scaling.factor = factor.value_or(1.0);
  } else if (scaling && *scaling != "none") {
    return MetadataError(f, key("rope.scaling.type"),
                         fmt::format("is '{}', which is not supported (supported: none, linear)",
                                     *scaling));
  }

  ASSIGN_OR_RETURN(std::optional<int64_t> vocab, FindInt(f, key("vocab_size")));
  if (!vocab) {
    const GgufValue* tokens = f.Find("tokenizer.ggml.tokens");
    if (tokens != nullptr && tokens->AsArray() != nullptr) {
      vocab = static_cast<int64_t>(tokens->AsArray()->items.size());
    }
  }
  if (!vocab) {
    return MetadataError(f, key("vocab_size"), "is missing and so is tokenizer.ggml.tokens");
  }
  c.vocab_size = *vocab;

  bool has_output = false;
  for (const GgufTensorInfo& t : f.tensors) {
    if (t.name == "output.weight") has_output = true;
    if (t.name == "blk.0.attn_q.bias") c.attention_bias = true;
  }
  c.tie_word_embeddings = !has_output;

  ASSIGN_OR_RETURN(std::optional<int64_t> bos, FindInt(f, "tokenizer.ggml.bos_token_id"));
  ASSIGN_OR_RETURN(std::optional<int64_t> eos, FindInt(f, "tokenizer.ggml.eos_token_id"));
  // End-of-turn ends generation too (chat models end a reply with it).
  ASSIGN_OR_RETURN(std::optional<int64_t> eot, FindInt(f, "tokenizer.ggml.eot_token_id"));
  auto to_id = [](int64_t v) {
    return static_cast<int32_t>(std::clamp<int64_t>(v, -1, std::numeric_limits<int32_t>::max()));
  };
  if (bos) c.bos_token_id = to_id(*bos);
  if (eos) c.eos_token_ids.push_back(to_id(*eos));
  if (eot && (!eos || *eot != *eos)) c.eos_token_ids.push_back(to_id(*eot));
  return c;
}

absl::StatusOr<GgufVocab> GgufVocabulary(const GgufFile& f) {
  GgufVocab v;
  ASSIGN_OR_RETURN(const GgufArray* tokens,
                   FindArray(f, "tokenizer.ggml.tokens", /*want_strings=*/true));
  if (tokens == nullptr) return MetadataError(f, "tokenizer.ggml.tokens", "is missing");
  v.tokens.reserve(tokens->items.size());
  for (const GgufValue& t : tokens->items) v.tokens.push_back(*t.AsString());

  ASSIGN_OR_RETURN(const GgufArray* types,
                   FindArray(f, "tokenizer.ggml.token_type", /*want_strings=*/false));
  if (types != nullptr) {
    if (types->items.size() != v.tokens.size()) {
      return MetadataError(f, "tokenizer.ggml.token_type",
                           fmt::format("has {} entries but there are {} tokens",
                                       types->items.size(), v.tokens.size()));
    }
    v.token_types.reserve(types->items.size());
    for (const GgufValue& t : types->items) {
      v.token_types.push_back(static_cast<int32_t>(std::clamp<int64_t>(*t.AsInt(), -1, 1000)));
    }
  }
  ASSIGN_OR_RETURN(const GgufArray* merges,
                   FindArray(f, "tokenizer.ggml.merges", /*want_strings=*/true));
  if (merges != nullptr) {
    v.merges.reserve(merges->items.size());
    for (const GgufValue& m : merges->items) v.merges.push_back(*m.AsString());
  }
  ASSIGN_OR_RETURN(std::optional<std::string> model, FindString(f, "tokenizer.ggml.model"));
  v.model = model.value_or("");
  ASSIGN_OR_RETURN(std::optional<std::string> pre, FindString(f, "tokenizer.ggml.pre"));
  v.pre = pre.value_or("");
  size_t n = v.tokens.size();
  ASSIGN_OR_RETURN(v.bos_token_id, FindTokenId(f, "tokenizer.ggml.bos_token_id", n));
  ASSIGN_OR_RETURN(v.eos_token_id, FindTokenId(f, "tokenizer.ggml.eos_token_id", n));
  ASSIGN_OR_RETURN(v.unknown_token_id, FindTokenId(f, "tokenizer.ggml.unknown_token_id", n));
  ASSIGN_OR_RETURN(v.padding_token_id, FindTokenId(f, "tokenizer.ggml.padding_token_id", n));
  // Also validates the eot id that GgufModelConfig adds to the stop tokens.
  ASSIGN_OR_RETURN(std::optional<int32_t> eot, FindTokenId(f, "tokenizer.ggml.eot_token_id", n));
  (void)eot;
  const GgufValue* add_bos = f.Find("tokenizer.ggml.add_bos_token");
  if (add_bos != nullptr) {
    if (add_bos->AsBool() == nullptr) {
      return MetadataError(f, "tokenizer.ggml.add_bos_token",
                           fmt::format("has type {}, expected bool", GgufTypeName(add_bos->type)));
    }
    v.add_bos_token = *add_bos->AsBool();
  } else {
    // llama.cpp's default: sentencepiece vocabularies add BOS, byte-level BPE ones do not.
    v.add_bos_token = v.model == "llama";
  }
  return v;
}

absl::StatusOr<LoadedModel> LoadGgufModel(const std::string& path) {
  ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::Open(path));
  std::span<const std::byte> bytes = mapped.bytes();
  std::vector<MappedFile> files;
  files.push_back(std::move(mapped));
  return BuildGgufModel(path, bytes, std::move(files));
}

absl::StatusOr<LoadedModel> LoadGgufModelFromBytes(const std::string& source,
                                                   std::span<const std::byte> bytes) {
  return BuildGgufModel(source, bytes, {});
}

}  // namespace shoal::worker
