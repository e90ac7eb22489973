#pragma once
// GGUF (llama.cpp) tensor and architecture names, mapped to what the rest of Shoal speaks:
// Hugging Face tensor names and our Arch enum. One table per concept; adding an
// architecture or a tensor is adding a row.
#include <optional>
#include <string>
#include <string_view>

#include "worker/model/model_config.h"

namespace shoal::worker {

struct GgufArchitecture {
  std::string_view gguf_name;  // general.architecture
  Arch arch;
  std::string_view hf_name;    // ModelConfig::arch_name (HF model_type)
  // llama.cpp's converter permutes Q/K rows of llama checkpoints so that rotary pairs are
  // adjacent; qwen2 keeps the Hugging Face (rotate-half) layout.
  bool rope_interleaved;
};

inline constexpr GgufArchitecture kGgufArchitectures[] = {
    {"llama", Arch::kLlama, "llama", true},
    {"qwen2", Arch::kQwen2, "qwen2", false},
};

struct GgufTensorName {
  std::string_view gguf;
  std::string_view hf;
};

// Tensors outside the layer stack.
inline constexpr GgufTensorName kGgufModelTensorNames[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
};

// Per-layer tensors: "blk.<N>.<gguf>" -> "model.layers.<N>.<hf>".
inline constexpr GgufTensorName kGgufLayerTensorNames[] = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"attn_q.bias", "self_attn.q_proj.bias"},
    {"attn_k.bias", "self_attn.k_proj.bias"},
    {"attn_v.bias", "self_attn.v_proj.bias"},
    {"attn_output.bias", "self_attn.o_proj.bias"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
};

inline const GgufArchitecture* FindGgufArchitecture(std::string_view gguf_name) {
  for (const GgufArchitecture& a : kGgufArchitectures) {
    if (a.gguf_name == gguf_name) return &a;
  }
  return nullptr;
}

// The Hugging Face name of a GGUF tensor; nullopt for names outside the tables (those
// keep their GGUF name, e.g. llama3's "rope_freqs.weight").
inline std::optional<std::string> GgufToHfTensorName(std::string_view name) {
  for (const GgufTensorName& n : kGgufModelTensorNames) {
    if (n.gguf == name) return std::string(n.hf);
  }
  constexpr std::string_view kBlock = "blk.";
  if (name.substr(0, kBlock.size()) != kBlock) return std::nullopt;
  std::string_view rest = name.substr(kBlock.size());
  size_t dot = rest.find('.');
  if (dot == 0 || dot == std::string_view::npos) return std::nullopt;
  std::string_view layer = rest.substr(0, dot);
  for (char c : layer) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  std::string_view suffix = rest.substr(dot + 1);
  for (const GgufTensorName& n : kGgufLayerTensorNames) {
    if (n.gguf == suffix) {
      return std::string("model.layers.").append(layer).append(".").append(n.hf);
    }
  }
  return std::nullopt;
}

}  // namespace shoal::worker
