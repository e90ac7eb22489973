#include "worker/model/hf_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/model/model_files.h"
#include "worker/model/hf_config.h"
#include "worker/model/loaded_model.h"

namespace shoal::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::BuildSafetensors;
using testing::ScratchDir;
using testing::StTensor;
using testing::TinyDims;
using testing::TinyHfConfig;
using testing::TinyHfTensors;
using Json = nlohmann::json;

absl::StatusOr<ModelConfig> Config(const Json& j) { return ParseHfConfig("config.json", j.dump()); }

Json LlamaJson() { return Json::parse(TinyHfConfig(TinyDims{})); }

TEST(HfConfig, ReadsLlama) {
  Json j = LlamaJson();
  j["head_dim"] = 16;
  absl::StatusOr<ModelConfig> c = Config(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, Arch::kLlama);
  EXPECT_EQ(c->arch_name, "llama");
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->intermediate_size, 128);
  EXPECT_EQ(c->num_layers, 2);
  EXPECT_EQ(c->num_heads, 4);
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->vocab_size, 32);
  EXPECT_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_FALSE(c->rope_interleaved);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(2));
}

TEST(HfConfig, DefaultsAndLists) {
  Json j = LlamaJson();
  j.erase("num_key_value_heads");
  j.erase("rope_theta");
  j.erase("tie_word_embeddings");
  j["eos_token_id"] = {128001, 128008, 128009};
  j["bos_token_id"] = nullptr;
  j["attention_bias"] = true;
  absl::StatusOr<ModelConfig> c = Config(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 4);
  EXPECT_EQ(c->head_dim, 0);  // filled by ValidateModelConfig
  EXPECT_EQ(c->rope_theta, 10000.0);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_TRUE(c->attention_bias);
  EXPECT_FALSE(c->bos_token_id.has_value());
  EXPECT_THAT(c->eos_token_ids, ElementsAre(128001, 128008, 128009));
}

TEST(HfConfig, Qwen2AlwaysHasAttentionBias) {
  Json j = Json::parse(TinyHfConfig(TinyDims{}, "qwen2"));
  j["attention_bias"] = false;  // not a qwen2 field; qwen2's q/k/v always carry a bias
  absl::StatusOr<ModelConfig> c = Config(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, Arch::kQwen2);
  EXPECT_EQ(c->arch_name, "qwen2");
  EXPECT_TRUE(c->attention_bias);
}

TEST(HfConfig, RopeScaling) {
  Json j = LlamaJson();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  absl::StatusOr<ModelConfig> c = Config(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLinear);
  EXPECT_EQ(c->rope_scaling.factor, 2.0);

  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  c = Config(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_EQ(c->rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(c->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);

  j["rope_scaling"] = {{"rope_type", "default"}};
  c = Config(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kNone);

  j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 4.0}};
  EXPECT_THAT(Config(j).status().message(),
              HasSubstr("config.json: field 'rope_scaling' has type 'dynamic', which is not supported"));
  // yarn is parsed, but only DeepSeek models use it (tests/model/deepseek_config_test.cc).
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 64}};
  EXPECT_THAT(Config(j).status().message(),
              HasSubstr("config.json: field 'rope_scaling' has type yarn, which model_type llama does not support"));
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  EXPECT_THAT(Config(j).status().message(), HasSubstr("of type llama3 needs low_freq_factor"));
  j["rope_scaling"] = {{"type", "linear"}};
  EXPECT_THAT(Config(j).status().message(), HasSubstr("of type linear needs 'factor'"));
}

// transformers 5 moved rope_theta and the scaling into `rope_parameters`.
TEST(HfConfig, RopeParametersOfTransformers5) {
  Json j = LlamaJson();
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_theta", 250000.0}, {"rope_type", "default"}};
  absl::StatusOr<ModelConfig> c = Config(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_theta, 250000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kNone);
  j["rope_parameters"] = {{"rope_theta", 500000.0},      {"rope_type", "llama3"},
                          {"factor", 32.0},              {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0},     {"original_max_position_embeddings", 8192}};
  c = Config(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(c->rope_scaling.factor, 32.0);
  j["rope_parameters"]["rope_type"] = "dynamic";
  EXPECT_THAT(Config(j).status().message(),
              HasSubstr("field 'rope_parameters' has type 'dynamic', which is not supported"));
}

TEST(HfConfig, ErrorsNameTheField) {
  Json j = LlamaJson();
  j["model_type"] = "mistral";
  EXPECT_THAT(Config(j).status().message(),
              HasSubstr("config.json: field 'model_type' is 'mistral', which is not supported "
                        "(supported: llama, qwen2, deepseek_v2, deepseek_v3)"));
  j = LlamaJson();
  j.erase("hidden_size");
  EXPECT_THAT(Config(j).status().message(), HasSubstr("config.json: field 'hidden_size' is missing"));
  j = LlamaJson();
  j["num_attention_heads"] = "four";
  EXPECT_THAT(Config(j).status().message(),
              HasSubstr("config.json: field 'num_attention_heads' is not an integer"));
  j = LlamaJson();
  j["eos_token_id"] = {1, "x"};
  EXPECT_THAT(Config(j).status().message(),
              HasSubstr("field 'eos_token_id' must be a token id or a list of token ids"));
  EXPECT_THAT(ParseHfConfig("config.json", "{nope").status().message(),
              HasSubstr("config.json: not valid JSON"));
}

TEST(HfConfig, ChatTemplateFromTokenizerConfig) {
  EXPECT_EQ(*ParseTokenizerConfigChatTemplate("t", R"({"chat_template": "{{ x }}"})"), "{{ x }}");
  EXPECT_EQ(*ParseTokenizerConfigChatTemplate("t", R"({"bos_token": "<s>"})"), "");
  EXPECT_EQ(*ParseTokenizerConfigChatTemplate(
                "t", R"({"chat_template": [{"name": "tool_use", "template": "T"},
                                           {"name": "default", "template": "D"}]})"),
            "D");
  EXPECT_THAT(ParseTokenizerConfigChatTemplate("t", R"({"chat_template": [{"name": "rag", "template": "R"}]})")
                  .status()
                  .message(),
              HasSubstr("without one named \"default\""));
  EXPECT_THAT(*ParseGenerationConfigEos("g", R"({"eos_token_id": [5, 6]})"), ElementsAre(5, 6));
  EXPECT_THAT(*ParseGenerationConfigEos("g", R"({"eos_token_id": 7})"), ElementsAre(7));
  EXPECT_TRUE(ParseGenerationConfigEos("g", R"({})")->empty());
}

// A complete tiny HF directory.
void WriteTinyDir(const ScratchDir& dir, const TinyDims& d, const std::string& model_type = "llama") {
  dir.Write("config.json", TinyHfConfig(d, model_type));
  dir.Write("model.safetensors", BuildSafetensors(TinyHfTensors(d)));
  dir.Write("tokenizer.json", "{}");
  dir.Write("tokenizer_config.json", R"({"chat_template": "{{ messages }}"})");
  dir.Write("generation_config.json", R"({"eos_token_id": [2, 3]})");
}

TEST(HfModel, LoadsSingleFileDirectory) {
  ScratchDir dir;
  TinyDims d;
  WriteTinyDir(dir, d);
  absl::StatusOr<LoadedModel> m = LoadModel(dir.path().string());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->config.head_dim, 16);
  EXPECT_THAT(m->config.eos_token_ids, ElementsAre(2, 3));
  EXPECT_EQ(m->tokenizer_json_path, (dir.path() / "tokenizer.json").string());
  EXPECT_FALSE(m->gguf_vocab.has_value());
  EXPECT_EQ(m->chat_template, "{{ messages }}");
  EXPECT_EQ(m->weights->Source(), (dir.path() / "model.safetensors").string());
  EXPECT_EQ(m->weights->Names().size(), TinyHfTensors(d).size());
  const TensorView* q = m->weights->Find("model.layers.1.self_attn.q_proj.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->dtype, DType::kBF16);
  EXPECT_EQ(q->shape, (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(q->nbytes, 64u * 64 * 2);
}

TEST(HfModel, LoadsQwen2WithBiasAndUntiedHead) {
  ScratchDir dir;
  TinyDims d;
  d.bias = true;
  d.tied = false;
  WriteTinyDir(dir, d, "qwen2");
  absl::StatusOr<LoadedModel> m = LoadModel(dir.path().string());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE(m->config.attention_bias);
  EXPECT_NE(m->weights->Find("lm_head.weight"), nullptr);
  EXPECT_NE(m->weights->Find("model.layers.0.self_attn.v_proj.bias"), nullptr);
}

TEST(HfModel, Qwen2WithoutBiasTensorsNamesTheMissingBias) {
  ScratchDir dir;
  TinyDims d;
  WriteTinyDir(dir, d, "qwen2");  // tensors written without biases
  absl::StatusOr<LoadedModel> m = LoadModel(dir.path().string());
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(),
              HasSubstr("model.safetensors: tensor 'model.layers.0.self_attn.q_proj.bias' is missing "
                        "(expected shape [64])"));
}

// Splits the tiny model over two shards with an index, as save_pretrained does.
void WriteShardedDir(const ScratchDir& dir, const TinyDims& d, Json* index_out = nullptr) {
  dir.Write("config.json", TinyHfConfig(d));
  std::vector<StTensor> all = TinyHfTensors(d), a, b;
  Json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", Json::object()}};
  for (size_t i = 0; i < all.size(); ++i) {
    bool first = i < all.size() / 2;
    (first ? a : b).push_back(all[i]);
    index["weight_map"][all[i].name] =
        first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  dir.Write("model-00001-of-00002.safetensors", BuildSafetensors(a));
  dir.Write("model-00002-of-00002.safetensors", BuildSafetensors(b));
  dir.Write("model.safetensors.index.json", index.dump());
  if (index_out) *index_out = index;
}

TEST(HfModel, LoadsShardedCheckpoint) {
  ScratchDir dir;
  TinyDims d;
  d.tied = false;
  WriteShardedDir(dir, d);
  absl::StatusOr<LoadedModel> m = LoadModel(dir.path().string());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->weights->Names().size(), TinyHfTensors(d).size());
  EXPECT_NE(m->weights->Find("model.embed_tokens.weight"), nullptr);
  EXPECT_NE(m->weights->Find("lm_head.weight"), nullptr);
  EXPECT_NE(m->weights->Find("model.layers.1.mlp.down_proj.weight"), nullptr);
  EXPECT_TRUE(m->tokenizer_json_path.empty());  // none written
  EXPECT_EQ(m->chat_template, "");
}

TEST(HfModel, MissingShardNamesIndexAndShard) {
  ScratchDir dir;
  WriteShardedDir(dir, TinyDims{});
  std::filesystem::remove(dir.path() / "model-00002-of-00002.safetensors");
  absl::StatusOr<LoadedModel> m = LoadModel(dir.path().string());
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("model.safetensors.index.json: shard "
                                              "'model-00002-of-00002.safetensors' listed in the "
                                              "weight_map"));
  EXPECT_THAT(m.status().message(), HasSubstr("No such file or directory"));
}

TEST(HfModel, IndexPointingAtWrongShardIsAnError) {
  ScratchDir dir;
  Json index;
  WriteShardedDir(dir, TinyDims{}, &index);
  index["weight_map"]["model.norm.weight"] = "model-00002-of-00002.safetensors";
  index["weight_map"]["model.embed_tokens.weight"] = "model-00002-of-00002.safetensors";
  dir.Write("model.safetensors.index.json", index.dump());
  absl::StatusOr<LoadedModel> m = LoadModel(dir.path().string());
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(),
              HasSubstr("is mapped to shard 'model-00002-of-00002.safetensors', which does not "
                        "contain it"));
  index["weight_map"]["model.norm.weight"] = "../escape.safetensors";
  dir.Write("model.safetensors.index.json", index.dump());
  EXPECT_THAT(LoadModel(dir.path().string()).status().message(),
              HasSubstr("weight_map entry for 'model.norm.weight' is not a file name"));
}

TEST(HfModel, DirectoryErrors) {
  ScratchDir dir;
  absl::StatusOr<LoadedModel> m = LoadModel(dir.path().string());
  EXPECT_THAT(m.status().message(), HasSubstr("config.json: cannot open: No such file"));
  dir.Write("config.json", TinyHfConfig(TinyDims{}));
  m = LoadModel(dir.path().string());
  EXPECT_THAT(m.status().message(),
              HasSubstr("no model.safetensors or model.safetensors.index.json"));
  std::vector<StTensor> t = TinyHfTensors(TinyDims{});
  t[2].shape = {64, 32};  // layer 0 input_layernorm
  t[2].data.reset();
  dir.Write("model.safetensors", BuildSafetensors(t));
  m = LoadModel(dir.path().string());
  EXPECT_THAT(m.status().message(),
              HasSubstr("tensor 'model.layers.0.input_layernorm.weight' has shape [64, 32], expected [64]"));
  EXPECT_THAT(LoadModel((dir.path() / "absent").string()).status().message(),
              HasSubstr("absent: no such file or directory"));
  EXPECT_THAT(LoadModel((dir.path() / "model.safetensors").string()).status().message(),
              HasSubstr("model.safetensors: a safetensors file has no config; give the directory"));
}

}  // namespace
}  // namespace shoal::worker
