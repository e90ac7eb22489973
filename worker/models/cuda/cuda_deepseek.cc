#include "worker/models/cuda/cuda_deepseek.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "worker/common/status_macros.h"
#include "worker/kernels/cpu/yarn_rope.h"
#include "worker/kernels/cuda/attention.h"
#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/grouped_gemv.h"
#include "worker/kernels/cuda/moe_routing.h"
#include "worker/kernels/cuda/ops.h"
#include "worker/model/model_checks.h"
#include "worker/models/cuda/cuda_decoder.h"
#include "worker/models/cuda/device_weights.h"
#include "worker/models/deepseek_moe.h"
#include "worker/models/linear.h"
#include "worker/models/step_plan.h"

namespace shoal::worker {
namespace {

using cuda::DeviceBuffer;
using cuda::PinnedBuffer;

// DeepSeek builds q_a_layernorm and kv_a_layernorm with the RMSNorm default epsilon,
// not config.rms_norm_eps (as deepseek_mla.cc).
constexpr float kLatentNormEps = 1e-6f;

// num_experts_per_tok at most this (DeepSeek-V2/V3 use 6 and 8): the slots of a token are
// a short list.
constexpr int64_t kMaxExpertsPerToken = 64;

std::string LayerName(int64_t i, const char* suffix) { return fmt::format("model.layers.{}.{}", i, suffix); }

// The experts' matrices of one projection, `rows` each, stacked in m, for GroupedGemv.
cuda::StackedMatrices Stacked(const DeviceMatrix& m, int64_t rows) {
  return {m.data.data(), m.dtype == DType::kF8E4M3 ? m.scales.as<float>() : nullptr, m.dtype, rows, m.cols, rows};
}

// A SwiGLU MLP with gate and up stacked into one matrix: a dense layer's, the shared
// experts', or (`count` of them back to back) the routed experts of this rank.
struct SwiGluWeights {
  DeviceMatrix gate_up;  // [count][2 features, hidden]: gate rows, then up
  DeviceMatrix down;     // [count][hidden, features]
  int64_t features = 0;  // of one MLP on this rank
};

// The matrices may stay FP8 (DeviceMatrix); kv_b_proj is always the weight type, since the
// absorbed form multiplies its per-head slices in one batched cuBLAS GEMM.
struct MlaWeights {
  DeviceMatrix q_a;       // [q_lora_rank, hidden], whole on every rank; empty without q_lora_rank
  DeviceBuffer q_a_norm;  // f32 [q_lora_rank]
  DeviceMatrix q;         // q_b_proj [heads * qk, q_lora_rank] or q_proj [heads * qk, hidden]: this rank's heads
  DeviceMatrix kv_a;      // [kv_lora_rank + rope, hidden], whole
  DeviceBuffer kv_a_norm; // f32 [kv_lora_rank]
  DeviceBuffer kv_b;      // [heads * (nope + v), kv_lora_rank]: per head W_uk rows then W_uv rows
  DeviceMatrix o;         // [hidden, heads * v]: this rank's columns
};

struct DeepseekLayerWeights {
  DeviceBuffer attn_norm, mlp_norm;  // f32 [hidden]
  MlaWeights attn;
  std::optional<SwiGluWeights> dense;
  // DeepSeekMoE
  DeviceBuffer router;               // f32 [n_routed_experts, hidden], whole: routing is a discrete
                                     // choice, so it sees the CPU's f32 activations and weights
  std::vector<float> router_bias;    // noaux_tc's e_score_correction_bias, for routing on the host
  DeviceBuffer router_bias_dev;      // and on the device
  std::optional<SwiGluWeights> routed;  // experts [begin, end) of experts_
  std::optional<SwiGluWeights> shared;
};

// DeepSeek-V2/V3 as deepseek.cc computes it, on the GPU. Attention is MLA in absorbed
// form for every chunk: q_nope into latent space through each head's W_uk (a batched
// GEMM over heads), attention over the cached [c, k_pe] entries (on the tensor cores,
// MlaLatentAttentionTiled, every row in a tile, where the cache is f16/bf16; else
// MlaLatentAttention row by row), the latent outputs through each head's W_uv, then o_proj. MoE routes on the host
// (RouteTokens, the CPU's exact rules, over router logits copied back: one
// synchronization per MoE layer), then gathers each local expert's tokens into one
// matrix, runs the experts (those of a few rows, every one at decode, in one GroupedGemv
// launch per projection; larger ones a GEMM pair each), and adds the weighted outputs
// into the residual in slot order.
class CudaDeepseekModel final : public CudaDecoder {
 public:
  ~CudaDeepseekModel() override { Quiesce(); }  // before this class's buffers go
  CudaDeepseekModel(const ModelConfig& config, const ShardSpec& shard, const CausalLMOptions& options)
      : CudaDecoder(config, shard, options),
        d_(config.deepseek),
        rope_(config.deepseek.qk_rope_head_dim, config.rope_theta, config.rope_scaling,
              std::min<int64_t>(config.max_position_embeddings, 4096)) {
    heads_ = config.num_heads / shard.tp_size;
    attention_heads_ = heads_;
    qk_ = d_.qk_head_dim();
    entry_ = d_.kv_lora_rank + d_.qk_rope_head_dim;
    dense_features_ = config.intermediate_size / shard.tp_size;
    shared_features_ = d_.moe_intermediate_size * d_.n_shared_experts / shard.tp_size;
    experts_ = ExpertRange::Of(d_.n_routed_experts, shard.tp_rank, shard.tp_size);
    scale_ = static_cast<float>(cpu::MlaSoftmaxScale(qk_, config.rope_scaling));
    router_rules_.num_experts = static_cast<int32_t>(d_.n_routed_experts);
    router_rules_.experts_per_token = static_cast<int32_t>(d_.num_experts_per_tok);
    router_rules_.num_groups = static_cast<int32_t>(d_.n_group);
    router_rules_.top_groups = static_cast<int32_t>(d_.topk_group);
    router_rules_.sigmoid = d_.scoring_func == DeepseekConfig::ScoringFunc::kSigmoid;
    router_rules_.method = d_.topk_method == DeepseekConfig::TopkMethod::kGreedy               ? cuda::RouterRules::kGreedy
                           : d_.topk_method == DeepseekConfig::TopkMethod::kGroupLimitedGreedy ? cuda::RouterRules::kGroupLimitedGreedy
                                                                                              : cuda::RouterRules::kNoauxTc;
    router_rules_.normalize = d_.norm_topk_prob;
    router_rules_.scaling = static_cast<float>(d_.routed_scaling_factor);
    // The kernels' limits (V2-Lite 64 experts, V2 160, V3 256; 6 or 8 a token; 8 groups).
    device_routing_ = d_.n_routed_experts > 0 && d_.n_routed_experts <= cuda::kMaxRoutedExperts &&
                      d_.num_experts_per_tok <= cuda::kMaxExpertsPerTokenOnDevice && d_.n_group >= 1 &&
                      d_.n_group <= 32 && d_.n_routed_experts % d_.n_group == 0;
  }

 private:
  absl::Status AllocateLayerWeights(const WeightStore* store) override;
  absl::Status LoadLayerWeights(const WeightStore& store) override;
  void FillRandomLayerWeights() override;
  // Per token and layer: the latent and the rotary key, shared by all heads.
  size_t KvBytesPerToken() const override { return entry_ * ElementBytes(kv_dtype_); }
  absl::Status GrowRope(int64_t positions) override;
  absl::Status AllocateLayerActivations(int64_t tokens) override;
  absl::Status RunLayer(int64_t l, int64_t num_tokens) override;
  // Decode steps of a whole model that route on the device enqueue device work only.
  bool StepsCapturable() const override { return tp_size() == 1 && device_routing_; }
  bool StepCapturable(int64_t num_tokens) const override { return RoutesOnDevice(num_tokens); }

  // `count` MLPs of `features` each on this rank (of full_features in the file, split by
  // tp), whose first one's tensors start with `first` ("model.layers.3.mlp.experts.0.").
  absl::Status AllocateSwiGlu(const WeightStore* store, const std::string& first, int64_t count, int64_t features,
                              int64_t full_features, ShardOf tp, SwiGluWeights* w);
  // MLP `prefix` ("model.layers.<i>.mlp." or "...shared_experts.") into w's `index`-th
  // slot, features split by `tp` (whole for a routed expert).
  absl::Status LoadSwiGlu(const WeightStore& store, const std::string& prefix, int64_t full_features, ShardOf tp,
                          int64_t index, const SwiGluWeights& w);
  absl::Status Attention(const MlaWeights& w, int64_t l, int64_t T);
  // Rows [0, T) of xn_ through MLP `index` of w into out (f32 [T, hidden]).
  absl::Status RunSwiGlu(const SwiGluWeights& w, int64_t index, const void* in, int64_t T, float* out,
                         bool accumulate, void* gate_up, void* mlp);
  absl::Status Moe(const DeepseekLayerWeights& L, int64_t T);
  // Whether a step of T rows routes its MoE layers on the device (few rows: every expert
  // fits a GroupedGemv group), else on the host.
  bool RoutesOnDevice(int64_t T) const;
  // The expert buffers hold `rows` rows (grown after the stream drains).
  absl::Status EnsureExpertRows(int64_t rows);
  // The router bias on the device, once the host copy is set.
  void UploadRouterBias(DeepseekLayerWeights& L);
  // Every row attends through MlaLatentAttentionTiled when the cache is the tensor cores':
  // MLA's heads share the latents, so even one decode row fills an mma with its heads.
  int64_t MinTiledRows() const override {
    return cuda::MlaTilesOnTensorCores(LatentLayer(0)) ? 1 : CudaDecoder::MinTiledRows();
  }
  cuda::DeviceLatentLayer LatentLayer(int64_t l) const {
    return {kv_layer(l), num_blocks_, block_size_, d_.kv_lora_rank, d_.qk_rope_head_dim, kv_dtype_};
  }
  const void* At(const DeviceBuffer& b, int64_t elements) const {
    return b.as<std::byte>() + elements * ElementBytes(wdt_);
  }
  void* At(const DeviceBuffer& b, int64_t elements) {
    return b.as<std::byte>() + elements * ElementBytes(wdt_);
  }

  DeepseekConfig d_;
  int64_t heads_ = 0, qk_ = 0, entry_ = 0;  // heads of this rank
  int64_t dense_features_ = 0, shared_features_ = 0;
  ExpertRange experts_;
  float scale_ = 1.0f;
  std::vector<DeepseekLayerWeights> layers_;
  cpu::YarnRopeTable rope_;

  // Activations, grown to the largest step seen.
  int64_t capacity_ = 0;
  DeviceBuffer qa_;        // f32 [T, q_lora_rank]
  DeviceBuffer qa_n_;      // wdt_ [T, q_lora_rank]
  DeviceBuffer q_;         // f32 [T, heads, qk]
  DeviceBuffer q_w_;       // wdt_ [T, heads, qk] (bf16 weights only)
  DeviceBuffer ckv_;       // f32 [T, entry]
  DeviceBuffer q_lat_;     // f32 [T, heads, entry]
  DeviceBuffer o_lat_;     // f32 [T, heads, kv_lora_rank]
  DeviceBuffer o_lat_w_;   // wdt_ [T, heads, kv_lora_rank] (bf16 weights only)
  DeviceBuffer attn_;      // wdt_ [T, heads * v]
  DeviceBuffer gate_up_;   // wdt_ [T, 2 max(dense, shared features)]
  DeviceBuffer mlp_;       // wdt_ [T, max(dense, shared features)]
  DeviceBuffer xn32_;      // f32 [T, hidden]: the MoE layers' normed input, for the router
  DeviceBuffer logits_;    // f32 [T, n_routed_experts]: router outputs
  // The local experts' rows, sized to the most a step has gathered on this rank (a 1/tp
  // share of T * k on average), not to every slot.
  int64_t gathered_capacity_ = 0;
  DeviceBuffer xg_;        // wdt_ [gathered, hidden]: tokens gathered by local expert
  DeviceBuffer eg_up_;     // wdt_ [gathered, 2 moe features]
  DeviceBuffer e_mlp_;     // wdt_ [gathered, moe features]
  DeviceBuffer e_out_;     // f32 [gathered, hidden]
  DeviceBuffer moe_dev_;   // int32 gather rows [T * k], int32 slot rows [T * k], f32 weights [T * k]
  PinnedBuffer logits_host_, moe_host_;
  ExpertSlots plan_;  // the MoE layer's slots, its vectors reused layer after layer
  cuda::RouterRules router_rules_;
  bool device_routing_ = false;  // the routing fits the device kernels (RoutesOnDevice)
  const std::vector<int64_t> no_large_experts_;
};

absl::Status CudaDeepseekModel::AllocateSwiGlu(const WeightStore* store, const std::string& first, int64_t count,
                                                int64_t features, int64_t full_features, ShardOf tp,
                                                SwiGluWeights* w) {
  const int64_t hidden = config_.hidden_size;
  w->features = features;
  const MatrixSlice gate_up = MatrixSlice::Columns(full_features, hidden, tp);
  const MatrixSlice down = MatrixSlice::Rows(hidden, full_features, tp);
  // A stacked matrix stays FP8 only when every tensor stacked into it can: the gate and
  // up (or down) of each of the `count` MLPs, named from the first one's.
  auto each = [&](const std::string& suffix) {
    std::vector<std::string> names;
    if (count == 1) return std::vector<std::string>{first + suffix};
    const size_t dot = first.rfind('.', first.size() - 2);  // "...experts.<n>." -> the expert number
    const int64_t begin = std::stoll(first.substr(dot + 1));
    for (int64_t e = 0; e < count; ++e) names.push_back(fmt::format("{}{}.{}", first.substr(0, dot + 1), begin + e, suffix));
    return names;
  };
  std::vector<std::string> gate_names = each("gate_proj.weight"), up_names = each("up_proj.weight");
  gate_names.insert(gate_names.end(), up_names.begin(), up_names.end());
  RETURN_IF_ERROR(AllocateWeightMatrix(store, gate_names, gate_up, count * 2 * features, &w->gate_up, 2 * features));
  return AllocateWeightMatrix(store, each("down_proj.weight"), down, count * hidden, &w->down, hidden);
}

absl::Status CudaDeepseekModel::AllocateLayerWeights(const WeightStore* store) {
  const ModelConfig& c = config_;
  const size_t e = ElementBytes(wdt_);
  const int64_t hidden = c.hidden_size, H = c.num_heads, rank = d_.kv_lora_rank;
  const ShardOf tp{shard_.tp_rank, shard_.tp_size};
  layers_.resize(num_layers_);
  for (int64_t l = 0; l < num_layers_; ++l) {
    const int64_t i = shard_.first_layer + l;
    DeepseekLayerWeights& L = layers_[l];
    MlaWeights& a = L.attn;
    RETURN_IF_ERROR(AllocateWeight(LayerName(i, "input_layernorm.weight"), hidden * 4, &L.attn_norm));
    if (d_.q_lora_rank) {
      const int64_t qr = *d_.q_lora_rank;
      RETURN_IF_ERROR(AllocateWeightMatrix(store, LayerName(i, "self_attn.q_a_proj.weight"),
                                           MatrixSlice::Whole(qr, hidden), qr, &a.q_a));
      RETURN_IF_ERROR(AllocateWeight(LayerName(i, "self_attn.q_a_layernorm.weight"), qr * 4, &a.q_a_norm));
      RETURN_IF_ERROR(AllocateWeightMatrix(store, LayerName(i, "self_attn.q_b_proj.weight"),
                                           MatrixSlice::Columns(H * qk_, qr, tp), heads_ * qk_, &a.q));
    } else {
      RETURN_IF_ERROR(AllocateWeightMatrix(store, LayerName(i, "self_attn.q_proj.weight"),
                                           MatrixSlice::Columns(H * qk_, hidden, tp), heads_ * qk_, &a.q));
    }
    RETURN_IF_ERROR(AllocateWeightMatrix(store, LayerName(i, "self_attn.kv_a_proj_with_mqa.weight"),
                                         MatrixSlice::Whole(entry_, hidden), entry_, &a.kv_a));
    RETURN_IF_ERROR(AllocateWeight(LayerName(i, "self_attn.kv_a_layernorm.weight"), rank * 4, &a.kv_a_norm));
    RETURN_IF_ERROR(AllocateWeight(LayerName(i, "self_attn.kv_b_proj.weight"),
                                   heads_ * (d_.qk_nope_head_dim + d_.v_head_dim) * rank * e, &a.kv_b));
    RETURN_IF_ERROR(AllocateWeightMatrix(store, LayerName(i, "self_attn.o_proj.weight"),
                                         MatrixSlice::Rows(hidden, H * d_.v_head_dim, tp), hidden, &a.o));
    RETURN_IF_ERROR(AllocateWeight(LayerName(i, "post_attention_layernorm.weight"), hidden * 4, &L.mlp_norm));
    if (!d_.IsMoeLayer(i)) {
      L.dense.emplace();
      RETURN_IF_ERROR(AllocateSwiGlu(store, LayerName(i, "mlp."), 1, dense_features_, c.intermediate_size, tp,
                                     &*L.dense));
      continue;
    }
    RETURN_IF_ERROR(AllocateWeight(LayerName(i, "mlp.gate.weight"), d_.n_routed_experts * hidden * 4, &L.router));
    if (experts_.end > experts_.begin) {
      L.routed.emplace();
      RETURN_IF_ERROR(AllocateSwiGlu(store, fmt::format("{}experts.{}.", LayerName(i, "mlp."), experts_.begin),
                                     experts_.end - experts_.begin, d_.moe_intermediate_size,
                                     d_.moe_intermediate_size, ShardOf{}, &*L.routed));
    }
    if (d_.n_shared_experts > 0) {
      L.shared.emplace();
      RETURN_IF_ERROR(AllocateSwiGlu(store, LayerName(i, "mlp.shared_experts."), 1, shared_features_,
                                     d_.moe_intermediate_size * d_.n_shared_experts, tp, &*L.shared));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaDeepseekModel::LoadSwiGlu(const WeightStore& store, const std::string& p, int64_t full, ShardOf tp,
                                            int64_t index, const SwiGluWeights& w) {
  const int64_t hidden = config_.hidden_size, n = w.features;
  const MatrixSlice gate_up = MatrixSlice::Columns(full, hidden, tp);
  RETURN_IF_ERROR(UploadMatrix(store, p + "gate_proj.weight", gate_up, w.gate_up, index * 2 * n));
  RETURN_IF_ERROR(UploadMatrix(store, p + "up_proj.weight", gate_up, w.gate_up, index * 2 * n + n));
  return UploadMatrix(store, p + "down_proj.weight", MatrixSlice::Rows(hidden, full, tp), w.down, index * hidden);
}

absl::Status CudaDeepseekModel::LoadLayerWeights(const WeightStore& store) {
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size, H = c.num_heads, rank = d_.kv_lora_rank;
  const ShardOf tp{shard_.tp_rank, shard_.tp_size};
  for (int64_t l = 0; l < num_layers_; ++l) {
    const int64_t i = shard_.first_layer + l;
    DeepseekLayerWeights& L = layers_[l];
    MlaWeights& a = L.attn;
    RETURN_IF_ERROR(UploadVector(store, LayerName(i, "input_layernorm.weight"), hidden, L.attn_norm));
    if (d_.q_lora_rank) {
      const int64_t qr = *d_.q_lora_rank;
      RETURN_IF_ERROR(UploadMatrix(store, LayerName(i, "self_attn.q_a_proj.weight"), MatrixSlice::Whole(qr, hidden),
                                   a.q_a, 0));
      RETURN_IF_ERROR(UploadVector(store, LayerName(i, "self_attn.q_a_layernorm.weight"), qr, a.q_a_norm));
      RETURN_IF_ERROR(UploadMatrix(store, LayerName(i, "self_attn.q_b_proj.weight"),
                                   MatrixSlice::Columns(H * qk_, qr, tp), a.q, 0));
    } else {
      RETURN_IF_ERROR(UploadMatrix(store, LayerName(i, "self_attn.q_proj.weight"),
                                   MatrixSlice::Columns(H * qk_, hidden, tp), a.q, 0));
    }
    RETURN_IF_ERROR(UploadMatrix(store, LayerName(i, "self_attn.kv_a_proj_with_mqa.weight"),
                                 MatrixSlice::Whole(entry_, hidden), a.kv_a, 0));
    RETURN_IF_ERROR(UploadVector(store, LayerName(i, "self_attn.kv_a_layernorm.weight"), rank, a.kv_a_norm));
    RETURN_IF_ERROR(UploadMatrix(store, LayerName(i, "self_attn.kv_b_proj.weight"),
                                 MatrixSlice::Columns(H * (d_.qk_nope_head_dim + d_.v_head_dim), rank, tp), wdt_,
                                 a.kv_b, 0));
    RETURN_IF_ERROR(UploadMatrix(store, LayerName(i, "self_attn.o_proj.weight"),
                                 MatrixSlice::Rows(hidden, H * d_.v_head_dim, tp), a.o, 0));
    RETURN_IF_ERROR(UploadVector(store, LayerName(i, "post_attention_layernorm.weight"), hidden, L.mlp_norm));
    if (L.dense) {
      RETURN_IF_ERROR(LoadSwiGlu(store, LayerName(i, "mlp."), c.intermediate_size, tp, 0, *L.dense));
      continue;
    }
    RETURN_IF_ERROR(UploadMatrix(store, LayerName(i, "mlp.gate.weight"), MatrixSlice::Whole(d_.n_routed_experts, hidden),
                                 DType::kF32, L.router, 0));
    if (d_.topk_method == DeepseekConfig::TopkMethod::kNoauxTc) {
      ASSIGN_OR_RETURN(VectorParam bias, VectorParam::Load(store, LayerName(i, "mlp.gate.e_score_correction_bias"),
                                                           d_.n_routed_experts));
      L.router_bias.assign(bias.data(), bias.data() + d_.n_routed_experts);
      UploadRouterBias(L);
    }
    for (int64_t e = experts_.begin; e < experts_.end; ++e) {
      RETURN_IF_ERROR(LoadSwiGlu(store, fmt::format("{}experts.{}.", LayerName(i, "mlp."), e),
                                 d_.moe_intermediate_size, ShardOf{}, e - experts_.begin, *L.routed));
    }
    if (L.shared) {
      RETURN_IF_ERROR(LoadSwiGlu(store, LayerName(i, "mlp.shared_experts."),
                                 d_.moe_intermediate_size * d_.n_shared_experts, tp, 0, *L.shared));
    }
  }
  return absl::OkStatus();
}

void CudaDeepseekModel::FillRandomLayerWeights() {
  const ModelConfig& c = config_;
  auto bound = [](int64_t fan_in) { return 1.0f / std::sqrt(static_cast<float>(fan_in)); };
  auto swiglu = [&](const std::optional<SwiGluWeights>& w, int64_t full_features) {
    if (!w) return;
    FillUniform(w->gate_up, bound(c.hidden_size));
    FillUniform(w->down, bound(full_features));
  };
  for (DeepseekLayerWeights& L : layers_) {
    MlaWeights& a = L.attn;
    FillOnes(L.attn_norm);
    FillUniform(a.q_a, bound(c.hidden_size));
    FillOnes(a.q_a_norm);
    FillUniform(a.q, bound(d_.q_lora_rank ? *d_.q_lora_rank : c.hidden_size));
    FillUniform(a.kv_a, bound(c.hidden_size));
    FillOnes(a.kv_a_norm);
    FillUniform(a.kv_b, wdt_, bound(d_.kv_lora_rank));
    FillUniform(a.o, bound(c.num_heads * d_.v_head_dim));
    FillOnes(L.mlp_norm);
    swiglu(L.dense, c.intermediate_size);
    FillUniform(L.router, DType::kF32, bound(c.hidden_size));
    if (L.router.bytes() > 0 && d_.topk_method == DeepseekConfig::TopkMethod::kNoauxTc) {
      L.router_bias.assign(d_.n_routed_experts, 0.0f);
      UploadRouterBias(L);
    }
    swiglu(L.routed, d_.moe_intermediate_size);
    swiglu(L.shared, d_.moe_intermediate_size * d_.n_shared_experts);
  }
}

absl::Status CudaDeepseekModel::GrowRope(int64_t positions) {
  rope_.Reserve(positions);
  return UploadRope(rope_.cos(0), rope_.sin(0), rope_.num_positions(), d_.qk_rope_head_dim / 2);
}

absl::Status CudaDeepseekModel::AllocateLayerActivations(int64_t n) {
  const size_t e = ElementBytes(wdt_);
  const int64_t hidden = config_.hidden_size, rank = d_.kv_lora_rank, v = d_.v_head_dim;
  const int64_t mlp = std::max(dense_features_, shared_features_), k = d_.num_experts_per_tok;
  const bool cast = wdt_ != DType::kF32;
  for (DeviceBuffer* b : {&qa_, &qa_n_, &q_, &q_w_, &ckv_, &q_lat_, &o_lat_, &o_lat_w_, &attn_, &gate_up_, &mlp_,
                          &xn32_, &logits_, &moe_dev_}) {
    *b = DeviceBuffer();
  }
  logits_host_ = PinnedBuffer();
  moe_host_ = PinnedBuffer();
  if (d_.q_lora_rank) {
    RETURN_IF_ERROR(Allocate("activations q_a", n * *d_.q_lora_rank * 4, &qa_));
    RETURN_IF_ERROR(Allocate("activations q_a normed", n * *d_.q_lora_rank * e, &qa_n_));
  }
  RETURN_IF_ERROR(Allocate("activations q", n * heads_ * qk_ * 4, &q_));
  if (cast) RETURN_IF_ERROR(Allocate("activations q cast", n * heads_ * qk_ * e, &q_w_));
  RETURN_IF_ERROR(Allocate("activations latent entries", n * entry_ * 4, &ckv_));
  RETURN_IF_ERROR(Allocate("activations latent queries", n * heads_ * entry_ * 4, &q_lat_));
  RETURN_IF_ERROR(Allocate("activations latent outputs", n * heads_ * rank * 4, &o_lat_));
  if (cast) RETURN_IF_ERROR(Allocate("activations latent outputs cast", n * heads_ * rank * e, &o_lat_w_));
  RETURN_IF_ERROR(Allocate("activations attn", n * heads_ * v * e, &attn_));
  if (mlp > 0) {
    RETURN_IF_ERROR(Allocate("activations gate_up", n * 2 * mlp * e, &gate_up_));
    RETURN_IF_ERROR(Allocate("activations mlp", n * mlp * e, &mlp_));
  }
  if (d_.n_routed_experts > 0) {
    const int64_t slots = n * k;
    RETURN_IF_ERROR(Allocate("router input", n * hidden * 4, &xn32_));
    RETURN_IF_ERROR(Allocate("router logits", n * d_.n_routed_experts * 4, &logits_));
    // Per slot: gathered token, slot row, weight (4 bytes each); the expert groups; then,
    // routing on the device, each slot's expert id and weight.
    const size_t plan_bytes = slots * 20 + (experts_.end - experts_.begin) * sizeof(cuda::GemvGroup);
    RETURN_IF_ERROR(Allocate("expert slots", plan_bytes, &moe_dev_));
    logits_host_ = PinnedBuffer(n * d_.n_routed_experts * 4);
    moe_host_ = PinnedBuffer(plan_bytes);
  }
  capacity_ = n;
  return absl::OkStatus();
}

absl::Status CudaDeepseekModel::RunSwiGlu(const SwiGluWeights& w, int64_t index, const void* in, int64_t T,
                                           float* out, bool accumulate, void* gate_up, void* mlp) {
  const int64_t hidden = config_.hidden_size, n = w.features;
  RETURN_IF_ERROR(GateUpSiluMul(w.gate_up.Rows(index * 2 * n, 2 * n), in, T, gate_up, mlp));
  return Gemm(w.down.Rows(index * hidden, hidden), mlp, T, DType::kF32, out, accumulate);
}

// h += o_proj(MLA(xn)) for the step's T rows, absorbed (see the class comment); the new
// tokens' entries go into the cache first, so each row attends to itself as well.
absl::Status CudaDeepseekModel::Attention(const MlaWeights& w, int64_t l, int64_t T) {
  cudaStream_t s = stream();
  const int64_t hidden = config_.hidden_size, rank = d_.kv_lora_rank, rope = d_.qk_rope_head_dim;
  const int64_t nope = d_.qk_nope_head_dim, v = d_.v_head_dim, H = heads_;
  float* q = q_.as<float>();
  float* ckv = ckv_.as<float>();
  if (d_.q_lora_rank) {
    const int64_t qr = *d_.q_lora_rank;
    RETURN_IF_ERROR(Gemm(w.q_a.All(), xn_.data(), T, DType::kF32, qa_.data(), false));
    cuda::RmsNormStrided(s, qa_.as<float>(), qr, w.q_a_norm.as<float>(), wdt_, qa_n_.data(), qr, T, qr,
                         kLatentNormEps);
    RETURN_IF_ERROR(Gemm(w.q.All(), qa_n_.data(), T, DType::kF32, q, false));
  } else {
    RETURN_IF_ERROR(Gemm(w.q.All(), xn_.data(), T, DType::kF32, q, false));
  }
  RETURN_IF_ERROR(Gemm(w.kv_a.All(), xn_.data(), T, DType::kF32, ckv, false));
  cuda::RmsNormStrided(s, ckv, entry_, w.kv_a_norm.as<float>(), DType::kF32, ckv, entry_, T, rank, kLatentNormEps);
  cuda::ApplyRope(s, DType::kF32, q + nope, T, H * qk_, d_positions(), H, qk_, rope, rope_cos_.as<float>(),
                  rope_sin_.as<float>(), d_.rope_interleave);
  cuda::ApplyRope(s, DType::kF32, ckv + rank, T, entry_, d_positions(), 1, entry_, rope, rope_cos_.as<float>(),
                  rope_sin_.as<float>(), d_.rope_interleave);
  const cuda::DeviceLatentLayer cache = LatentLayer(l);
  const cuda::DeviceRows rows = this->rows(T);
  cuda::WriteLatents(s, cache, rows, ckv, entry_);

  // q_lat[t, h] = [q_nope[t, h] · W_uk[h] (rank), q_pe[t, h] (rope)]
  const void* q_in = q;
  if (wdt_ != DType::kF32) {
    cuda::Cast(s, DType::kF32, q, wdt_, q_w_.data(), T * H * qk_);
    q_in = q_w_.data();
  }
  const int64_t head_rows = nope + v;  // kv_b_proj rows per head
  gemm_.RunBatched(wdt_, {q_in, H * qk_, qk_}, {w.kv_b.data(), rank, head_rows * rank}, /*w_out_by_in=*/false, T,
                   nope, rank, DType::kF32, q_lat_.data(), H * entry_, entry_, H, false);
  SHOAL_CUDA_CHECK(cudaMemcpy2DAsync(q_lat_.as<float>() + rank, entry_ * sizeof(float), q + nope, qk_ * sizeof(float),
                                     rope * sizeof(float), T * H, cudaMemcpyDeviceToDevice, s));
  // On the tensor cores where the cache allows (every row then in a tile, MinTiledRows),
  // else row by row; split over positions when the rows are few.
  ASSIGN_OR_RETURN(const cuda::AttentionSplit split, AttentionSplitFor(T, H, rank));
  if (cuda::MlaTilesOnTensorCores(cache)) {
    cuda::MlaLatentAttentionTiled(s, cache, rows, tiles(), num_tiles(), max_tile_rows(), q_lat_.as<float>(),
                                  H * entry_, H, scale_, o_lat_.as<float>(), H * rank, split);
  } else {
    cuda::MlaLatentAttention(s, cache, rows, q_lat_.as<float>(), H * entry_, H, scale_, o_lat_.as<float>(), H * rank,
                             split);
  }

  // attn[t, h] = W_uv[h] · o_lat[t, h], then h += attn · W_oᵀ
  const void* o_in = o_lat_.data();
  if (wdt_ != DType::kF32) {
    cuda::Cast(s, DType::kF32, o_lat_.data(), wdt_, o_lat_w_.data(), T * H * rank);
    o_in = o_lat_w_.data();
  }
  gemm_.RunBatched(wdt_, {o_in, H * rank, rank}, {At(w.kv_b, nope * rank), rank, head_rows * rank},
                   /*w_out_by_in=*/true, T, rank, v, wdt_, attn_.data(), H * v, v, H, false);
  RETURN_IF_ERROR(Gemm(w.o.All(), attn_.data(), T, DType::kF32, row_out(), /*accumulate=*/alone()));
  if (!alone()) RETURN_IF_ERROR(AddReduced(T * hidden));
  return absl::OkStatus();
}

void CudaDeepseekModel::UploadRouterBias(DeepseekLayerWeights& L) {
  L.router_bias_dev = DeviceBuffer(L.router_bias.size() * sizeof(float));
  L.router_bias_dev.CopyFromHost(L.router_bias.data(), L.router_bias.size() * sizeof(float));
}

absl::Status CudaDeepseekModel::EnsureExpertRows(int64_t rows) {
  if (rows <= gathered_capacity_) return absl::OkStatus();
  SHOAL_CUDA_CHECK(cudaStreamSynchronize(stream()));  // nothing enqueued still reads the old buffers
  const int64_t n = std::max(rows, 2 * gathered_capacity_), mi = d_.moe_intermediate_size;
  const int64_t hidden = config_.hidden_size;
  for (DeviceBuffer* b : {&xg_, &eg_up_, &e_mlp_, &e_out_}) *b = DeviceBuffer();
  gathered_capacity_ = 0;  // until every buffer is back
  const size_t e = ElementBytes(wdt_);
  RETURN_IF_ERROR(Allocate("expert inputs", n * hidden * e, &xg_));
  RETURN_IF_ERROR(Allocate("expert gate_up", n * 2 * mi * e, &eg_up_));
  RETURN_IF_ERROR(Allocate("expert mlp", n * mi * e, &e_mlp_));
  RETURN_IF_ERROR(Allocate("expert outputs", n * hidden * 4, &e_out_));
  gathered_capacity_ = n;
  BuffersMoved();  // captured steps read the old ones
  return absl::OkStatus();
}

bool CudaDeepseekModel::RoutesOnDevice(int64_t T) const {
  return device_routing_ && T <= cuda::kGroupedGemvMaxRows && T * d_.num_experts_per_tok <= cuda::kMaxPlannedSlots;
}

// h += shared(xn) + sum over the token's experts held here of weight * expert(xn).
absl::Status CudaDeepseekModel::Moe(const DeepseekLayerWeights& L, int64_t T) {
  cudaStream_t s = stream();
  const int64_t hidden = config_.hidden_size, E = d_.n_routed_experts, k = d_.num_experts_per_tok;
  const int64_t slots = T * k, local = experts_.end - experts_.begin;
  float* out = row_out();
  gemm_.Run(DType::kF32, xn32_.data(), L.router.data(), T, hidden, E, DType::kF32, logits_.data(), false);

  // The slot plan in moe_dev_: gather | slot rows | slot weights (slots each) | groups.
  int32_t* plan_dev = moe_dev_.as<int32_t>();
  auto* groups_dev = reinterpret_cast<cuda::GemvGroup*>(plan_dev + 3 * slots);
  int64_t gathered = 0;  // expert rows (device routing: the bound T * k; rows past the real ones gather token 0)
  int num_groups = 0;
  const std::vector<int64_t>* large = &no_large_experts_;
  if (RoutesOnDevice(T)) {
    // Routed and planned where the logits are: no synchronization, every expert a group
    // (at most T <= kGroupedGemvMaxRows rows each).
    int32_t* ids = plan_dev + 3 * slots + local * (sizeof(cuda::GemvGroup) / 4);
    auto* weights = reinterpret_cast<float*>(ids + slots);
    cuda::RouteTokensOnDevice(s, router_rules_, logits_.as<float>(), T,
                              L.router_bias_dev.bytes() > 0 ? L.router_bias_dev.as<float>() : nullptr, ids, weights);
    cuda::PlanExpertSlotsOnDevice(s, ids, weights, T, static_cast<int32_t>(k), static_cast<int32_t>(experts_.begin),
                                  static_cast<int32_t>(experts_.end), plan_dev, plan_dev + slots,
                                  reinterpret_cast<float*>(plan_dev + 2 * slots), groups_dev);
    gathered = slots;
    num_groups = static_cast<int>(std::min(local, slots));  // the experts with rows first, then empty groups
    RETURN_IF_ERROR(EnsureExpertRows(gathered));
  } else {
    // Routing on the host, by the CPU's rules, over the router logits.
    SHOAL_CUDA_CHECK(cudaMemcpyAsync(logits_host_.data(), logits_.data(), T * E * 4, cudaMemcpyDeviceToHost, s));
    SHOAL_CUDA_CHECK(cudaStreamSynchronize(s));  // also: the previous layer's slot copy has landed
    const Routing r =
        RouteTokens(d_, logits_host_.as<float>(), T, L.router_bias.empty() ? nullptr : L.router_bias.data());
    // Each local expert's tokens as consecutive rows; each token's slots in expert order.
    ExpertSlots& plan = plan_;
    PlanExpertSlots(r, T, experts_, &plan);
    gathered = plan.gathered();
    num_groups = static_cast<int>(plan.small.size());
    large = &plan.large;
    int32_t* host = moe_host_.as<int32_t>();
    std::copy(plan.gather.begin(), plan.gather.end(), host);
    std::copy(plan.slot_rows.begin(), plan.slot_rows.end(), host + slots);
    std::copy(plan.slot_weights.begin(), plan.slot_weights.end(), reinterpret_cast<float*>(host + 2 * slots));
    if (num_groups > 0) std::memcpy(host + 3 * slots, plan.small.data(), num_groups * sizeof(cuda::GemvGroup));
    SHOAL_CUDA_CHECK(cudaMemcpyAsync(moe_dev_.data(), moe_host_.data(),
                                     slots * 12 + num_groups * sizeof(cuda::GemvGroup), cudaMemcpyHostToDevice, s));
    RETURN_IF_ERROR(EnsureExpertRows(gathered));
  }

  // The shared experts first, as the CPU: alone they add into the residual; with tensor
  // ranks they start the partial sum (which must start at zero without them).
  if (L.shared) {
    RETURN_IF_ERROR(RunSwiGlu(*L.shared, 0, xn_.data(), T, out, /*accumulate=*/alone(), gate_up_.data(), mlp_.data()));
  } else if (!alone()) {
    SHOAL_CUDA_CHECK(cudaMemsetAsync(out, 0, T * hidden * sizeof(float), s));
  }
  if (gathered > 0) {  // else every slot's expert is on another rank: nothing to run or add
    cuda::GatherRows(s, wdt_, xn_.data(), plan_dev, xg_.data(), gathered, hidden);
    // Experts of a few rows (every one at decode) in one launch per projection; the
    // others, a GEMM each.
    const int64_t mi = d_.moe_intermediate_size;
    // A token takes an expert once: no group has more rows than the step has tokens.
    // With no expert past the groups (every step of up to 32 rows), the SiLU is the
    // grouped GEMV's epilogue; else every expert's gate_up goes through eg_up_ first.
    if (large->empty()) {
      cuda::GroupedGemv(s, Stacked(L.routed->gate_up, 2 * mi), groups_dev, num_groups, T, wdt_, xg_.data(), wdt_,
                        e_mlp_.data(), false, cuda::GemvOutput::kSiluGateTimesUp);
    } else {
      cuda::GroupedGemv(s, Stacked(L.routed->gate_up, 2 * mi), groups_dev, num_groups, T, wdt_, xg_.data(), wdt_,
                        eg_up_.data(), false);
      for (const int64_t e : *large) {
        const int64_t o = plan_.offset[e];
        RETURN_IF_ERROR(Gemm(L.routed->gate_up.Rows(e * 2 * mi, 2 * mi), At(xg_, o * hidden), plan_.count[e], wdt_,
                             At(eg_up_, o * 2 * mi), false));
      }
      cuda::SiluMulRows(s, wdt_, eg_up_.data(), e_mlp_.data(), gathered, mi);
    }
    cuda::GroupedGemv(s, Stacked(L.routed->down, hidden), groups_dev, num_groups, T, wdt_, e_mlp_.data(), DType::kF32,
                      e_out_.data(), false);
    for (const int64_t e : *large) {
      const int64_t o = plan_.offset[e];
      RETURN_IF_ERROR(Gemm(L.routed->down.Rows(e * hidden, hidden), At(e_mlp_, o * mi), plan_.count[e], DType::kF32,
                           e_out_.as<float>() + o * hidden, false));
    }
    cuda::AddWeightedRows(s, e_out_.as<float>(), plan_dev + slots, reinterpret_cast<const float*>(plan_dev + 2 * slots),
                          k, out, T, hidden);
  }
  if (!alone()) RETURN_IF_ERROR(AddReduced(T * hidden));
  return absl::OkStatus();
}

absl::Status CudaDeepseekModel::RunLayer(int64_t l, int64_t T) {
  if (T == 0) return absl::OkStatus();  // every rank of the step has the same T
  const DeepseekLayerWeights& L = layers_[l];
  cudaStream_t s = stream();
  const int64_t hidden = config_.hidden_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  float* x = x_.as<float>();
  cuda::RmsNormRows(s, x, nullptr, L.attn_norm.as<float>(), wdt_, xn_.data(), T, hidden, eps);
  RETURN_IF_ERROR(Attention(L.attn, l, T));
  if (L.dense) {
    cuda::RmsNormRows(s, x, nullptr, L.mlp_norm.as<float>(), wdt_, xn_.data(), T, hidden, eps);
  } else {
    // The router reads the f32 norm; the experts its rounding to the weight type (the same
    // values the norm would store in that type directly).
    cuda::RmsNormRows(s, x, nullptr, L.mlp_norm.as<float>(), DType::kF32, xn32_.data(), T, hidden, eps);
    cuda::Cast(s, DType::kF32, xn32_.data(), wdt_, xn_.data(), T * hidden);
  }
  if (L.dense) {
    RETURN_IF_ERROR(
        RunSwiGlu(*L.dense, 0, xn_.data(), T, row_out(), /*accumulate=*/alone(), gate_up_.data(), mlp_.data()));
    if (!alone()) RETURN_IF_ERROR(AddReduced(T * hidden));
    return absl::OkStatus();
  }
  return Moe(L, T);
}

absl::Status CheckDeepseekArgs(const ModelConfig& c, const std::string& source, ShardSpec* shard,
                               const CausalLMOptions& options) {
  if (!IsDeepseek(c.arch)) {
    return absl::InvalidArgumentError(fmt::format("{}: architecture '{}' is not DeepSeek", source, c.arch_name));
  }
  RETURN_IF_ERROR(CheckCudaShard(c, source, shard, options));
  const DeepseekConfig& d = c.deepseek;
  const int tp = shard->tp_size;
  if (c.rope_scaling.type == RopeScaling::Type::kLlama3) {
    return absl::InvalidArgumentError(
        fmt::format("{}: rope scaling llama3 is not a DeepSeek rope scaling (use yarn)", source));
  }
  if (c.attention_bias) {
    return absl::UnimplementedError(
        fmt::format("{}: attention_bias is not supported for DeepSeek (no DeepSeek checkpoint has it)", source));
  }
  if (d.kv_lora_rank <= 0 || d.qk_nope_head_dim <= 0 || d.qk_rope_head_dim <= 0 || d.qk_rope_head_dim % 2 != 0 ||
      d.v_head_dim <= 0) {
    return absl::InvalidArgumentError(fmt::format(
        "{}: MLA sizes must be positive with an even rope part (kv_lora_rank {}, qk_nope_head_dim {}, "
        "qk_rope_head_dim {}, v_head_dim {})",
        source, d.kv_lora_rank, d.qk_nope_head_dim, d.qk_rope_head_dim, d.v_head_dim));
  }
  if (d.kv_lora_rank + d.qk_rope_head_dim > cuda::kMaxLatentEntry) {
    return absl::InvalidArgumentError(fmt::format("{}: kv_lora_rank {} + qk_rope_head_dim {} is above the CUDA MLA's {}",
                                                  source, d.kv_lora_rank, d.qk_rope_head_dim, cuda::kMaxLatentEntry));
  }
  if (c.num_heads % tp != 0) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor parallel size {} does not divide the {} attention heads",
                                                  source, tp, c.num_heads));
  }
  if (c.intermediate_size % tp != 0) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor parallel size {} does not divide the {} MLP features",
                                                  source, tp, c.intermediate_size));
  }
  // What hf_config.cc checks of a file, also for configs built in code (benchmarks).
  if (const std::optional<FieldProblem> p = DeepseekRoutingProblem(d)) {
    return absl::InvalidArgumentError(fmt::format("{}: {} {}", source, p->field, p->what));
  }
  if (d.n_routed_experts > 0) {
    if (d.num_experts_per_tok > kMaxExpertsPerToken) {
      return absl::InvalidArgumentError(fmt::format("{}: num_experts_per_tok {} is above the CUDA MoE's {}", source,
                                                    d.num_experts_per_tok, kMaxExpertsPerToken));
    }
    if ((d.moe_intermediate_size * d.n_shared_experts) % tp != 0) {
      return absl::InvalidArgumentError(
          fmt::format("{}: tensor parallel size {} does not divide the shared experts' {} features", source, tp,
                      d.moe_intermediate_size * d.n_shared_experts));
    }
  }
  return CheckTensorSplit(c, source, *shard, options);
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaCausalLM>> CreateCudaDeepseek(const LoadedModel& model, const ShardSpec& shard_in,
                                                                 const CausalLMOptions& options) {
  ShardSpec shard = shard_in;
  RETURN_IF_ERROR(CheckDeepseekArgs(model.config, model.path, &shard, options));
  if (model.weights == nullptr) return absl::InvalidArgumentError(fmt::format("{}: no weights loaded", model.path));
  auto m = std::make_unique<CudaDeepseekModel>(model.config, shard, options);
  RETURN_IF_ERROR(m->Load(*model.weights));
  return std::unique_ptr<CudaCausalLM>(std::move(m));
}

absl::StatusOr<std::unique_ptr<CudaCausalLM>> CreateRandomCudaDeepseek(const ModelConfig& config,
                                                                       const CausalLMOptions& options, uint64_t seed) {
  ShardSpec shard;
  RETURN_IF_ERROR(CheckDeepseekArgs(config, "random weights", &shard, options));
  auto m = std::make_unique<CudaDeepseekModel>(config, shard, options);
  RETURN_IF_ERROR(m->InitRandom(seed));
  return std::unique_ptr<CudaCausalLM>(std::move(m));
}

}  // namespace shoal::worker
