// DeepSeek pieces that need no oracle: the latent KV cache's size, routing on hand-made
// router logits, YaRN tables, expert ranges, skipping multi-token-prediction layers, and
// load errors for broken checkpoints (each names the tensor or field).
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "tests/model/model_files.h"
#include "worker/common/splitmix.h"
#include "tests/models/greedy_driver.h"
#include "worker/kernels/cpu/fp8_matmul.h"
#include "worker/kernels/cpu/mla_attention.h"
#include "worker/kernels/cpu/quant.h"
#include "worker/kernels/cpu/thread_pool.h"
#include "worker/kernels/cpu/yarn_rope.h"
#include "worker/model/loaded_model.h"
#include "worker/models/causal_lm.h"
#include "worker/models/deepseek.h"
#include "worker/models/deepseek_moe.h"

namespace shoal::worker {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

std::string Fixture(const std::string& name) { return testing::SourceDir() + "/tests/oracle/fixtures/" + name; }

float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

TEST(DeepseekKvCache, BlockHoldsOnlyLatentAndRopeKeyPerToken) {
  auto model = LoadModel(Fixture("deepseek-v2-tiny"));
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& c = model->config;
  ASSERT_EQ(c.num_layers, 3);
  ASSERT_EQ(c.deepseek.kv_lora_rank, 32);
  ASSERT_EQ(c.deepseek.qk_rope_head_dim, 8);
  ThreadPool pool(1);
  auto f32 = CreateCausalLM(*model, ShardSpec{}, &pool, CausalLMOptions{.kv_cache_dtype = DType::kF32});
  auto f16 = CreateCausalLM(*model, ShardSpec{}, &pool, CausalLMOptions{.kv_cache_dtype = DType::kF16});
  ASSERT_TRUE(f32.ok() && f16.ok());
  // layers x block_size x (kv_lora_rank + qk_rope_head_dim) x element size: 3 x 16 x 40 x 4.
  EXPECT_EQ((*f32)->KvBytesPerBlock(16), 7680u);
  EXPECT_EQ((*f16)->KvBytesPerBlock(16), 3840u);
  // Full per-head K and V would be layers x block x heads x (qk_head_dim + v_head_dim).
  EXPECT_LT((*f32)->KvBytesPerBlock(16), size_t{3} * 16 * c.num_heads * (24 + 16) * 4);
}

DeepseekConfig Routing8(DeepseekConfig::TopkMethod method, int64_t n_group, int64_t topk_group) {
  DeepseekConfig c;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_group = n_group;
  c.topk_group = topk_group;
  c.topk_method = method;
  c.scoring_func = method == DeepseekConfig::TopkMethod::kNoauxTc ? DeepseekConfig::ScoringFunc::kSigmoid
                                                                    : DeepseekConfig::ScoringFunc::kSoftmax;
  return c;
}

std::vector<int32_t> Sorted(std::vector<int32_t> v) {
  std::sort(v.begin(), v.end());
  return v;
}

// MLA kernels against attention written out naively from the definition: per head,
// k = [W_uk c_p, k_pe_p], v = W_uv c_p, causal softmax(scale * q·k) · v.
struct MlaCase {
  int block_size;
  DType dtype;
};

class MlaKernels : public ::testing::TestWithParam<MlaCase> {};

TEST_P(MlaKernels, AbsorbedAndExpandedMatchNaiveAttention) {
  const int H = 3, r = 16, dr = 8, dn = 8, dv = 12, start = 37, n = 3, L = start + n;
  const float scale = 0.3f;
  const MlaCase mc = GetParam();
  uint64_t seed = 1;
  auto rnd = [&] { return static_cast<float>(SplitMix64(seed++) >> 40) * 0x1p-23f - 1.0f; };
  std::vector<float> wkv(H * (dn + dv) * r), entries(L * (r + dr)), q(n * H * (dn + dr));
  // kv_b values representable in BF16, so both storages of the absorbed weights are exact.
  for (float& x : wkv) x = cpu::Bf16ToFloat(static_cast<uint16_t>(std::bit_cast<uint32_t>(rnd()) >> 16));
  for (float& x : entries) x = rnd();
  for (float& x : q) x = rnd();
  if (mc.dtype == DType::kF16) {
    for (float& x : entries) x = cpu::RoundToHalf(x);
  }
  // Block ids in reverse, so position order and memory order differ.
  const int num_blocks = (L + mc.block_size - 1) / mc.block_size;
  std::vector<int32_t> table(num_blocks);
  for (int b = 0; b < num_blocks; ++b) table[b] = num_blocks - 1 - b;
  std::vector<std::byte> storage(num_blocks * mc.block_size * (r + dr) * BlockBytes(mc.dtype));
  const cpu::PagedLatentLayer cache{storage.data(), num_blocks, mc.block_size, r, dr, mc.dtype};
  cpu::WriteLatents(cache, {0, L, 0, table}, entries.data(), r + dr);
  const cpu::AttentionSequence seq{0, n, start, table};

  // Naive: out[t, h, :dv].
  std::vector<float> want(n * H * dv);
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < H; ++h) {
      const float* qh = &q[(t * H + h) * (dn + dr)];
      std::vector<double> sc;
      for (int p = 0; p <= start + t; ++p) {
        const float* c = &entries[p * (r + dr)];
        double s = 0;
        for (int i = 0; i < dn; ++i) {
          double k = 0;
          for (int j = 0; j < r; ++j) k += wkv[(h * (dn + dv) + i) * r + j] * c[j];
          s += qh[i] * k;
        }
        for (int i = 0; i < dr; ++i) s += qh[dn + i] * c[r + i];
        sc.push_back(s * scale);
      }
      const double m = *std::max_element(sc.begin(), sc.end());
      double z = 0;
      for (double& x : sc) z += (x = std::exp(x - m));
      for (int k = 0; k < dv; ++k) {
        double o = 0;
        for (int p = 0; p <= start + t; ++p) {
          double v = 0;
          for (int j = 0; j < r; ++j) v += wkv[(h * (dn + dv) + dn + k) * r + j] * entries[p * (r + dr) + j];
          o += sc[p] / z * v;
        }
        want[(t * H + h) * dv + k] = static_cast<float>(o);
      }
    }
  }
  ThreadPool pool(2);
  auto check = [&](const std::vector<float>& got, const char* form) {
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 2e-5) << form << " element " << i;
  };

  // Absorbed: q_lat = W_uk^T q_nope, attention over entries, then W_uv; the per-head
  // weights in F32 and in BF16.
  for (DType wdtype : {DType::kF32, DType::kBF16}) {
    const cpu::MlaAbsorbedWeights w(wkv.data(), H, r, dn, dv, wdtype);
    std::vector<float> qa(n * H * (r + dr)), olat(n * H * r), absorbed(n * H * dv);
    cpu::MlaAbsorbQueries(&pool, w, {&seq, 1}, q.data(), H * (dn + dr), dr, qa.data(), H * (r + dr));
    cpu::MlaLatentAttention(&pool, cache, {&seq, 1}, qa.data(), H * (r + dr), H, scale, olat.data(), H * r);
    cpu::MlaLatentToValues(&pool, w, {&seq, 1}, olat.data(), H * r, absorbed.data(), H * dv);
    check(absorbed, wdtype == DType::kF32 ? "absorbed f32" : "absorbed bf16");
  }


  // Expanded: kv for every position from the cache, then attention.
  std::vector<float> lat(L * (r + dr)), kv(L * H * (dn + dv)), expanded(n * H * dv);
  cpu::ReadLatents(cache, table, L, lat.data(), r + dr);
  EXPECT_EQ(lat, entries);
  for (int p = 0; p < L; ++p) {
    for (int o = 0; o < H * (dn + dv); ++o) {
      float x = 0;
      for (int j = 0; j < r; ++j) x += wkv[o * r + j] * lat[p * (r + dr) + j];
      kv[p * H * (dn + dv) + o] = x;
    }
  }
  cpu::MlaExpandedAttention(&pool, seq, {H, dn, dr, dv}, q.data(), H * (dn + dr), kv.data(), H * (dn + dv),
                            lat.data() + r, r + dr, scale, expanded.data(), H * dv);
  check(expanded, "expanded");
}

INSTANTIATE_TEST_SUITE_P(Caches, MlaKernels,
                         ::testing::Values(MlaCase{4, DType::kF32}, MlaCase{32, DType::kF32}, MlaCase{48, DType::kF32}, MlaCase{64, DType::kF32},
                                           MlaCase{4, DType::kF16}, MlaCase{32, DType::kF16}),
                         [](const auto& info) {
                           return fmt::format("block{}_{}", info.param.block_size,
                                              info.param.dtype == DType::kF32 ? "f32" : "f16");
                         });

TEST(DeepseekRouting, GreedySoftmaxTakesTopProbabilitiesScaled) {
  DeepseekConfig c = Routing8(DeepseekConfig::TopkMethod::kGreedy, 1, 1);
  c.routed_scaling_factor = 2.0;
  const float logits[8] = {5, 0, 4.9f, 4.8f, 0, 0, 0, 0};
  const Routing r = RouteTokens(c, logits, 1, nullptr);
  ASSERT_EQ(r.ids, (std::vector<int32_t>{0, 2}));
  double z = 0;
  for (float x : logits) z += std::exp(static_cast<double>(x));
  EXPECT_NEAR(r.weights[0], 2.0 * std::exp(5.0) / z, 1e-6);
  EXPECT_NEAR(r.weights[1], 2.0 * std::exp(4.9) / z, 1e-6);
}

TEST(DeepseekRouting, GroupLimitedGreedyExcludesLosingGroups) {
  // Groups of two; group 0's best (5) beats group 1's (4.9): with one group allowed, the
  // runner-up expert 2 is excluded and expert 1 (logit 0) is taken instead.
  DeepseekConfig c = Routing8(DeepseekConfig::TopkMethod::kGroupLimitedGreedy, 4, 1);
  const float logits[8] = {5, 0, 4.9f, 4.8f, 0, 0, 0, 0};
  EXPECT_EQ(Sorted(RouteTokens(c, logits, 1, nullptr).ids), (std::vector<int32_t>{0, 1}));
  c.topk_group = 2;
  EXPECT_EQ(Sorted(RouteTokens(c, logits, 1, nullptr).ids), (std::vector<int32_t>{0, 2}));
}

TEST(DeepseekRouting, NoauxTcBiasChoosesGroupsButWeightsStayUnbiased) {
  DeepseekConfig c = Routing8(DeepseekConfig::TopkMethod::kNoauxTc, 4, 2);
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  // Group scores (sum of the two best sigmoids): g0 1.0, g1 1.62, g2 0.88, g3 0.54.
  const float logits[8] = {2, -2, 1.5f, 1.4f, 0, -0.5f, -1, -1};
  const float no_bias[8] = {};
  EXPECT_EQ(Sorted(RouteTokens(c, logits, 1, no_bias).ids), (std::vector<int32_t>{0, 2}));
  // +0.4 on expert 4 lifts group 2 (1.28) over group 0: expert 0, the best unbiased
  // score, is excluded with its group.
  const float bias[8] = {0, 0, 0, 0, 0.4f, 0, 0, 0};
  const Routing r = RouteTokens(c, logits, 1, bias);
  ASSERT_EQ(r.ids, (std::vector<int32_t>{4, 2}));
  const float s4 = Sigmoid(0), s2 = Sigmoid(1.5f);
  EXPECT_NEAR(r.weights[0], 2.5f * s4 / (s4 + s2), 1e-6);
  EXPECT_NEAR(r.weights[1], 2.5f * s2 / (s4 + s2), 1e-6);
}

TEST(DeepseekRouting, RoutesEachTokenOnItsOwn) {
  DeepseekConfig c = Routing8(DeepseekConfig::TopkMethod::kGreedy, 1, 1);
  const float logits[16] = {0, 0, 0, 0, 0, 0, 3, 2, /**/ 1, 4, 0, 0, 0, 0, 0, 0};
  const Routing r = RouteTokens(c, logits, 2, nullptr);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{6, 7, 1, 0}));
}

TEST(DeepseekExperts, RangesCoverAllExpertsOnce) {
  EXPECT_EQ(ExpertRange::Of(10, 0, 3).begin, 0);
  EXPECT_EQ(ExpertRange::Of(10, 0, 3).end, 4);
  EXPECT_EQ(ExpertRange::Of(10, 1, 3).begin, 4);
  EXPECT_EQ(ExpertRange::Of(10, 1, 3).end, 7);
  EXPECT_EQ(ExpertRange::Of(10, 2, 3).begin, 7);
  EXPECT_EQ(ExpertRange::Of(10, 2, 3).end, 10);
  EXPECT_EQ(ExpertRange::Of(256, 0, 1).end, 256);
}

TEST(DeepseekExperts, TensorRanksNeedACommunicator) {
  auto model = LoadModel(Fixture("deepseek-v3-tiny"));
  ASSERT_TRUE(model.ok()) << model.status();
  ThreadPool pool(1);
  ShardSpec shard;
  shard.tp_size = 2;
  const absl::Status st = CreateCausalLM(*model, shard, &pool).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("needs CausalLMOptions.tensor_group"));
}

TEST(YarnRope, UnscaledTableIsPlainRope) {
  const cpu::YarnRopeTable t(8, 10000.0, RopeScaling{}, 4);
  EXPECT_FLOAT_EQ(t.attention_factor(), 1.0f);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(t.inv_freq()[i], std::pow(10000.0, -2.0 * i / 8), 1e-7);
  EXPECT_NEAR(t.cos(3)[1], std::cos(3 * 0.1), 1e-6);
}

TEST(YarnRope, KeepsFastPairsAndSlowsSlowOnes) {
  RopeScaling s;
  s.type = RopeScaling::Type::kYarn;
  s.factor = 40;
  s.original_max_position_embeddings = 4096;
  s.mscale = 1.0;
  s.mscale_all_dim = 0.5;
  const cpu::YarnRopeTable t(64, 10000.0, s, 2);
  EXPECT_NEAR(t.inv_freq()[0], 1.0, 1e-7);  // rotates far more than beta_fast times: unchanged
  EXPECT_NEAR(t.inv_freq()[31], std::pow(10000.0, -62.0 / 64) / 40, 1e-9);  // fewer than beta_slow: / factor
  const double m1 = 0.1 * std::log(40.0) + 1, m05 = 0.05 * std::log(40.0) + 1;
  EXPECT_NEAR(t.attention_factor(), m1 / m05, 1e-6);
  EXPECT_NEAR(cpu::MlaSoftmaxScale(192, s), m05 * m05 / std::sqrt(192.0), 1e-9);
  EXPECT_NEAR(cpu::MlaSoftmaxScale(192, RopeScaling{}), 1 / std::sqrt(192.0), 1e-12);
}

TEST(DeepseekLoad, SkipsMultiTokenPredictionLayers) {
  auto model = LoadModel(Fixture("deepseek-v3-tiny"));
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->config.deepseek.num_nextn_predict_layers, 1);
  ASSERT_NE(model->weights->Find("model.layers.3.eh_proj.weight"), nullptr);  // the fixture has one
  ThreadPool pool(1);
  EXPECT_TRUE(CreateCausalLM(*model, ShardSpec{}, &pool).ok());
}

// A copy of a fixture with its tensors and config.json edited.
class BrokenCheckpoint {
 public:
  BrokenCheckpoint(const std::string& fixture,
                   const std::function<void(std::vector<testing::StTensor>&)>& edit_tensors,
                   const std::function<void(nlohmann::json&)>& edit_config = nullptr) {
    auto model = LoadModel(Fixture(fixture));
    EXPECT_TRUE(model.ok()) << model.status();
    std::vector<testing::StTensor> tensors;
    for (const std::string& name : model->weights->Names()) {
      const TensorView* t = model->weights->Find(name);
      tensors.push_back({name, "F32", t->shape, std::string(reinterpret_cast<const char*>(t->data), t->nbytes)});
    }
    edit_tensors(tensors);
    dir_.Write("model.safetensors", testing::BuildSafetensors(tensors));
    std::ifstream f(Fixture(fixture) + "/config.json");
    nlohmann::json config = nlohmann::json::parse(f);
    if (edit_config) edit_config(config);
    dir_.Write("config.json", config.dump());
  }
  std::string path() const { return dir_.path().string(); }

 private:
  testing::ScratchDir dir_;
};

void Drop(std::vector<testing::StTensor>& t, const std::string& name) {
  auto it = std::find_if(t.begin(), t.end(), [&](const auto& x) { return x.name == name; });
  ASSERT_NE(it, t.end()) << name;
  t.erase(it);
}

TEST(DeepseekLoad, MissingExpertNamesTheTensor) {
  BrokenCheckpoint ckpt("deepseek-v2-tiny", [](auto& t) { Drop(t, "model.layers.2.mlp.experts.5.up_proj.weight"); });
  auto model = LoadModel(ckpt.path());
  ASSERT_FALSE(model.ok());
  EXPECT_THAT(model.status().message(), HasSubstr("tensor 'model.layers.2.mlp.experts.5.up_proj.weight' is missing"));
}

TEST(DeepseekLoad, MissingScoreCorrectionBiasNamesTheTensor) {
  BrokenCheckpoint ckpt("deepseek-v3-tiny", [](auto& t) { Drop(t, "model.layers.1.mlp.gate.e_score_correction_bias"); });
  EXPECT_THAT(LoadModel(ckpt.path()).status().message(),
              HasSubstr("tensor 'model.layers.1.mlp.gate.e_score_correction_bias' is missing"));
}

TEST(DeepseekLoad, WrongShapeNamesTheTensorAndBothShapes) {
  BrokenCheckpoint ckpt("deepseek-v2-tiny", [](auto& t) {
    for (auto& x : t) {
      if (x.name == "model.layers.1.self_attn.kv_b_proj.weight") {
        x.shape = {64, 64};  // same bytes as [128, 32]
      }
    }
  });
  EXPECT_THAT(LoadModel(ckpt.path()).status().message(),
              HasSubstr("tensor 'model.layers.1.self_attn.kv_b_proj.weight' has shape [64, 64], expected [128, 32]"));
}

TEST(DeepseekLoad, ConfigDisagreeingWithWeightsNamesTheTensor) {
  BrokenCheckpoint ckpt(
      "deepseek-v2-lite-tiny", [](auto&) {}, [](nlohmann::json& c) { c["kv_lora_rank"] = 24; });
  EXPECT_THAT(LoadModel(ckpt.path()).status().message(),
              HasSubstr("tensor 'model.layers.0.self_attn.kv_a_proj_with_mqa.weight' has shape [40, 64], expected [32, 64]"));
}

TEST(DeepseekLoad, InconsistentConfigNamesTheField) {
  BrokenCheckpoint ckpt(
      "deepseek-v3-tiny", [](auto&) {}, [](nlohmann::json& c) { c["n_group"] = 3; });
  auto model = LoadModel(ckpt.path());
  EXPECT_THAT(model.status().message(), HasSubstr("config.json: field 'n_group' is 3, which does not divide the 16"));
}

// Real DeepSeek-V3/R1 checkpoints ship F8_E4M3 linear weights with 128x128 block scales
// (`<name>.weight_scale_inv`). Every DeepSeek projection loads through the shared linear
// layers, so an FP8 checkpoint must compute exactly what an F32 checkpoint holding the
// dequantized values (code value x block scale) computes — including kv_b_proj, which
// the absorbed MLA form reads through its own f32 copy.
TEST(DeepseekFp8, WeightsComputeAsTheirDequantizedValues) {
  // The e4m3 code nearest to x (by brute force over the 254 finite codes).
  auto encode = [](float x) {
    uint8_t best = 0;
    float best_err = INFINITY;
    for (int c = 0; c < 256; ++c) {
      if ((c & 0x7f) == 0x7f) continue;  // NaN
      const float err = std::fabs(cpu::E4M3ToFloat(static_cast<uint8_t>(c)) - x);
      if (err < best_err) best_err = err, best = static_cast<uint8_t>(c);
    }
    return best;
  };
  auto quantizable = [](const testing::StTensor& t) {
    return t.shape.size() == 2 && t.name.ends_with(".weight") && t.name != "model.embed_tokens.weight" &&
           t.name != "lm_head.weight" && !t.name.ends_with("mlp.gate.weight") &&
           !t.name.starts_with("model.layers.3.");  // the MTP layer stays as it is
  };
  std::vector<testing::StTensor> scales;
  // FP8 checkpoint: codes + scales; the F32 twin: code value x scale.
  BrokenCheckpoint fp8("deepseek-v3-tiny", [&](std::vector<testing::StTensor>& tensors) {
    for (testing::StTensor& t : tensors) {
      if (!quantizable(t)) continue;
      const int64_t rows = t.shape[0], cols = t.shape[1], br = (rows + 127) / 128, bc = (cols + 127) / 128;
      const float* w = reinterpret_cast<const float*>(t.data->data());
      std::vector<float> scale(br * bc, 0.0f);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          float& s = scale[(r / 128) * bc + c / 128];
          s = std::max(s, std::fabs(w[r * cols + c]) / 448.0f);
        }
      }
      std::string codes(rows * cols, '\0');
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) codes[r * cols + c] = static_cast<char>(encode(w[r * cols + c] / scale[(r / 128) * bc + c / 128]));
      }
      scales.push_back({t.name + "_scale_inv", "F32", {br, bc},
                        std::string(reinterpret_cast<const char*>(scale.data()), scale.size() * 4)});
      t.dtype = "F8_E4M3";
      t.data = std::move(codes);
    }
    tensors.insert(tensors.end(), scales.begin(), scales.end());
  });
  BrokenCheckpoint dequantized("deepseek-v3-tiny", [&](std::vector<testing::StTensor>& tensors) {
    for (testing::StTensor& t : tensors) {
      if (!quantizable(t)) continue;
      const testing::StTensor& s = *std::find_if(scales.begin(), scales.end(),
                                                 [&](const auto& x) { return x.name == t.name + "_scale_inv"; });
      const float* scale = reinterpret_cast<const float*>(s.data->data());
      float* w = reinterpret_cast<float*>(t.data->data());
      const int64_t cols = t.shape[1], bc = s.shape[1];
      for (int64_t i = 0; i < t.shape[0] * cols; ++i) {
        const float sc = scale[(i / cols / 128) * bc + (i % cols) / 128];
        w[i] = cpu::E4M3ToFloat(encode(w[i] / sc)) * sc;
      }
    }
  });
  ASSERT_FALSE(scales.empty());
  auto a = LoadModel(fp8.path());
  auto b = LoadModel(dequantized.path());
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(a->weights->Find("model.layers.1.self_attn.kv_b_proj.weight")->dtype, DType::kF8E4M3);
  ThreadPool pool(2);
  for (MlaMode mode : {MlaMode::kAbsorbed, MlaMode::kExpanded}) {
    auto lm_a = CreateDeepseek(*a, ShardSpec{}, &pool, {.kv_cache_dtype = DType::kF32}, {.mla_mode = mode});
    auto lm_b = CreateDeepseek(*b, ShardSpec{}, &pool, {.kv_cache_dtype = DType::kF32}, {.mla_mode = mode});
    ASSERT_TRUE(lm_a.ok()) << lm_a.status();
    ASSERT_TRUE(lm_b.ok()) << lm_b.status();
    std::vector<testing::SequenceRun> ra(1), rb(1);
    ra[0].prompt = rb[0].prompt = {1, 17, 200, 33, 5, 91, 250, 7, 128, 64};
    ra[0].num_new = rb[0].num_new = 12;
    ASSERT_TRUE((*lm_a)->AllocateKvCache(16, 4).ok());
    ASSERT_TRUE((*lm_b)->AllocateKvCache(16, 4).ok());
    testing::RunGreedy(**lm_a, ra, 4, 8);
    testing::RunGreedy(**lm_b, rb, 4, 8);
    EXPECT_LE(testing::RelativeError(ra[0].prompt_logits.data(), rb[0].prompt_logits), 1e-5);
    EXPECT_EQ(ra[0].generated, rb[0].generated);
  }
}

}  // namespace
}  // namespace shoal::worker
