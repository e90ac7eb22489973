#include "worker/models/cuda/cuda_llama.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "worker/common/status_macros.h"
#include "worker/kernels/cpu/ops.h"
#include "worker/kernels/cuda/attention.h"
#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/ops.h"
#include "worker/models/cuda/cuda_decoder.h"
#include "worker/models/cuda/device_weights.h"
#include "worker/models/linear.h"

namespace shoal::worker {
namespace {

using cuda::DeviceBuffer;

std::string LayerName(int64_t i, const char* suffix) { return fmt::format("model.layers.{}.{}", i, suffix); }

// One decoder block's weights: this tensor rank's shard of them. q/k/v are one matrix
// (one GEMM, one read of the normed activations), as are gate/up.
struct CudaLayer {
  DeviceBuffer attn_norm;  // f32 [hidden]
  DeviceBuffer qkv;        // [q_width + 2 kv_width, hidden]: q rows, then k, then v
  DeviceBuffer qkv_bias;   // f32 [q_width + 2 kv_width], qwen2 only
  DeviceBuffer o;          // [hidden, q_width]: this rank's columns
  DeviceBuffer mlp_norm;   // f32 [hidden]
  DeviceBuffer gate_up;    // [2 intermediate, hidden]: gate rows, then up
  DeviceBuffer down;       // [hidden, intermediate]: this rank's columns
};

// The model's shard as llama.cc splits it (AttentionHeads): query heads, kv heads (or
// replicas), MLP features and the vocabulary of the embedding and LM head over the
// stage's tensor ranks; layers [first_layer, end_layer) of the pipeline.
class CudaLlamaModel final : public CudaDecoder {
 public:
  ~CudaLlamaModel() override { Quiesce(); }  // before this class's buffers go
  CudaLlamaModel(const ModelConfig& config, const ShardSpec& shard, const AttentionHeads& heads,
                 const CausalLMOptions& options)
      : CudaDecoder(config, shard, options),
        heads_(heads),
        rope_(config.head_dim, config.rope_theta, config.rope_scaling,
              std::min<int64_t>(config.max_position_embeddings, 4096)) {
    q_width_ = heads.num_heads * config.head_dim;
    kv_width_ = heads.num_kv_heads * config.head_dim;
    qkv_width_ = q_width_ + 2 * kv_width_;
    inter_ = config.intermediate_size / shard.tp_size;
    attention_heads_ = heads.num_heads;
    attention_kv_heads_ = heads.num_kv_heads;
  }

 private:
  absl::Status AllocateLayerWeights(const WeightStore* store) override;
  absl::Status LoadLayerWeights(const WeightStore& store) override;
  void FillRandomLayerWeights() override;
  // K then V of every kv head of this rank.
  size_t KvBytesPerToken() const override { return 2 * kv_width_ * ElementBytes(kv_dtype_); }
  absl::Status GrowRope(int64_t positions) override;
  absl::Status AllocateLayerActivations(int64_t tokens) override;
  absl::Status RunLayer(int64_t l, int64_t num_tokens) override;
  // Alone, a step is kernels and GEMMs only; tensor ranks all-reduce through the host.
  bool StepsCapturable() const override { return tp_size() == 1; }

  // Layer l's K, then its V, each [num_blocks, block_size, kv_heads, head_dim].
  cuda::DeviceKvLayer KvLayer(int64_t l) const {
    std::byte* base = kv_layer(l);
    const size_t half = static_cast<size_t>(num_blocks_) * block_size_ * kv_width_ * ElementBytes(kv_dtype_);
    return {base, base + half, num_blocks_, block_size_, heads_.num_kv_heads, config_.head_dim, kv_dtype_};
  }

  AttentionHeads heads_;
  int64_t q_width_ = 0, kv_width_ = 0, qkv_width_ = 0, inter_ = 0;  // of this tensor rank
  std::vector<CudaLayer> layers_;  // this stage's

  // The CPU RopeTable's cos/sin, [positions, head_dim / 2] f32 each: scaling rules (linear,
  // llama3) live in one place, and the GPU rotates by exactly the CPU's angles.
  cpu::RopeTable rope_;

  // Layer activations, grown to the largest step seen.
  DeviceBuffer qkv_;      // f32 [T, qkv_width]: rope and attention read f32
  DeviceBuffer attn_;     // f32 [T, q_width]
  DeviceBuffer attn_in_;  // wdt_ [T, q_width]: attn_ cast for o_proj (unused with f32 weights)
  DeviceBuffer gate_up_;  // wdt_ [T, 2 intermediate]
  DeviceBuffer mlp_;      // wdt_ [T, intermediate]
};

absl::Status CudaLlamaModel::AllocateLayerWeights(const WeightStore*) {
  const ModelConfig& c = config_;
  const size_t e = ElementBytes(wdt_);
  const int64_t hidden = c.hidden_size;
  layers_.resize(num_layers_);
  for (int64_t l = 0; l < num_layers_; ++l) {
    const int64_t i = shard_.first_layer + l;
    CudaLayer& L = layers_[l];
    RETURN_IF_ERROR(AllocateWeight(LayerName(i, "input_layernorm.weight"), hidden * 4, &L.attn_norm));
    RETURN_IF_ERROR(AllocateWeight(LayerName(i, "self_attn.qkv"), qkv_width_ * hidden * e, &L.qkv));
    if (c.attention_bias) {
      RETURN_IF_ERROR(AllocateWeight(LayerName(i, "self_attn.qkv.bias"), qkv_width_ * 4, &L.qkv_bias));
    }
    RETURN_IF_ERROR(AllocateWeight(LayerName(i, "self_attn.o_proj.weight"), hidden * q_width_ * e, &L.o));
    RETURN_IF_ERROR(AllocateWeight(LayerName(i, "post_attention_layernorm.weight"), hidden * 4, &L.mlp_norm));
    RETURN_IF_ERROR(AllocateWeight(LayerName(i, "mlp.gate_up"), 2 * inter_ * hidden * e, &L.gate_up));
    RETURN_IF_ERROR(AllocateWeight(LayerName(i, "mlp.down_proj.weight"), hidden * inter_ * e, &L.down));
  }
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::LoadLayerWeights(const WeightStore& store) {
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size, inter = c.intermediate_size, hd = c.head_dim;
  const ShardOf tp = heads_.q, kv_tp = heads_.kv;
  for (int64_t l = 0; l < num_layers_; ++l) {
    const int64_t i = shard_.first_layer + l;
    CudaLayer& L = layers_[l];
    RETURN_IF_ERROR(UploadVector(store, LayerName(i, "input_layernorm.weight"), hidden, L.attn_norm));
    const MatrixSlice qkv[3] = {MatrixSlice::Columns(c.num_heads * hd, hidden, tp),
                                MatrixSlice::Columns(c.num_kv_heads * hd, hidden, kv_tp),
                                MatrixSlice::Columns(c.num_kv_heads * hd, hidden, kv_tp)};
    const char* names[3] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
    int64_t at = 0;
    for (int j = 0; j < 3; ++j) {
      const std::string base = LayerName(i, names[j]);
      RETURN_IF_ERROR(UploadMatrix(store, base + ".weight", qkv[j], wdt_, L.qkv, at));
      if (c.attention_bias) {
        RETURN_IF_ERROR(UploadVector(store, base + ".bias", qkv[j].full_rows, qkv[j].row_begin, qkv[j].rows,
                                     L.qkv_bias, at));
      }
      at += qkv[j].rows;
    }
    RETURN_IF_ERROR(UploadMatrix(store, LayerName(i, "self_attn.o_proj.weight"),
                                 MatrixSlice::Rows(hidden, c.num_heads * hd, tp), wdt_, L.o, 0));
    RETURN_IF_ERROR(UploadVector(store, LayerName(i, "post_attention_layernorm.weight"), hidden, L.mlp_norm));
    const MatrixSlice gate_up = MatrixSlice::Columns(inter, hidden, tp);
    RETURN_IF_ERROR(UploadMatrix(store, LayerName(i, "mlp.gate_proj.weight"), gate_up, wdt_, L.gate_up, 0));
    RETURN_IF_ERROR(UploadMatrix(store, LayerName(i, "mlp.up_proj.weight"), gate_up, wdt_, L.gate_up, inter_));
    RETURN_IF_ERROR(UploadMatrix(store, LayerName(i, "mlp.down_proj.weight"), MatrixSlice::Rows(hidden, inter, tp),
                                 wdt_, L.down, 0));
  }
  return absl::OkStatus();
}

void CudaLlamaModel::FillRandomLayerWeights() {
  const ModelConfig& c = config_;
  const float in_hidden = 1.0f / std::sqrt(static_cast<float>(c.hidden_size));
  for (CudaLayer& L : layers_) {
    FillOnes(L.attn_norm);
    FillUniform(L.qkv, wdt_, in_hidden);
    FillUniform(L.qkv_bias, DType::kF32, 0.1f);
    FillUniform(L.o, wdt_, 1.0f / std::sqrt(static_cast<float>(c.num_heads * c.head_dim)));
    FillOnes(L.mlp_norm);
    FillUniform(L.gate_up, wdt_, in_hidden);
    FillUniform(L.down, wdt_, 1.0f / std::sqrt(static_cast<float>(c.intermediate_size)));
  }
}

absl::Status CudaLlamaModel::GrowRope(int64_t positions) {
  rope_.Reserve(positions);
  return UploadRope(rope_.cos(0), rope_.sin(0), rope_.num_positions(), config_.head_dim / 2);
}

absl::Status CudaLlamaModel::AllocateLayerActivations(int64_t n) {
  const size_t e = ElementBytes(wdt_);
  for (DeviceBuffer* b : {&qkv_, &attn_, &attn_in_, &gate_up_, &mlp_}) *b = DeviceBuffer();
  RETURN_IF_ERROR(Allocate("activations qkv", n * qkv_width_ * 4, &qkv_));
  RETURN_IF_ERROR(Allocate("activations attn", n * q_width_ * 4, &attn_));
  if (wdt_ != DType::kF32) RETURN_IF_ERROR(Allocate("activations attn_in", n * q_width_ * e, &attn_in_));
  RETURN_IF_ERROR(Allocate("activations gate_up", n * 2 * inter_ * e, &gate_up_));
  RETURN_IF_ERROR(Allocate("activations mlp", n * inter_ * e, &mlp_));
  return absl::OkStatus();
}

// One decoder block over the step's T rows, as llama.cc's RunLayer: the GEMMs see every
// sequence's tokens as one matrix; only attention looks at sequences, through row_seq.
absl::Status CudaLlamaModel::RunLayer(int64_t l, int64_t T) {
  if (T == 0) return absl::OkStatus();  // every rank of the step has the same T
  const CudaLayer& L = layers_[l];
  const ModelConfig& c = config_;
  cudaStream_t s = stream();
  const int64_t hidden = c.hidden_size, hd = c.head_dim;
  const int64_t heads = heads_.num_heads;
  const float eps = static_cast<float>(c.rms_norm_eps);
  float* x = x_.as<float>();
  float* qkv = qkv_.as<float>();  // q: [T, heads, hd] at 0, k at q_width, v at q_width + kv_width (row stride qkv_width)
  // Row-parallel layers: alone, cuBLAS adds into the f32 residual stream (beta = 1); with
  // tensor ranks each writes its partial sum, and the all-reduced sum joins the residual.
  const bool alone = this->alone();
  float* row_out = this->row_out();

  cuda::RmsNormRows(s, x, nullptr, L.attn_norm.as<float>(), wdt_, xn_.data(), T, hidden, eps);
  DenseGemm(L.qkv.data(), hidden, qkv_width_, xn_.data(), T, DType::kF32, qkv, /*accumulate=*/false);
  // Bias, rope on q and k, and k, v → their cache slots, in one launch; attention reads the
  // new keys from the cache like the old.
  const cuda::DeviceKvLayer cache = KvLayer(l);
  const cuda::DeviceRows rows = this->rows(T);
  cuda::RopeAndWriteKv(s, cache, rows, qkv, qkv_width_, c.attention_bias ? L.qkv_bias.as<float>() : nullptr, heads, hd,
                       rope_cos_.as<float>(), rope_sin_.as<float>(), c.rope_interleaved);
  // Prompt chunks tile by tile, the other rows one by one (split over positions when few).
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  cuda::PagedAttentionTiled(s, cache, rows, tiles(), num_tiles(), qkv, qkv_width_, heads, scale, attn_.as<float>(),
                            q_width_);
  const cuda::DeviceRows rest = untiled_rows(T);
  if (rest.num_rows > 0) {
    ASSIGN_OR_RETURN(const cuda::AttentionSplit split, AttentionSplitFor(rest.num_rows, heads, hd));
    cuda::PagedAttention(s, cache, rest, qkv, qkv_width_, heads, scale, attn_.as<float>(), q_width_, split);
  }

  // x += attn·Woᵀ; the GEMV kernel reads the f32 attention output as it is, cuBLAS wants
  // it in the weight type.
  if (DenseGemmUsesGemv(T)) {
    DenseGemmF32Input(L.o.data(), q_width_, hidden, attn_.as<float>(), T, DType::kF32, row_out, /*accumulate=*/alone);
  } else {
    const void* attn_in = attn_.data();
    if (wdt_ != DType::kF32) {
      cuda::Cast(s, DType::kF32, attn_.data(), wdt_, attn_in_.data(), T * q_width_);
      attn_in = attn_in_.data();
    }
    DenseGemm(L.o.data(), q_width_, hidden, attn_in, T, DType::kF32, row_out, /*accumulate=*/alone);
  }
  if (!alone) RETURN_IF_ERROR(AddReduced(T * hidden));

  // x += (silu(xn·Wgateᵀ) * xn·Wupᵀ)·Wdownᵀ
  cuda::RmsNormRows(s, x, nullptr, L.mlp_norm.as<float>(), wdt_, xn_.data(), T, hidden, eps);
  RETURN_IF_ERROR(
      GateUpSiluMul(MatrixView{L.gate_up.data(), nullptr, wdt_, 2 * inter_, hidden}, xn_.data(), T, gate_up_.data(),
                    mlp_.data()));
  DenseGemm(L.down.data(), inter_, hidden, mlp_.data(), T, DType::kF32, row_out, /*accumulate=*/alone);
  if (!alone) RETURN_IF_ERROR(AddReduced(T * hidden));
  return absl::OkStatus();
}

// The llama-specific checks of both factories; fills in *heads.
absl::Status CheckLlamaArgs(const ModelConfig& c, const std::string& source, ShardSpec* shard,
                            const CausalLMOptions& options, AttentionHeads* heads) {
  RETURN_IF_ERROR(CheckCudaShard(c, source, shard, options));
  if (c.intermediate_size <= 0 || c.num_kv_heads <= 0 || c.head_dim <= 0) {
    return absl::InvalidArgumentError(fmt::format("{}: config has non-positive sizes (intermediate {}, kv heads {}, head_dim {})",
                                                  source, c.intermediate_size, c.num_kv_heads, c.head_dim));
  }
  ASSIGN_OR_RETURN(*heads, AttentionHeads::Of(c, *shard, source));
  if (c.intermediate_size % shard->tp_size != 0) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor parallel size {} does not divide the {} MLP features",
                                                  source, shard->tp_size, c.intermediate_size));
  }
  if (c.head_dim > cuda::kMaxHeadDim || c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(fmt::format("{}: head_dim {} is odd or above the CUDA attention's {}", source,
                                                  c.head_dim, cuda::kMaxHeadDim));
  }
  return CheckTensorSplit(c, source, *shard, options);
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaCausalLM>> CreateCudaLlama(const LoadedModel& model, const ShardSpec& shard_in,
                                                              const CausalLMOptions& options) {
  ShardSpec shard = shard_in;
  AttentionHeads heads;
  RETURN_IF_ERROR(CheckLlamaArgs(model.config, model.path, &shard, options, &heads));
  if (model.weights == nullptr) return absl::InvalidArgumentError(fmt::format("{}: no weights loaded", model.path));
  auto m = std::make_unique<CudaLlamaModel>(model.config, shard, heads, options);
  RETURN_IF_ERROR(m->Load(*model.weights));
  return std::unique_ptr<CudaCausalLM>(std::move(m));
}

absl::StatusOr<std::unique_ptr<CudaCausalLM>> CreateRandomCudaLlama(const ModelConfig& config,
                                                                    const CausalLMOptions& options, uint64_t seed) {
  ShardSpec shard;
  AttentionHeads heads;
  RETURN_IF_ERROR(CheckLlamaArgs(config, "random weights", &shard, options, &heads));
  auto m = std::make_unique<CudaLlamaModel>(config, shard, heads, options);
  RETURN_IF_ERROR(m->InitRandom(seed));
  return std::unique_ptr<CudaCausalLM>(std::move(m));
}

}  // namespace shoal::worker
