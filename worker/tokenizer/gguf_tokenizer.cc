#include "worker/tokenizer/gguf_tokenizer.h"

#include <fmt/format.h>

#include <algorithm>

#include "worker/common/status_macros.h"

namespace shoal::worker {
namespace {

// The Split patterns of the HF tokenizer.json of each family.
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kDeepSeekV3Digits = R"(\p{N}{1,3})";
constexpr std::string_view kDeepSeekV3Cjk = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+";
constexpr std::string_view kDeepSeekV3Words =
    R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Fills the normalizer/pre-tokenizer/model flags HF uses for the family named `pre`.
absl::Status ConfigureForPre(std::string_view pre, BpeTokenizerSpec* spec) {
  PreTokenizer& p = spec->pre_tokenizer;
  if (pre == "smollm") {
    RETURN_IF_ERROR(p.AddDigits(/*individual_digits=*/true));
    return p.AddByteLevel(/*add_prefix_space=*/false, /*use_regex=*/true);
  }
  if (pre == "gpt2" || pre == "default") {
    return p.AddByteLevel(/*add_prefix_space=*/false, /*use_regex=*/true);
  }
  if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
    spec->model_options.ignore_merges = true;
    RETURN_IF_ERROR(p.AddSplit(kLlama3Pattern, SplitBehavior::kIsolated, false));
    return p.AddByteLevel(false, /*use_regex=*/false);
  }
  if (pre == "qwen2" || pre == "deepseek-r1-qwen") {
    ASSIGN_OR_RETURN(spec->normalizer, Normalizer::Create({Normalizer::Form::kNfc}));
    RETURN_IF_ERROR(p.AddSplit(kQwen2Pattern, SplitBehavior::kIsolated, false));
    return p.AddByteLevel(false, /*use_regex=*/false);
  }
  if (pre == "deepseek-v3") {
    RETURN_IF_ERROR(p.AddSplit(kDeepSeekV3Digits, SplitBehavior::kIsolated, false));
    RETURN_IF_ERROR(p.AddSplit(kDeepSeekV3Cjk, SplitBehavior::kIsolated, false));
    RETURN_IF_ERROR(p.AddSplit(kDeepSeekV3Words, SplitBehavior::kIsolated, false));
    return p.AddByteLevel(false, /*use_regex=*/false);
  }
  return absl::UnimplementedError(fmt::format(
      "GGUF tokenizer.ggml.pre '{}' is not supported (supported: smollm, gpt2, default, "
      "llama-bpe, llama3, qwen2, deepseek-r1-qwen, deepseek-v3)",
      pre));
}

}  // namespace

absl::StatusOr<BpeTokenizerSpec> SpecFromGguf(const GgufVocab& vocab) {
  if (vocab.model != "gpt2") {
    return absl::UnimplementedError(
        fmt::format("unsupported tokenizer model '{}' (only byte-level BPE 'gpt2')", vocab.model));
  }
  if (vocab.tokens.empty()) return absl::InvalidArgumentError("GGUF tokenizer.ggml.tokens is empty");
  if (!vocab.token_types.empty() && vocab.token_types.size() != vocab.tokens.size()) {
    return absl::InvalidArgumentError(fmt::format(
        "GGUF tokenizer.ggml.token_type has {} entries for {} tokens", vocab.token_types.size(),
        vocab.tokens.size()));
  }
  BpeTokenizerSpec spec;
  RETURN_IF_ERROR(ConfigureForPre(vocab.pre, &spec));
  spec.vocab.reserve(vocab.tokens.size());
  for (size_t i = 0; i < vocab.tokens.size(); ++i) {
    spec.vocab.insert_or_assign(vocab.tokens[i], static_cast<int32_t>(i));
  }
  spec.id_to_token = vocab.tokens;
  spec.merges.reserve(vocab.merges.size());
  for (size_t i = 0; i < vocab.merges.size(); ++i) {
    const std::string& m = vocab.merges[i];
    const size_t space = m.find(' ');
    if (space == std::string::npos || m.find(' ', space + 1) != std::string::npos) {
      return absl::InvalidArgumentError(
          fmt::format("GGUF tokenizer.ggml.merges[{}]: expected 'a b', got '{}'", i, m));
    }
    spec.merges.emplace_back(m.substr(0, space), m.substr(space + 1));
  }
  // Control tokens (3) are the special tokens; user-defined ones (4) are added tokens that
  // are matched whole but are ordinary text. Both are matched on the raw text.
  for (size_t i = 0; i < vocab.token_types.size(); ++i) {
    const int32_t type = vocab.token_types[i];
    if (type != 3 && type != 4) continue;
    AddedToken t;
    t.id = static_cast<int32_t>(i);
    t.content = vocab.tokens[i];
    t.special = type == 3;
    t.normalized = false;
    spec.added_tokens.push_back(std::move(t));
  }
  spec.byte_level_decoder = true;
  const auto in_range = [&](std::optional<int32_t> id) {
    return id && *id >= 0 && *id < static_cast<int32_t>(vocab.tokens.size());
  };
  if (in_range(vocab.bos_token_id)) spec.bos_id = vocab.bos_token_id;
  spec.add_bos = vocab.add_bos_token && spec.bos_id.has_value();
  if (in_range(vocab.eos_token_id)) spec.eos_ids.push_back(*vocab.eos_token_id);
  // Like llama.cpp's end-of-generation set: a model that writes one of these control tokens
  // has finished, even when the file names another one as EOS.
  static constexpr std::string_view kEndOfGeneration[] = {
      "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>",
      "<｜end▁of▁sentence｜>"};
  for (const AddedToken& t : spec.added_tokens) {
    if (!t.special) continue;
    for (std::string_view name : kEndOfGeneration) {
      if (t.content == name && std::find(spec.eos_ids.begin(), spec.eos_ids.end(), t.id) ==
                                   spec.eos_ids.end()) {
        spec.eos_ids.push_back(t.id);
      }
    }
  }
  return spec;
}

}  // namespace shoal::worker
