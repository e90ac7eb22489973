// The real default model, SmolLM2-135M-Instruct (Q4_1 GGUF). Expected values come from
// the model card's config and from the reference Python `gguf` reader run on the same file.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <filesystem>

#include "worker/model/gguf_file.h"
#include "worker/model/loaded_model.h"
#include "worker/model/mapped_file.h"
#include "nlohmann/json.hpp"

namespace shoal::worker {
namespace {

std::string ModelPath() {
  const char* dir = std::getenv("SHOAL_MODELS_DIR");
  std::string base = dir ? dir : std::string(std::getenv("HOME") ? std::getenv("HOME") : "") +
                                     "/.cache/shoal/models";
  return base + "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

class SmolLm2 : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = ModelPath();
    ASSERT_TRUE(std::filesystem::exists(path_))
        << path_ << " is missing: run scripts/setup.sh to fetch the default model";
  }
  std::string path_;
};

TEST_F(SmolLm2, ConfigMatchesTheModel) {
  absl::StatusOr<LoadedModel> m = LoadModel(path_);
  ASSERT_TRUE(m.ok()) << m.status();
  const ModelConfig& c = m->config;
  EXPECT_EQ(c.arch, Arch::kLlama);
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.num_heads, 9);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.rope_theta, 100000.0);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_TRUE(c.rope_interleaved);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_THAT(c.eos_token_ids, ::testing::ElementsAre(2));
  EXPECT_THAT(m->chat_template,
              ::testing::StartsWith("{% for message in messages %}{% if loop.first and messages[0"));
}

TEST_F(SmolLm2, VocabularyIsComplete) {
  absl::StatusOr<LoadedModel> m = LoadModel(path_);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_TRUE(m->gguf_vocab.has_value());
  const GgufVocab& v = *m->gguf_vocab;
  EXPECT_EQ(v.model, "gpt2");
  EXPECT_EQ(v.pre, "smollm");
  ASSERT_EQ(v.tokens.size(), 49152u);
  EXPECT_EQ(v.token_types.size(), 49152u);
  ASSERT_EQ(v.merges.size(), 48900u);
  EXPECT_EQ(v.tokens[0], "<|endoftext|>");
  EXPECT_EQ(v.tokens[1], "<|im_start|>");
  EXPECT_EQ(v.tokens[2], "<|im_end|>");
  EXPECT_EQ(v.tokens.back(), "ectable");
  EXPECT_EQ(v.merges[0], "Ġ t");
  EXPECT_EQ(v.merges[1], "Ġ a");
  EXPECT_EQ(v.bos_token_id, 1);
  EXPECT_EQ(v.eos_token_id, 2);
  EXPECT_EQ(v.unknown_token_id, 0);
  EXPECT_EQ(v.padding_token_id, 2);
  EXPECT_FALSE(v.add_bos_token);
}

TEST_F(SmolLm2, TensorsHaveTheirTypesShapesAndBytes) {
  absl::StatusOr<LoadedModel> m = LoadModel(path_);
  ASSERT_TRUE(m.ok()) << m.status();
  const WeightStore& w = *m->weights;
  EXPECT_EQ(w.Names().size(), 272u);
  const TensorView* embed = w.Find("model.embed_tokens.weight");
  ASSERT_NE(embed, nullptr);
  EXPECT_EQ(embed->dtype, DType::kQ8_0);
  EXPECT_EQ(embed->shape, (std::vector<int64_t>{49152, 576}));
  EXPECT_EQ(embed->nbytes, 30081024u);
  EXPECT_EQ(w.Find("lm_head.weight"), nullptr);
  for (int l = 0; l < 30; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    EXPECT_EQ(w.Find(p + "input_layernorm.weight")->dtype, DType::kF32);
    EXPECT_EQ(w.Find(p + "self_attn.q_proj.weight")->dtype, DType::kQ4_1);
    EXPECT_EQ(w.Find(p + "self_attn.k_proj.weight")->shape, (std::vector<int64_t>{192, 576}));
    EXPECT_EQ(w.Find(p + "mlp.down_proj.weight")->shape, (std::vector<int64_t>{576, 1536}));
    EXPECT_EQ(w.Find(p + "mlp.down_proj.weight")->dtype, DType::kQ4_1);
  }
  float norm[3];
  const TensorView* n0 = w.Find("model.layers.0.input_layernorm.weight");
  std::memcpy(norm, n0->data, sizeof(norm));
  EXPECT_FLOAT_EQ(norm[0], 0.01397705078125f);
  EXPECT_FLOAT_EQ(norm[1], 0.0238037109375f);
  EXPECT_FLOAT_EQ(norm[2], -0.019775390625f);
  std::memcpy(norm, w.Find("model.norm.weight")->data, sizeof(norm));
  EXPECT_FLOAT_EQ(norm[0], 1.7578125f);
  // First bytes of the Q8_0 embedding: f16 scale then int8 quants.
  const uint8_t want[] = {0x32, 0x19, 0xd6, 0x0d, 0x13, 0xf7};
  EXPECT_EQ(std::memcmp(embed->data, want, sizeof(want)), 0);
}

TEST_F(SmolLm2, DataOffsetsMatchTheReferenceReader) {
  absl::StatusOr<MappedFile> f = MappedFile::Open(path_);
  ASSERT_TRUE(f.ok()) << f.status();
  absl::StatusOr<GgufFile> g = ParseGguf(path_, f->bytes());
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->version, 3u);
  EXPECT_EQ(g->metadata.size(), 33u);
  EXPECT_EQ(g->data_offset, 1785664u);
  for (const GgufTensorInfo& t : g->tensors) {
    size_t abs = static_cast<size_t>(t.view.data - f->bytes().data());
    if (t.name == "blk.0.attn_norm.weight") {
      EXPECT_EQ(abs, 31866688u);
    }
    if (t.name == "output_norm.weight") {
      EXPECT_EQ(abs, 98360128u);
    }
    if (t.name == "blk.29.ffn_down.weight") {
      EXPECT_EQ(abs, 80630848u);
      EXPECT_EQ(t.view.nbytes, 552960u);
    }
  }
}

// The tiny checkpoints transformers wrote for the model oracle tests (tests/oracle):
// our config must agree with the config.json transformers itself wrote.
std::string FixtureDir(const std::string& name) {
  const char* src = std::getenv("SHOAL_SOURCE_DIR");
  return std::string(src ? src : ".") + "/tests/oracle/fixtures/" + name;
}

nlohmann::json ReadJson(const std::string& path) {
  absl::StatusOr<MappedFile> f = MappedFile::Open(path);
  if (!f.ok()) return nullptr;
  auto b = f->bytes();
  return nlohmann::json::parse(reinterpret_cast<const char*>(b.data()),
                               reinterpret_cast<const char*>(b.data()) + b.size());
}

class TransformersCheckpoint : public ::testing::TestWithParam<std::string> {};

TEST_P(TransformersCheckpoint, ConfigAgreesWithConfigJson) {
  std::string dir = FixtureDir(GetParam());
  ASSERT_TRUE(std::filesystem::exists(dir + "/config.json")) << dir << " is missing";
  absl::StatusOr<LoadedModel> m = LoadModel(dir);
  ASSERT_TRUE(m.ok()) << m.status();
  nlohmann::json j = ReadJson(dir + "/config.json");
  const ModelConfig& c = m->config;
  EXPECT_EQ(c.arch_name, j["model_type"].get<std::string>());
  EXPECT_EQ(c.hidden_size, j["hidden_size"].get<int64_t>());
  EXPECT_EQ(c.intermediate_size, j["intermediate_size"].get<int64_t>());
  EXPECT_EQ(c.num_layers, j["num_hidden_layers"].get<int64_t>());
  EXPECT_EQ(c.num_heads, j["num_attention_heads"].get<int64_t>());
  EXPECT_EQ(c.num_kv_heads, j["num_key_value_heads"].get<int64_t>());
  EXPECT_EQ(c.head_dim, j.value("head_dim", c.hidden_size / c.num_heads));
  EXPECT_EQ(c.vocab_size, j["vocab_size"].get<int64_t>());
  EXPECT_EQ(c.max_position_embeddings, j["max_position_embeddings"].get<int64_t>());
  EXPECT_EQ(c.tie_word_embeddings, j["tie_word_embeddings"].get<bool>());
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, j["rms_norm_eps"].get<double>());
  const nlohmann::json& rope = j["rope_parameters"];
  EXPECT_EQ(c.rope_theta, rope["rope_theta"].get<double>());
  EXPECT_FALSE(c.rope_interleaved);
  EXPECT_EQ(c.attention_bias, c.arch == Arch::kQwen2);
  if (rope["rope_type"] == "llama3") {
    EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLlama3);
    EXPECT_EQ(c.rope_scaling.factor, rope["factor"].get<double>());
    EXPECT_EQ(c.rope_scaling.low_freq_factor, rope["low_freq_factor"].get<double>());
    EXPECT_EQ(c.rope_scaling.high_freq_factor, rope["high_freq_factor"].get<double>());
    EXPECT_EQ(c.rope_scaling.original_max_position_embeddings,
              rope["original_max_position_embeddings"].get<int64_t>());
  } else {
    EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kNone);
  }
  // Every tensor transformers saved is float32 and accounted for.
  for (const std::string& name : m->weights->Names()) {
    EXPECT_EQ(m->weights->Find(name)->dtype, DType::kF32) << name;
  }
  EXPECT_TRUE(std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(),
                        j["eos_token_id"].get<int32_t>()) != c.eos_token_ids.end());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TransformersCheckpoint,
                         ::testing::Values("llama-tiny", "qwen2-tiny", "llama3-rope-tiny"),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string n = i.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

}  // namespace
}  // namespace shoal::worker
