// DeepSeek-V2/V3 config.json parsing: the MLA/MoE/YaRN fields as the published
// checkpoints write them, and inconsistent configs rejected with the field named.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "worker/model/hf_config.h"
#include "worker/model/model_checks.h"

namespace shoal::worker {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

absl::StatusOr<ModelConfig> Config(const Json& j) { return ParseHfConfig("config.json", j.dump()); }

// DeepSeek-V3's config.json (the fields that matter; values as published).
Json V3Json() {
  return Json::parse(R"({
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
    "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_nextn_predict_layers": 1,
    "num_attention_heads": 128, "num_key_value_heads": 128, "n_shared_experts": 1,
    "n_routed_experts": 256, "ep_size": 1, "routed_scaling_factor": 2.5,
    "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "qk_nope_head_dim": 128, "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4,
    "num_experts_per_tok": 8, "moe_layer_freq": 1, "first_k_dense_replace": 3,
    "norm_topk_prob": true, "scoring_func": "sigmoid", "hidden_act": "silu",
    "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "rope_theta": 10000,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                     "type": "yarn"},
    "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 1,
    "attention_bias": false
  })");
}

// DeepSeek-V2-Lite's: no q_lora_rank, greedy softmax routing, mscale 0.707.
Json V2LiteJson() {
  return Json::parse(R"({
    "model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048,
    "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
    "num_attention_heads": 16, "num_key_value_heads": 16, "n_shared_experts": 2,
    "n_routed_experts": 64, "routed_scaling_factor": 1.0, "kv_lora_rank": 512,
    "q_lora_rank": null, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
    "topk_method": "greedy", "n_group": 1, "topk_group": 1, "num_experts_per_tok": 6,
    "moe_layer_freq": 1, "first_k_dense_replace": 1, "norm_topk_prob": false,
    "scoring_func": "softmax", "max_position_embeddings": 163840, "rms_norm_eps": 1e-06,
    "rope_theta": 10000, "bos_token_id": 100000, "eos_token_id": 100001,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                     "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096,
                     "type": "yarn"}
  })");
}

TEST(DeepseekConfig, ReadsDeepseekV3) {
  absl::StatusOr<ModelConfig> c = Config(V3Json());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, Arch::kDeepseekV3);
  const DeepseekConfig& d = c->deepseek;
  EXPECT_EQ(d.q_lora_rank, 1536);
  EXPECT_EQ(d.kv_lora_rank, 512);
  EXPECT_EQ(d.qk_head_dim(), 192);
  EXPECT_EQ(d.v_head_dim, 128);
  EXPECT_EQ(d.n_routed_experts, 256);
  EXPECT_EQ(d.n_shared_experts, 1);
  EXPECT_EQ(d.num_experts_per_tok, 8);
  EXPECT_EQ(d.n_group, 8);
  EXPECT_EQ(d.topk_group, 4);
  EXPECT_EQ(d.topk_method, DeepseekConfig::TopkMethod::kNoauxTc);
  EXPECT_EQ(d.scoring_func, DeepseekConfig::ScoringFunc::kSigmoid);
  EXPECT_TRUE(d.norm_topk_prob);
  EXPECT_DOUBLE_EQ(d.routed_scaling_factor, 2.5);
  EXPECT_EQ(d.num_nextn_predict_layers, 1);
  EXPECT_TRUE(d.rope_interleave);
  EXPECT_FALSE(d.IsMoeLayer(2));
  EXPECT_TRUE(d.IsMoeLayer(3));
  EXPECT_EQ(c->head_dim, 192);
  const RopeScaling& r = c->rope_scaling;
  EXPECT_EQ(r.type, RopeScaling::Type::kYarn);
  EXPECT_DOUBLE_EQ(r.factor, 40);
  EXPECT_EQ(r.original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(r.beta_fast, 32);
  EXPECT_DOUBLE_EQ(r.beta_slow, 1);
  EXPECT_DOUBLE_EQ(r.mscale, 1.0);
  EXPECT_DOUBLE_EQ(r.mscale_all_dim, 1.0);
  ModelConfig validated = *c;
  EXPECT_TRUE(ValidateModelConfig("config.json", &validated).ok());
}

TEST(DeepseekConfig, ReadsDeepseekV2LiteWithoutQLora) {
  absl::StatusOr<ModelConfig> c = Config(V2LiteJson());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, Arch::kDeepseekV2);
  EXPECT_FALSE(c->deepseek.q_lora_rank.has_value());
  EXPECT_EQ(c->deepseek.topk_method, DeepseekConfig::TopkMethod::kGreedy);
  EXPECT_EQ(c->deepseek.scoring_func, DeepseekConfig::ScoringFunc::kSoftmax);
  EXPECT_FALSE(c->deepseek.norm_topk_prob);
  EXPECT_EQ(c->num_kv_heads, 16);
  EXPECT_DOUBLE_EQ(c->rope_scaling.mscale_all_dim, 0.707);
  EXPECT_FALSE(c->deepseek.IsMoeLayer(0));
  EXPECT_TRUE(c->deepseek.IsMoeLayer(1));
}

// transformers' DeepseekV3Config writes num_key_value_heads (default 128, whatever the
// head count) and head_dim = qk_rope_head_dim; MLA uses neither.
TEST(DeepseekConfig, KvHeadsAndHeadDimComeFromMla) {
  Json j = V3Json();
  j["num_attention_heads"] = 4;
  j["num_key_value_heads"] = 128;
  j["head_dim"] = 64;
  absl::StatusOr<ModelConfig> c = Config(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 4);
  EXPECT_EQ(c->head_dim, 192);
  EXPECT_TRUE(ValidateModelConfig("config.json", &*c).ok());
}

TEST(DeepseekConfig, DefaultsFollowTheVersion) {
  Json v3 = V3Json();
  v3.erase("topk_method");
  v3.erase("scoring_func");
  v3.erase("norm_topk_prob");
  v3.erase("routed_scaling_factor");
  absl::StatusOr<ModelConfig> c = Config(v3);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->deepseek.topk_method, DeepseekConfig::TopkMethod::kNoauxTc);
  EXPECT_TRUE(c->deepseek.norm_topk_prob);
  EXPECT_DOUBLE_EQ(c->deepseek.routed_scaling_factor, 2.5);  // DeepseekV3Config's default
  Json v2 = V2LiteJson();
  v2.erase("topk_method");
  v2.erase("scoring_func");
  v2.erase("routed_scaling_factor");
  c = Config(v2);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->deepseek.routed_scaling_factor, 1.0);
  EXPECT_EQ(c->deepseek.topk_method, DeepseekConfig::TopkMethod::kGreedy);
  EXPECT_EQ(c->deepseek.scoring_func, DeepseekConfig::ScoringFunc::kSoftmax);
}

TEST(DeepseekConfig, MoeLayerFrequencySkipsLayers) {
  Json j = V2LiteJson();
  j["moe_layer_freq"] = 2;
  absl::StatusOr<ModelConfig> c = Config(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->deepseek.IsMoeLayer(1));
  EXPECT_TRUE(c->deepseek.IsMoeLayer(2));
}

// Each case: a field set to a value inconsistent with the rest, and what the error says.
struct BadField {
  const char* field;
  Json value;
  const char* message;
};

TEST(DeepseekConfig, InconsistentDimsNameTheField) {
  const BadField cases[] = {
      {"n_group", 7, "field 'n_group' is 7, which does not divide the 256 n_routed_experts"},
      {"topk_group", 9, "field 'topk_group' is 9, more than the 8 groups"},
      {"num_experts_per_tok", 300, "field 'num_experts_per_tok' is 300, more than the 256 n_routed_experts"},
      {"qk_rope_head_dim", 63, "field 'qk_rope_head_dim' is 63, which is odd"},
      {"kv_lora_rank", 0, "field 'kv_lora_rank' is 0"},
      {"kv_lora_rank", nullptr, "field 'kv_lora_rank' is missing"},
      {"v_head_dim", -128, "field 'v_head_dim' is -128"},
      {"q_lora_rank", "big", "field 'q_lora_rank' is not an integer"},
      {"moe_intermediate_size", 0, "field 'moe_intermediate_size' is 0"},
      {"scoring_func", "relu", "field 'scoring_func' is 'relu'"},
      {"topk_method", "group_limited_greedy", "field 'topk_method' 'group_limited_greedy' does not go with scoring_func 'sigmoid'"},
      {"topk_method", "best", "field 'topk_method' is 'best'"},
      {"routed_scaling_factor", 0, "field 'routed_scaling_factor' is 0"},
      {"first_k_dense_replace", -1, "field 'first_k_dense_replace' is -1"},
  };
  for (const BadField& b : cases) {
    Json j = V3Json();
    j[b.field] = b.value;
    absl::StatusOr<ModelConfig> c = Config(j);
    ASSERT_FALSE(c.ok()) << b.field;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(c.status().message(), HasSubstr("config.json: " + std::string(b.message))) << b.field;
  }
}

TEST(DeepseekConfig, GroupsTooSmallForTopK) {
  Json j = V3Json();
  j["topk_group"] = 1;  // one group of 32 experts is enough for 8...
  EXPECT_TRUE(Config(j).ok());
  j["n_group"] = 128;  // ... but one group of 2 is not
  EXPECT_THAT(Config(j).status().message(),
              HasSubstr("field 'topk_group' is 1: 1 groups of 2 experts cannot supply the 8 num_experts_per_tok"));
  Json v = V3Json();
  v["n_group"] = 256;  // noaux_tc ranks groups by their best two experts
  v["topk_group"] = 8;
  EXPECT_THAT(Config(v).status().message(), HasSubstr("noaux_tc needs at least 2 experts per group"));
}

TEST(DeepseekConfig, YarnFieldsAreChecked) {
  Json j = V3Json();
  j["rope_scaling"].erase("original_max_position_embeddings");
  EXPECT_THAT(Config(j).status().message(),
              HasSubstr("field 'rope_scaling' of type yarn needs a positive original_max_position_embeddings"));
  j = V3Json();
  j["rope_scaling"]["beta_fast"] = 1;
  j["rope_scaling"]["beta_slow"] = 2;
  EXPECT_THAT(Config(j).status().message(), HasSubstr("beta_fast 1 must be greater than beta_slow 2"));
  // Values that would make every logit NaN or infinite are refused with their field.
  j = V3Json();
  j["rope_scaling"]["beta_slow"] = -1;
  EXPECT_THAT(Config(j).status().message(), HasSubstr("both positive"));
  j = V3Json();
  j["rope_scaling"]["mscale_all_dim"] = -20.0 / std::log(40.0);  // mscale -1
  EXPECT_THAT(Config(j).status().message(), HasSubstr("field 'rope_scaling.mscale_all_dim'"));
  j = V3Json();
  j["rope_scaling"]["attention_factor"] = 0;
  EXPECT_THAT(Config(j).status().message(), HasSubstr("field 'rope_scaling.attention_factor' is 0"));
  // An odd qk_nope_head_dim is fine: only the rope dims rotate.
  j = V3Json();
  j["qk_nope_head_dim"] = 127;
  EXPECT_TRUE(Config(j).ok()) << Config(j).status();
  // transformers 5's rope_parameters spelling reads the same.
  j = V3Json();
  Json params = j["rope_scaling"];
  params.erase("type");
  params["rope_type"] = "yarn";
  params["rope_theta"] = 10000;
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] = params;
  absl::StatusOr<ModelConfig> c = Config(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kYarn);
  EXPECT_DOUBLE_EQ(c->rope_scaling.mscale_all_dim, 1.0);
}

TEST(DeepseekConfig, YarnIsOnlyForDeepseek) {
  const Json llama = Json::parse(R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
      "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 32,
      "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 64}})");
  EXPECT_THAT(Config(llama).status().message(),
              HasSubstr("field 'rope_scaling' has type yarn, which model_type llama does not support"));
}

}  // namespace
}  // namespace shoal::worker
