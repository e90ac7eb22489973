#include "tests/model/model_files.h"

#include <fmt/format.h>
#include <stdlib.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace shoal::worker::testing {

ScratchDir::ScratchDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string tmpl = std::string(base ? base : "/tmp") + "/shoal_model_test_XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string ScratchDir::Write(const std::string& name, const std::string& bytes) const {
  std::filesystem::path p = path_ / name;
  WriteFile(p, bytes);
  return p.string();
}

void WriteFile(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

GgufWriter TinyGguf(const TinyDims& d, const std::string& arch) {
  GgufWriter w;
  auto key = [&](const std::string& k) { return arch + "." + k; };
  w.String("general.architecture", arch);
  w.String("general.name", "tiny");
  w.Uint32(key("block_count"), d.layers);
  w.Uint32(key("context_length"), 4096);
  w.Uint32(key("embedding_length"), d.hidden);
  w.Uint32(key("feed_forward_length"), d.intermediate);
  w.Uint32(key("attention.head_count"), d.heads);
  w.Uint32(key("attention.head_count_kv"), d.kv_heads);
  w.Float32(key("rope.freq_base"), 100000.0f);
  w.Float32(key("attention.layer_norm_rms_epsilon"), 1e-5f);
  w.Uint32(key("rope.dimension_count"), d.head_dim());
  w.String("tokenizer.ggml.model", "gpt2");
  w.String("tokenizer.ggml.pre", "smollm");
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (int64_t i = 0; i < d.vocab; ++i) {
    tokens.push_back(i < 3 ? fmt::format("<|special{}|>", i) : fmt::format("t{}", i));
    types.push_back(i < 3 ? 3 : 1);
  }
  w.StringArray("tokenizer.ggml.tokens", tokens);
  w.Int32Array("tokenizer.ggml.token_type", types);
  w.StringArray("tokenizer.ggml.merges", {"t 1", "t1 0", "t 2"});
  w.Uint32("tokenizer.ggml.bos_token_id", 1);
  w.Uint32("tokenizer.ggml.eos_token_id", 2);
  w.Uint32("tokenizer.ggml.unknown_token_id", 0);
  w.Uint32("tokenizer.ggml.padding_token_id", 2);
  w.Bool("tokenizer.ggml.add_bos_token", false);
  w.String("tokenizer.chat_template", "{% for m in messages %}{{ m.content }}{% endfor %}");

  auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
  const uint64_t h = u(d.hidden), q = u(d.heads * d.head_dim()), kv = u(d.kv_heads * d.head_dim());
  const uint64_t ff = u(d.intermediate), vocab = u(d.vocab);
  w.Tensor("token_embd.weight", kGgmlQ8_0, {h, vocab});
  for (int64_t l = 0; l < d.layers; ++l) {
    std::string p = fmt::format("blk.{}.", l);
    w.Tensor(p + "attn_norm.weight", kGgmlF32, {h});
    w.Tensor(p + "attn_q.weight", kGgmlQ4_1, {h, q});
    w.Tensor(p + "attn_k.weight", kGgmlQ4_0, {h, kv});
    w.Tensor(p + "attn_v.weight", kGgmlQ8_0, {h, kv});
    w.Tensor(p + "attn_output.weight", kGgmlF16, {q, h});
    if (d.bias) {
      w.Tensor(p + "attn_q.bias", kGgmlF32, {q});
      w.Tensor(p + "attn_k.bias", kGgmlF32, {kv});
      w.Tensor(p + "attn_v.bias", kGgmlF32, {kv});
    }
    w.Tensor(p + "ffn_norm.weight", kGgmlF32, {h});
    w.Tensor(p + "ffn_gate.weight", kGgmlBF16, {h, ff});
    w.Tensor(p + "ffn_up.weight", kGgmlQ4_1, {h, ff});
    w.Tensor(p + "ffn_down.weight", kGgmlQ4_0, {ff, h});
  }
  w.Tensor("output_norm.weight", kGgmlF32, {h});
  if (!d.tied) w.Tensor("output.weight", kGgmlQ8_0, {h, vocab});
  return w;
}

size_t SafetensorsElementBytes(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32") return 4;
  if (dtype == "F16" || dtype == "BF16") return 2;
  if (dtype == "I64" || dtype == "F64") return 8;
  return 1;
}

namespace {

std::string TensorBytes(const StTensor& t, size_t index) {
  if (t.data) return *t.data;
  size_t n = SafetensorsElementBytes(t.dtype);
  for (int64_t d : t.shape) n *= static_cast<size_t>(d);
  std::string data(n, '\0');
  for (size_t b = 0; b < n; ++b) data[b] = static_cast<char>((index * 13 + b) & 0xff);
  return data;
}

}  // namespace

std::string SafetensorsHeader(const std::vector<StTensor>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "pt"}};
  size_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    size_t n = TensorBytes(tensors[i], i).size();
    header[tensors[i].name] = {{"dtype", tensors[i].dtype},
                               {"shape", tensors[i].shape},
                               {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  return header.dump();
}

std::string BuildSafetensorsRaw(const std::string& header, const std::string& data) {
  std::string out;
  AppendU64(out, header.size());
  return out + header + data;
}

std::string BuildSafetensors(const std::vector<StTensor>& tensors) {
  std::string data;
  for (size_t i = 0; i < tensors.size(); ++i) data += TensorBytes(tensors[i], i);
  return BuildSafetensorsRaw(SafetensorsHeader(tensors), data);
}

std::vector<StTensor> TinyHfTensors(const TinyDims& d) {
  const int64_t h = d.hidden, q = d.heads * d.head_dim(), kv = d.kv_heads * d.head_dim();
  std::vector<StTensor> t = {{"model.embed_tokens.weight", "BF16", {d.vocab, h}},
                             {"model.norm.weight", "F32", {h}}};
  if (!d.tied) t.push_back({"lm_head.weight", "BF16", {d.vocab, h}});
  for (int64_t l = 0; l < d.layers; ++l) {
    std::string p = fmt::format("model.layers.{}.", l);
    t.push_back({p + "input_layernorm.weight", "F32", {h}});
    t.push_back({p + "post_attention_layernorm.weight", "F32", {h}});
    t.push_back({p + "self_attn.q_proj.weight", "BF16", {q, h}});
    t.push_back({p + "self_attn.k_proj.weight", "BF16", {kv, h}});
    t.push_back({p + "self_attn.v_proj.weight", "F16", {kv, h}});
    t.push_back({p + "self_attn.o_proj.weight", "F32", {h, q}});
    if (d.bias) {
      t.push_back({p + "self_attn.q_proj.bias", "BF16", {q}});
      t.push_back({p + "self_attn.k_proj.bias", "BF16", {kv}});
      t.push_back({p + "self_attn.v_proj.bias", "BF16", {kv}});
    }
    t.push_back({p + "mlp.gate_proj.weight", "BF16", {d.intermediate, h}});
    t.push_back({p + "mlp.up_proj.weight", "BF16", {d.intermediate, h}});
    t.push_back({p + "mlp.down_proj.weight", "BF16", {h, d.intermediate}});
  }
  return t;
}

std::string TinyHfConfig(const TinyDims& d, const std::string& model_type) {
  nlohmann::json c = {
      {"architectures", {model_type == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}},
      {"model_type", model_type},
      {"hidden_size", d.hidden},
      {"intermediate_size", d.intermediate},
      {"num_hidden_layers", d.layers},
      {"num_attention_heads", d.heads},
      {"num_key_value_heads", d.kv_heads},
      {"rms_norm_eps", 1e-5},
      {"rope_theta", 500000.0},
      {"rope_scaling", nullptr},
      {"max_position_embeddings", 2048},
      {"tie_word_embeddings", d.tied},
      {"vocab_size", d.vocab},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
      {"torch_dtype", "bfloat16"},
  };
  return c.dump(2);
}

}  // namespace shoal::worker::testing
