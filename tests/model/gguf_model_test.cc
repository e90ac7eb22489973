#include "worker/model/gguf_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "tests/model/model_files.h"
#include "worker/model/gguf_names.h"
#include "worker/model/loaded_model.h"

namespace shoal::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::GgufWriter;
using testing::ScratchDir;
using testing::TinyDims;
using testing::TinyGguf;

TEST(GgufNames, MapsLlamaNamesToHuggingFace) {
  EXPECT_EQ(GgufToHfTensorName("token_embd.weight"), "model.embed_tokens.weight");
  EXPECT_EQ(GgufToHfTensorName("output_norm.weight"), "model.norm.weight");
  EXPECT_EQ(GgufToHfTensorName("output.weight"), "lm_head.weight");
  EXPECT_EQ(GgufToHfTensorName("blk.0.attn_norm.weight"), "model.layers.0.input_layernorm.weight");
  EXPECT_EQ(GgufToHfTensorName("blk.12.ffn_norm.weight"),
            "model.layers.12.post_attention_layernorm.weight");
  EXPECT_EQ(GgufToHfTensorName("blk.3.attn_q.weight"), "model.layers.3.self_attn.q_proj.weight");
  EXPECT_EQ(GgufToHfTensorName("blk.3.attn_k.bias"), "model.layers.3.self_attn.k_proj.bias");
  EXPECT_EQ(GgufToHfTensorName("blk.3.attn_output.weight"), "model.layers.3.self_attn.o_proj.weight");
  EXPECT_EQ(GgufToHfTensorName("blk.29.ffn_gate.weight"), "model.layers.29.mlp.gate_proj.weight");
  EXPECT_EQ(GgufToHfTensorName("blk.29.ffn_up.weight"), "model.layers.29.mlp.up_proj.weight");
  EXPECT_EQ(GgufToHfTensorName("blk.29.ffn_down.weight"), "model.layers.29.mlp.down_proj.weight");
  EXPECT_EQ(GgufToHfTensorName("rope_freqs.weight"), std::nullopt);
  EXPECT_EQ(GgufToHfTensorName("blk.x.attn_q.weight"), std::nullopt);
  EXPECT_EQ(GgufToHfTensorName("blk..attn_q.weight"), std::nullopt);
  EXPECT_EQ(GgufToHfTensorName("blk.1.unknown.weight"), std::nullopt);
}

std::span<const std::byte> Bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

TEST(GgufModel, LoadsTinyLlamaFromFile) {
  TinyDims d;
  GgufWriter w = TinyGguf(d);
  ScratchDir dir;
  std::string path = dir.Write("tiny.gguf", w.Build());
  absl::StatusOr<LoadedModel> m = LoadModel(path);
  ASSERT_TRUE(m.ok()) << m.status();
  const ModelConfig& c = m->config;
  EXPECT_EQ(m->path, path);
  EXPECT_EQ(c.arch, Arch::kLlama);
  EXPECT_EQ(c.arch_name, "llama");
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.vocab_size, 32);  // from the token list: no llama.vocab_size key
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_EQ(c.rope_theta, 100000.0);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_TRUE(c.rope_interleaved);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_THAT(c.eos_token_ids, ElementsAre(2));
  EXPECT_EQ(m->chat_template, "{% for m in messages %}{{ m.content }}{% endfor %}");
  EXPECT_TRUE(m->tokenizer_json_path.empty());

  ASSERT_TRUE(m->gguf_vocab.has_value());
  const GgufVocab& v = *m->gguf_vocab;
  EXPECT_EQ(v.model, "gpt2");
  EXPECT_EQ(v.pre, "smollm");
  ASSERT_EQ(v.tokens.size(), 32u);
  EXPECT_EQ(v.tokens[0], "<|special0|>");
  EXPECT_EQ(v.tokens[31], "t31");
  EXPECT_EQ(v.token_types[2], 3);
  EXPECT_EQ(v.token_types[3], 1);
  EXPECT_THAT(v.merges, ElementsAre("t 1", "t1 0", "t 2"));
  EXPECT_EQ(v.bos_token_id, 1);
  EXPECT_EQ(v.eos_token_id, 2);
  EXPECT_EQ(v.unknown_token_id, 0);
  EXPECT_EQ(v.padding_token_id, 2);
  EXPECT_FALSE(v.add_bos_token);

  const WeightStore& ws = *m->weights;
  EXPECT_EQ(ws.Source(), path);
  EXPECT_EQ(ws.Names().size(), 1 + 1 + 2 * 9u);
  EXPECT_EQ(ws.Find("token_embd.weight"), nullptr);  // renamed
  EXPECT_EQ(ws.Find("lm_head.weight"), nullptr);     // tied
  struct Want {
    const char* name;
    DType dtype;
    std::vector<int64_t> shape;
  };
  const Want want[] = {
      {"model.embed_tokens.weight", DType::kQ8_0, {32, 64}},
      {"model.norm.weight", DType::kF32, {64}},
      {"model.layers.1.input_layernorm.weight", DType::kF32, {64}},
      {"model.layers.1.post_attention_layernorm.weight", DType::kF32, {64}},
      {"model.layers.1.self_attn.q_proj.weight", DType::kQ4_1, {64, 64}},
      {"model.layers.1.self_attn.k_proj.weight", DType::kQ4_0, {32, 64}},
      {"model.layers.1.self_attn.v_proj.weight", DType::kQ8_0, {32, 64}},
      {"model.layers.1.self_attn.o_proj.weight", DType::kF16, {64, 64}},
      {"model.layers.1.mlp.gate_proj.weight", DType::kBF16, {128, 64}},
      {"model.layers.1.mlp.up_proj.weight", DType::kQ4_1, {128, 64}},
      {"model.layers.1.mlp.down_proj.weight", DType::kQ4_0, {64, 128}},
  };
  for (const Want& x : want) {
    absl::StatusOr<const TensorView*> t = ws.Get(x.name);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ((*t)->dtype, x.dtype) << x.name;
    EXPECT_EQ((*t)->shape, x.shape) << x.name;
    EXPECT_EQ((*t)->nbytes, RowBytes(x.dtype, x.shape.back()) * (*t)->rows()) << x.name;
  }
  // Row r of a quantized matrix starts r * row_bytes into its data.
  const TensorView* q = ws.Find("model.layers.1.self_attn.q_proj.weight");
  EXPECT_EQ(q->row_bytes(), 2u * 20);
  EXPECT_EQ(q->row(3) - q->data, 3 * 40);
  absl::StatusOr<const TensorView*> missing = ws.Get("nope");
  EXPECT_THAT(missing.status().message(), HasSubstr("tensor 'nope' is missing"));
}

TEST(GgufModel, Qwen2HasBiasAndRotateHalfLayout) {
  TinyDims d;
  d.bias = true;
  d.tied = false;
  std::string s = TinyGguf(d, "qwen2").Build();
  absl::StatusOr<LoadedModel> m = LoadGgufModelFromBytes("q.gguf", Bytes(s));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->config.arch, Arch::kQwen2);
  EXPECT_EQ(m->config.arch_name, "qwen2");
  EXPECT_FALSE(m->config.rope_interleaved);
  EXPECT_TRUE(m->config.attention_bias);
  EXPECT_FALSE(m->config.tie_word_embeddings);
  const TensorView* bias = m->weights->Find("model.layers.0.self_attn.k_proj.bias");
  ASSERT_NE(bias, nullptr);
  EXPECT_EQ(bias->shape, std::vector<int64_t>{32});
  const TensorView* head = m->weights->Find("lm_head.weight");
  ASSERT_NE(head, nullptr);
  EXPECT_EQ(head->shape, (std::vector<int64_t>{32, 64}));
}

TEST(GgufModel, ExplicitVocabSizeKeyLengthAndLinearRopeScaling) {
  TinyDims d;
  GgufWriter w = TinyGguf(d);
  w.Uint32("llama.vocab_size", 32);
  w.Uint32("llama.attention.key_length", 16);
  w.Uint32("llama.attention.value_length", 16);
  w.String("llama.rope.scaling.type", "linear");
  w.Float32("llama.rope.scaling.factor", 4.0f);
  w.Uint32("tokenizer.ggml.eot_token_id", 0);
  w.Remove("tokenizer.ggml.add_bos_token");
  w.String("tokenizer.ggml.model", "llama");
  std::string s = w.Build();
  absl::StatusOr<LoadedModel> m = LoadGgufModelFromBytes("t.gguf", Bytes(s));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->config.head_dim, 16);
  EXPECT_EQ(m->config.rope_scaling.type, RopeScaling::Type::kLinear);
  EXPECT_EQ(m->config.rope_scaling.factor, 4.0);
  EXPECT_THAT(m->config.eos_token_ids, ElementsAre(2, 0));
  // Without the key, a sentencepiece ("llama") vocabulary adds BOS.
  EXPECT_TRUE(m->gguf_vocab->add_bos_token);
}

TEST(GgufModel, EveryTruncationOfAWholeModelIsAnError) {
  GgufWriter w = TinyGguf(TinyDims{});
  std::string s = w.Build();
  ASSERT_TRUE(LoadGgufModelFromBytes("t.gguf", Bytes(s)).ok());
  // Every byte through the tensor infos, then a stride through the tensor data.
  for (size_t n = 0; n < s.size(); n += n < w.layout().data_start ? 1 : 61) {
    const auto* begin = reinterpret_cast<const std::byte*>(s.data());
    std::vector<std::byte> prefix(begin, begin + n);
    absl::StatusOr<LoadedModel> m = LoadGgufModelFromBytes("t.gguf", prefix);
    ASSERT_FALSE(m.ok()) << "prefix of " << n << " bytes loaded";
    EXPECT_THAT(m.status().message(), HasSubstr("t.gguf: offset ")) << n;
  }
}

// Each case edits a valid tiny model and expects an error naming the file and the problem.
struct BadModelCase {
  const char* name;
  void (*dims)(TinyDims&);
  void (*edit)(GgufWriter&);
  const char* message;
};

class GgufModelRejects : public ::testing::TestWithParam<BadModelCase> {};

TEST_P(GgufModelRejects, WithMessage) {
  const BadModelCase& c = GetParam();
  TinyDims d;
  if (c.dims) c.dims(d);
  GgufWriter w = TinyGguf(d);
  if (c.edit) c.edit(w);
  std::string s = w.Build();
  absl::StatusOr<LoadedModel> m = LoadGgufModelFromBytes("bad.gguf", Bytes(s));
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()), ::testing::StartsWith("bad.gguf: "));
  EXPECT_THAT(m.status().message(), HasSubstr(c.message));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, GgufModelRejects,
    ::testing::Values(
        BadModelCase{"UnknownArch", nullptr,
                     [](GgufWriter& w) { w.String("general.architecture", "mamba"); },
                     "metadata 'general.architecture' is 'mamba', which is not supported "
                     "(supported: llama, qwen2)"},
        BadModelCase{"MissingKey", nullptr,
                     [](GgufWriter& w) { w.Remove("llama.block_count"); },
                     "metadata 'llama.block_count' is missing"},
        BadModelCase{"MistypedKey", nullptr,
                     [](GgufWriter& w) { w.String("llama.embedding_length", "wide"); },
                     "metadata 'llama.embedding_length' has type string, expected an integer"},
        BadModelCase{"MistypedTokens", nullptr,
                     [](GgufWriter& w) { w.Int32Array("tokenizer.ggml.tokens", {1, 2}); },
                     "metadata 'tokenizer.ggml.tokens' has type array of int32, expected an "
                     "array of string"},
        BadModelCase{"MissingTokens", nullptr,
                     [](GgufWriter& w) { w.Remove("tokenizer.ggml.tokens"); },
                     "metadata 'llama.vocab_size' is missing and so is tokenizer.ggml.tokens"},
        BadModelCase{"TokenTypeCount", nullptr,
                     [](GgufWriter& w) { w.Int32Array("tokenizer.ggml.token_type", {1}); },
                     "metadata 'tokenizer.ggml.token_type' has 1 entries but there are 32 tokens"},
        BadModelCase{"HeadsNotDividingHidden", [](TinyDims& d) { d.heads = 5; d.kv_heads = 5; },
                     nullptr,
                     "hidden_size 64 is not a multiple of num_attention_heads 5"},
        BadModelCase{"KvHeadsNotDividingHeads", [](TinyDims& d) { d.kv_heads = 3; }, nullptr,
                     "num_attention_heads 4 is not a multiple of num_key_value_heads 3"},
        BadModelCase{"ZeroLayers", nullptr,
                     [](GgufWriter& w) { w.Uint32("llama.block_count", 0); },
                     "num_hidden_layers is 0 (expected 1 to 67108864)"},
        BadModelCase{"TokenIdOutsideVocab", nullptr,
                     [](GgufWriter& w) { w.Uint32("tokenizer.ggml.eot_token_id", 99); },
                     "metadata 'tokenizer.ggml.eot_token_id' is 99, outside the 32 tokens"},
        BadModelCase{"PartialRotary", nullptr,
                     [](GgufWriter& w) { w.Uint32("llama.attention.key_length", 32); },
                     "metadata 'llama.rope.dimension_count' is 16 but the head dimension is 32"},
        BadModelCase{"UnsupportedRopeScaling", nullptr,
                     [](GgufWriter& w) { w.String("llama.rope.scaling.type", "yarn"); },
                     "metadata 'llama.rope.scaling.type' is 'yarn', which is not supported"},
        BadModelCase{"MoreTokensThanVocab", nullptr,
                     [](GgufWriter& w) { w.Uint32("llama.vocab_size", 16); },
                     "tokenizer has 32 tokens but the model's vocab_size is 16"},
        BadModelCase{"VocabDisagreesWithEmbedding", nullptr,
                     [](GgufWriter& w) { w.Uint32("llama.vocab_size", 40); },
                     "tensor 'model.embed_tokens.weight' has shape [32, 64], expected [40, 64]"},
        BadModelCase{"MissingTensor", nullptr,
                     [](GgufWriter& w) { w.RemoveTensor("blk.1.ffn_up.weight"); },
                     "tensor 'model.layers.1.mlp.up_proj.weight' is missing (expected shape "
                     "[128, 64])"},
        BadModelCase{"WrongShape", nullptr,
                     [](GgufWriter& w) {
                       w.RemoveTensor("blk.0.attn_k.weight");
                       w.Tensor("blk.0.attn_k.weight", testing::kGgmlF16, {64, 64});
                     },
                     "tensor 'model.layers.0.self_attn.k_proj.weight' has shape [64, 64], "
                     "expected [32, 64]"},
        BadModelCase{"UnsupportedTensorType", nullptr,
                     [](GgufWriter& w) {
                       w.RemoveTensor("blk.0.ffn_down.weight");
                       w.Tensor("blk.0.ffn_down.weight", testing::kGgmlQ4_K, {128, 64});
                     },
                     "unsupported ggml type 12 (Q4_K) for tensor 'blk.0.ffn_down.weight'"}),
    [](const ::testing::TestParamInfo<BadModelCase>& i) { return i.param.name; });

}  // namespace
}  // namespace shoal::worker
