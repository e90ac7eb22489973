#pragma once
// The architecture description every other layer reads: filled from a Hugging Face
// config.json or from GGUF metadata, validated once, then immutable.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace shoal::worker {

enum class Arch { kLlama, kQwen2 };

// Rotary embedding frequency scaling, as in transformers' `rope_scaling`.
struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 } type = Type::kNone;
  double factor = 1.0;
  // llama3 only
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
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
};

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

}  // namespace shoal::worker
