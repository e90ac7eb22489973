#pragma once
// Opening a model from disk: a GGUF file, or a Hugging Face directory (config.json,
// *.safetensors with an optional model.safetensors.index.json, tokenizer.json).
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/model_config.h"
#include "worker/model/weight_store.h"

namespace shoal::worker {

// The tokenizer as a GGUF file carries it (tokenizer.ggml.*).
struct GgufVocab {
  std::string model;  // "gpt2" (byte-level BPE) or "llama" (sentencepiece)
  std::string pre;    // pre-tokenizer name: "smollm", "llama-bpe", "qwen2", "deepseek-v3", ...
  std::vector<std::string> tokens;
  std::vector<int32_t> token_types;  // 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
  std::vector<std::string> merges;   // "a b"
  std::optional<int32_t> bos_token_id;
  std::optional<int32_t> eos_token_id;
  std::optional<int32_t> unknown_token_id;
  std::optional<int32_t> padding_token_id;
  bool add_bos_token = false;
};

struct LoadedModel {
  std::string path;  // what the user gave
  ModelConfig config;
  std::unique_ptr<WeightStore> weights;
  // Exactly one of these describes the tokenizer.
  std::string tokenizer_json_path;   // HF directory
  std::optional<GgufVocab> gguf_vocab;  // GGUF file
  std::string chat_template;  // jinja source from the file, "" if none
};

// Opens `path`: a .gguf file or an HF directory. Errors name the file and, for corrupt
// files, the byte offset and what was expected there.
absl::StatusOr<LoadedModel> LoadModel(const std::string& path);

}  // namespace shoal::worker
