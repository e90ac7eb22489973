#include "worker/models/cuda/cuda_llama.h"

#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "worker/common/status_macros.h"
#include "worker/kernels/cpu/fp8_matmul.h"
#include "worker/kernels/cpu/ops.h"
#include "worker/kernels/cpu/quant.h"
#include "worker/kernels/cuda/attention.h"
#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/device.h"
#include "worker/kernels/cuda/gemm.h"
#include "worker/kernels/cuda/ops.h"
#include "worker/kernels/cuda/sampling.h"
#include "worker/models/decoder_step.h"
#include "worker/models/linear.h"
#include "worker/parallel/communicator.h"

namespace shoal::worker {
namespace {

using cuda::DeviceBuffer;
using cuda::PinnedBuffer;

size_t ElementBytes(DType t) { return t == DType::kF32 ? 4 : 2; }

uint16_t FloatToBf16(float f) {  // round to nearest even, as __float2bfloat16_rn
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

// Host floats → `to` (f32, f16 or bf16) at dst.
void ConvertFloats(const float* src, int64_t n, DType to, std::byte* dst) {
  if (to == DType::kF32) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  uint16_t* h = reinterpret_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) h[i] = to == DType::kF16 ? cpu::FloatToHalf(src[i]) : FloatToBf16(src[i]);
}

std::string LayerName(int64_t i, const char* suffix) { return fmt::format("model.layers.{}.{}", i, suffix); }

absl::Status OutOfDeviceMemory(const std::string& what, size_t bytes) {
  size_t free_bytes = 0, total = 0;
  cuda::DeviceMemory(&free_bytes, &total);
  return absl::ResourceExhaustedError(fmt::format("{}: {} bytes do not fit on the GPU ({} of {} bytes free)", what,
                                                  bytes, free_bytes, total));
}

absl::Status Allocate(const std::string& what, size_t bytes, DeviceBuffer* out) {
  if (!DeviceBuffer::TryAllocate(bytes, out)) return OutOfDeviceMemory(what, bytes);
  return absl::OkStatus();
}

// Host rows are converted in pieces of about this many bytes, so a large matrix never
// needs a second whole copy in host memory.
constexpr size_t kUploadChunkBytes = 32u << 20;

// Which part of a [full_rows, full_cols] file matrix a rank keeps: rows [row_begin,
// row_begin + rows) (a column-parallel shard) and columns [col_begin, col_begin + cols)
// (a row-parallel one); the whole matrix for a single rank.
struct MatrixSlice {
  int64_t full_rows = 0, full_cols = 0;
  int64_t row_begin = 0, rows = 0;
  int64_t col_begin = 0, cols = 0;

  static MatrixSlice Whole(int64_t rows, int64_t cols) { return {rows, cols, 0, rows, 0, cols}; }
  // Output features split: this shard's rows.
  static MatrixSlice Columns(int64_t rows, int64_t cols, ShardOf s) {
    const int64_t n = rows / s.count;
    return {rows, cols, n * s.rank, n, 0, cols};
  }
  // Input features split: this shard's columns of every row.
  static MatrixSlice Rows(int64_t rows, int64_t cols, ShardOf s) {
    const int64_t n = cols / s.count;
    return {rows, cols, 0, rows, n * s.rank, n};
  }
};

// The slice of matrix `name` (any dtype DequantizeRow reads, or F8_E4M3 with its 128x128
// block scales), dequantized on the host row by row and stored as `to` at dst,
// `row_offset` rows in (q/k/v and gate/up share one device matrix each). Only the slice's
// rows of the mapped file are read, so a rank touches only its shard's pages.
absl::Status UploadMatrix(const WeightStore& store, const std::string& name, const MatrixSlice& m, DType to,
                          const DeviceBuffer& dst, int64_t row_offset) {
  ASSIGN_OR_RETURN(const TensorView* t, store.Get(name));
  if (t->shape.size() != 2 || t->shape[0] != m.full_rows || t->shape[1] != m.full_cols) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor '{}' has shape [{}], expected [{}, {}]", store.Source(),
                                                  name, fmt::join(t->shape, ", "), m.full_rows, m.full_cols));
  }
  const float* scales = nullptr;
  int64_t scale_stride = 0;
  if (t->dtype == DType::kF8E4M3) {
    const std::string sname = name + "_scale_inv";  // "<...>.weight" -> "<...>.weight_scale_inv"
    const int64_t srows = (m.full_rows + cpu::kFp8BlockSize - 1) / cpu::kFp8BlockSize;
    scale_stride = (m.full_cols + cpu::kFp8BlockSize - 1) / cpu::kFp8BlockSize;
    const TensorView* s = store.Find(sname);
    if (s == nullptr || s->dtype != DType::kF32 || s->shape != std::vector<int64_t>{srows, scale_stride}) {
      return absl::InvalidArgumentError(fmt::format("{}: tensor '{}' is F8_E4M3 and needs F32 block scales '{}' of [{}, {}]",
                                                    store.Source(), name, sname, srows, scale_stride));
    }
    scales = reinterpret_cast<const float*>(s->data);
  } else if (!cpu::MatmulSupports(t->dtype)) {
    return absl::InvalidArgumentError(
        fmt::format("{}: tensor '{}' has dtype {}, which the CUDA model cannot load", store.Source(), name,
                    DTypeName(t->dtype)));
  }
  const size_t out_row = m.cols * ElementBytes(to);
  if ((row_offset + m.rows) * out_row > dst.bytes()) {
    return absl::InternalError(fmt::format("tensor '{}': rows [{}, {}) past its device matrix", name, row_offset,
                                           row_offset + m.rows));
  }
  const int64_t chunk_rows = std::max<int64_t>(1, static_cast<int64_t>(kUploadChunkBytes / out_row));
  std::vector<float> f(m.full_cols);
  std::vector<std::byte> host(std::min(m.rows, chunk_rows) * out_row);
  for (int64_t r0 = 0; r0 < m.rows; r0 += chunk_rows) {
    const int64_t n = std::min(chunk_rows, m.rows - r0);
    for (int64_t r = 0; r < n; ++r) {
      const int64_t row = m.row_begin + r0 + r;
      // Whole rows: quantized blocks and FP8 scale blocks span columns of other shards.
      if (scales != nullptr) {
        const uint8_t* codes = reinterpret_cast<const uint8_t*>(t->row(row));
        const float* srow = scales + (row / cpu::kFp8BlockSize) * scale_stride;
        for (int64_t c = 0; c < m.full_cols; ++c) f[c] = cpu::E4M3ToFloat(codes[c]) * srow[c / cpu::kFp8BlockSize];
      } else {
        cpu::DequantizeRow(t->dtype, t->row(row), f.data(), m.full_cols);
      }
      ConvertFloats(f.data() + m.col_begin, m.cols, to, host.data() + r * out_row);
    }
    SHOAL_CUDA_CHECK(cudaMemcpy(dst.as<std::byte>() + (row_offset + r0) * out_row, host.data(), n * out_row,
                                cudaMemcpyHostToDevice));
  }
  return absl::OkStatus();
}

// Elements [begin, begin + n) of the 1-D parameter `name` of full_n (a norm weight, a
// bias or a rank's slice of one) as f32 at dst + offset.
absl::Status UploadVector(const WeightStore& store, const std::string& name, int64_t full_n, int64_t begin, int64_t n,
                          const DeviceBuffer& dst, int64_t offset) {
  ASSIGN_OR_RETURN(const TensorView* t, store.Get(name));
  if (t->shape.size() != 1 || t->shape[0] != full_n ||
      (t->dtype != DType::kF32 && t->dtype != DType::kF16 && t->dtype != DType::kBF16)) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor '{}' is {} of shape [{}], expected F32, F16 or BF16 [{}]",
                                                  store.Source(), name, DTypeName(t->dtype),
                                                  fmt::join(t->shape, ", "), full_n));
  }
  std::vector<float> f(full_n);
  cpu::DequantizeRow(t->dtype, t->data, f.data(), full_n);
  SHOAL_CUDA_CHECK(cudaMemcpy(dst.as<float>() + offset, f.data() + begin, n * sizeof(float), cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

absl::Status UploadVector(const WeightStore& store, const std::string& name, int64_t n, const DeviceBuffer& dst) {
  return UploadVector(store, name, n, 0, n, dst, 0);
}

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

class CudaStream {
 public:
  CudaStream() { SHOAL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~CudaStream() { cudaStreamDestroy(stream_); }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// The model's shard as llama.cc splits it (AttentionHeads): query heads, kv heads (or
// replicas), MLP features and the vocabulary of the embedding and LM head over the
// stage's tensor ranks; layers [first_layer, end_layer) of the pipeline.
class CudaLlamaModel final : public CudaLlama {
 public:
  // Must be constructed with options.cuda_device current (the stream and the cuBLAS handle
  // belong to it).
  CudaLlamaModel(const ModelConfig& config, const ShardSpec& shard, const AttentionHeads& heads,
                 const CausalLMOptions& options)
      : config_(config),
        shard_(shard),
        heads_(heads),
        device_(options.cuda_device),
        tp_(options.tensor_group),
        wdt_(options.device_weight_dtype),
        kv_dtype_(options.kv_cache_dtype),
        gemm_(stream_.get()),
        rope_(config.head_dim, config.rope_theta, config.rope_scaling,
              std::min<int64_t>(config.max_position_embeddings, 4096)) {
    q_width_ = heads.num_heads * config.head_dim;
    kv_width_ = heads.num_kv_heads * config.head_dim;
    qkv_width_ = q_width_ + 2 * kv_width_;
    inter_ = config.intermediate_size / shard.tp_size;
    vocab_rows_ = config.vocab_size / shard.tp_size;
    vocab_begin_ = vocab_rows_ * shard.tp_rank;
    num_layers_ = shard.end_layer - shard.first_layer;
  }
  ~CudaLlamaModel() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_.get());
  }

  // Device memory for every weight, unfilled.
  absl::Status AllocateWeights();
  absl::Status LoadWeights(const WeightStore& store);
  void FillRandomWeights(uint64_t seed);
  absl::Status UploadRope();

  const ModelConfig& config() const override { return config_; }
  const ShardSpec& shard() const override { return shard_; }
  size_t KvBytesPerBlock(int block_size) const override {
    return static_cast<size_t>(num_layers_) * 2 * block_size * kv_width_ * ElementBytes(kv_dtype_);
  }
  absl::Status AllocateKvCache(int64_t num_blocks, int block_size) override;
  absl::Status Forward(const ForwardBatch& batch, std::vector<float>* logits) override;
  absl::Status ForwardStage(const ForwardBatch& batch, std::span<const float> hidden_in,
                            std::vector<float>* out) override;
  absl::Status ForwardGreedy(const ForwardBatch& batch, std::vector<int32_t>* tokens) override;
  size_t WeightBytes() const override { return weight_bytes_; }
  size_t FreeDeviceBytes() const override {
    UseDevice();
    size_t free_bytes = 0, total = 0;
    cuda::DeviceMemory(&free_bytes, &total);
    return free_bytes;
  }

 private:
  bool first_stage() const { return shard_.first_layer == 0; }
  bool last_stage() const { return shard_.end_layer == config_.num_layers; }
  int tp_size() const { return shard_.tp_size; }
  // cudaSetDevice is per thread, and the engine steps on a thread of its own.
  void UseDevice() const { SHOAL_CUDA_CHECK(cudaSetDevice(device_)); }

  // Everything of a step up to where it leaves the GPU, enqueued on the stream: a stage
  // that is not the last ends with its hidden states in x_; the last with the logits of
  // its want_logits rows in logits_dev_ ([R, vocab_rows_] f32: this rank's vocabulary
  // slice). Returns R.
  absl::StatusOr<int64_t> RunStep(const ForwardBatch& batch, std::span<const float> hidden_in);
  // Copies the step's index arrays to the device in one transfer.
  absl::Status StageStep(int64_t max_blocks);
  absl::Status EnsureCapacity(int64_t num_tokens, int64_t num_logit_rows);
  absl::Status RunLayer(int64_t l, int64_t num_tokens);
  absl::Status Embed(int64_t num_tokens);
  // With tensor ranks: part_ [n] summed over the ranks, then added into x_.
  absl::Status AddReduced(int64_t n);
  // data [n] f32 in device memory = its sum over the tensor ranks, in stream order.
  absl::Status AllReduce(float* data, int64_t n);
  // The R rows of logits_dev_ as whole rows of the vocabulary in *logits (host).
  absl::Status CollectLogits(int64_t R, std::vector<float>* logits);
  // Pinned host memory of at least `bytes` (a host communicator's copies).
  float* HostScratch(size_t bytes);
  cuda::DeviceKvLayer KvLayer(int64_t l) const;
  const void* lm_head() const { return lm_head_.bytes() == 0 ? embed_.data() : lm_head_.data(); }

  ModelConfig config_;
  ShardSpec shard_;
  AttentionHeads heads_;
  int device_;
  Communicator* tp_;  // tensor ranks of this stage; null when tp_size == 1
  DType wdt_;         // weights and GEMM inputs: kBF16 or kF32
  DType kv_dtype_;    // kF16, kBF16 or kF32
  int64_t q_width_ = 0, kv_width_ = 0, qkv_width_ = 0, inter_ = 0;  // of this tensor rank
  int64_t vocab_rows_ = 0, vocab_begin_ = 0;  // this rank's slice of the vocabulary
  int64_t num_layers_ = 0;                    // of this pipeline stage
  CudaStream stream_;  // every kernel, GEMM and copy of the model, in order
  cuda::CublasGemm gemm_;

  DeviceBuffer embed_;  // [vocab_rows_, hidden] of wdt_: first stage, or tied LM head of a whole model
  std::vector<CudaLayer> layers_;  // this stage's
  DeviceBuffer final_norm_;  // f32 [hidden], last stage
  DeviceBuffer lm_head_;     // [vocab_rows_, hidden] of wdt_, last stage; empty when it is embed_
  size_t weight_bytes_ = 0;

  // The CPU RopeTable's cos/sin, [positions, head_dim / 2] f32 each: scaling rules (linear,
  // llama3) live in one place, and the GPU rotates by exactly the CPU's angles.
  cpu::RopeTable rope_;
  DeviceBuffer rope_cos_, rope_sin_;
  int64_t rope_uploaded_ = 0;

  // Paged KV cache of this stage's layers: one allocation, local layer l's K at (2l) *
  // layer_bytes, V at (2l+1) * layer_bytes, each [num_blocks, block_size, kv_heads,
  // head_dim] of kv_dtype_.
  DeviceBuffer kv_;
  int64_t num_blocks_ = 0;
  int block_size_ = 0;
  size_t kv_layer_bytes_ = 0;

  // Activations, grown to the largest step seen.
  int64_t token_capacity_ = 0, row_capacity_ = 0;
  DeviceBuffer x_;          // f32 [T, hidden]: the residual stream
  DeviceBuffer xn_;         // wdt_ [T, hidden]: normed, the next GEMM's input
  DeviceBuffer qkv_;        // f32 [T, qkv_width]: rope and attention read f32
  DeviceBuffer attn_;       // f32 [T, q_width]
  DeviceBuffer attn_in_;    // wdt_ [T, q_width]: attn_ cast for o_proj (unused with f32 weights)
  DeviceBuffer gate_up_;    // wdt_ [T, 2 intermediate]
  DeviceBuffer mlp_;        // wdt_ [T, intermediate]
  DeviceBuffer part_;       // f32 [T, hidden]: a row-parallel layer's partial sums (tensor ranks)
  DeviceBuffer hn_;         // wdt_ [R, hidden]: final norm of the want_logits rows
  DeviceBuffer logits_dev_; // f32 [R, vocab_rows_]
  DeviceBuffer gathered_dev_;  // f32 [tp, R, vocab_rows_] then [R, vocab]: a device communicator's gather
  DeviceBuffer greedy_dev_; // int32 [R]
  PinnedBuffer logits_host_, greedy_host_, host_scratch_;
  std::vector<float> local_logits_, gathered_;  // a host communicator's gather

  // The step's index arrays, staged in pinned memory and copied in one transfer:
  // tokens [T], row_seq [T], block tables [S, max_blocks], logit rows [R] (int32), then
  // positions [T] (int64).
  PinnedBuffer staging_;
  DeviceBuffer step_dev_;
  const int32_t* d_tokens_ = nullptr;
  const int32_t* d_row_seq_ = nullptr;
  const int32_t* d_tables_ = nullptr;
  const int32_t* d_logit_rows_ = nullptr;
  const int64_t* d_positions_ = nullptr;
  int64_t max_blocks_ = 0;
  StepRows step_;
};

absl::Status CudaLlamaModel::AllocateWeights() {
  const ModelConfig& c = config_;
  const size_t e = ElementBytes(wdt_);
  const int64_t hidden = c.hidden_size;
  auto alloc = [&](const std::string& what, size_t bytes, DeviceBuffer* out) -> absl::Status {
    RETURN_IF_ERROR(Allocate(what, bytes, out));
    weight_bytes_ += bytes;
    return absl::OkStatus();
  };
  if (first_stage()) RETURN_IF_ERROR(alloc("model.embed_tokens.weight", vocab_rows_ * hidden * e, &embed_));
  layers_.resize(num_layers_);
  for (int64_t l = 0; l < num_layers_; ++l) {
    const int64_t i = shard_.first_layer + l;
    CudaLayer& L = layers_[l];
    RETURN_IF_ERROR(alloc(LayerName(i, "input_layernorm.weight"), hidden * 4, &L.attn_norm));
    RETURN_IF_ERROR(alloc(LayerName(i, "self_attn.qkv"), qkv_width_ * hidden * e, &L.qkv));
    if (c.attention_bias) RETURN_IF_ERROR(alloc(LayerName(i, "self_attn.qkv.bias"), qkv_width_ * 4, &L.qkv_bias));
    RETURN_IF_ERROR(alloc(LayerName(i, "self_attn.o_proj.weight"), hidden * q_width_ * e, &L.o));
    RETURN_IF_ERROR(alloc(LayerName(i, "post_attention_layernorm.weight"), hidden * 4, &L.mlp_norm));
    RETURN_IF_ERROR(alloc(LayerName(i, "mlp.gate_up"), 2 * inter_ * hidden * e, &L.gate_up));
    RETURN_IF_ERROR(alloc(LayerName(i, "mlp.down_proj.weight"), hidden * inter_ * e, &L.down));
  }
  if (last_stage()) {
    RETURN_IF_ERROR(alloc("model.norm.weight", hidden * 4, &final_norm_));
    // Tied embeddings read the embedding table, or, on a stage without it, a copy of its slice.
    if (!(c.tie_word_embeddings && first_stage())) {
      RETURN_IF_ERROR(alloc("lm_head.weight", vocab_rows_ * hidden * e, &lm_head_));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::LoadWeights(const WeightStore& store) {
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size, inter = c.intermediate_size, hd = c.head_dim;
  const ShardOf tp = heads_.q, kv_tp = heads_.kv;
  const MatrixSlice vocab = MatrixSlice::Columns(c.vocab_size, hidden, tp);
  if (first_stage()) RETURN_IF_ERROR(UploadMatrix(store, "model.embed_tokens.weight", vocab, wdt_, embed_, 0));
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
  if (last_stage()) {
    RETURN_IF_ERROR(UploadVector(store, "model.norm.weight", hidden, final_norm_));
    if (lm_head_.bytes() > 0) {
      // Tied embeddings on a stage without the embedding: its own copy of the table's slice.
      const char* head = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
      RETURN_IF_ERROR(UploadMatrix(store, head, vocab, wdt_, lm_head_, 0));
    }
  }
  return absl::OkStatus();
}

void CudaLlamaModel::FillRandomWeights(uint64_t seed) {
  const ModelConfig& c = config_;
  cudaStream_t s = stream_.get();
  auto fill = [&](const DeviceBuffer& b, DType t, float bound) {
    if (b.bytes() == 0) return;
    cuda::FillUniform(s, t, b.data(), static_cast<int64_t>(b.bytes() / ElementBytes(t)), seed++, -bound, bound);
  };
  auto ones = [&](const DeviceBuffer& b) {
    if (b.bytes() == 0) return;
    cuda::FillUniform(s, DType::kF32, b.data(), static_cast<int64_t>(b.bytes() / 4), 0, 1.0f, 1.0f);
  };
  const float in_hidden = 1.0f / std::sqrt(static_cast<float>(c.hidden_size));
  fill(embed_, wdt_, 1.0f);
  for (CudaLayer& L : layers_) {
    ones(L.attn_norm);
    fill(L.qkv, wdt_, in_hidden);
    fill(L.qkv_bias, DType::kF32, 0.1f);
    fill(L.o, wdt_, 1.0f / std::sqrt(static_cast<float>(c.num_heads * c.head_dim)));
    ones(L.mlp_norm);
    fill(L.gate_up, wdt_, in_hidden);
    fill(L.down, wdt_, 1.0f / std::sqrt(static_cast<float>(c.intermediate_size)));
  }
  ones(final_norm_);
  fill(lm_head_, wdt_, in_hidden);
  SHOAL_CUDA_CHECK(cudaStreamSynchronize(s));
}

absl::Status CudaLlamaModel::UploadRope() {
  const int64_t n = rope_.num_positions() * (config_.head_dim / 2);
  RETURN_IF_ERROR(Allocate("rope cos table", n * sizeof(float), &rope_cos_));
  RETURN_IF_ERROR(Allocate("rope sin table", n * sizeof(float), &rope_sin_));
  // On the model's stream, ordered before the kernels that read them (rope_ keeps the host
  // tables alive and unchanged until the next Reserve, after a synchronized step).
  SHOAL_CUDA_CHECK(cudaMemcpyAsync(rope_cos_.data(), rope_.cos(0), n * sizeof(float), cudaMemcpyHostToDevice,
                                   stream_.get()));
  SHOAL_CUDA_CHECK(cudaMemcpyAsync(rope_sin_.data(), rope_.sin(0), n * sizeof(float), cudaMemcpyHostToDevice,
                                   stream_.get()));
  rope_uploaded_ = rope_.num_positions();
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::AllocateKvCache(int64_t num_blocks, int block_size) {
  if (num_blocks <= 0 || block_size <= 0) {
    return absl::InvalidArgumentError(fmt::format("KV cache of {} blocks of {} tokens: both must be positive",
                                                  num_blocks, block_size));
  }
  UseDevice();
  SHOAL_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
  kv_ = DeviceBuffer();  // the old cache's memory is free for the new one
  const size_t layer_bytes = static_cast<size_t>(num_blocks) * block_size * kv_width_ * ElementBytes(kv_dtype_);
  // Not zeroed: a slot is always written before any query reads it.
  RETURN_IF_ERROR(Allocate(fmt::format("KV cache of {} blocks of {} tokens", num_blocks, block_size),
                           2 * num_layers_ * layer_bytes, &kv_));
  kv_layer_bytes_ = layer_bytes;
  num_blocks_ = num_blocks;
  block_size_ = block_size;
  return absl::OkStatus();
}

cuda::DeviceKvLayer CudaLlamaModel::KvLayer(int64_t l) const {
  std::byte* base = kv_.as<std::byte>() + 2 * l * kv_layer_bytes_;
  return {base, base + kv_layer_bytes_, num_blocks_, block_size_, heads_.num_kv_heads, config_.head_dim, kv_dtype_};
}

absl::Status CudaLlamaModel::EnsureCapacity(int64_t T, int64_t R) {
  const ModelConfig& c = config_;
  const size_t e = ElementBytes(wdt_);
  if (T > token_capacity_) {
    // Freed first, so the new buffers may take their place.
    for (DeviceBuffer* b : {&x_, &xn_, &qkv_, &attn_, &attn_in_, &gate_up_, &mlp_, &part_}) *b = DeviceBuffer();
    const int64_t n = std::max<int64_t>(T, 2 * token_capacity_);
    token_capacity_ = 0;  // until every buffer is back: a failed allocation leaves none usable
    RETURN_IF_ERROR(Allocate("activations x", n * c.hidden_size * 4, &x_));
    RETURN_IF_ERROR(Allocate("activations xn", n * c.hidden_size * e, &xn_));
    RETURN_IF_ERROR(Allocate("activations qkv", n * qkv_width_ * 4, &qkv_));
    RETURN_IF_ERROR(Allocate("activations attn", n * q_width_ * 4, &attn_));
    if (wdt_ != DType::kF32) RETURN_IF_ERROR(Allocate("activations attn_in", n * q_width_ * e, &attn_in_));
    RETURN_IF_ERROR(Allocate("activations gate_up", n * 2 * inter_ * e, &gate_up_));
    RETURN_IF_ERROR(Allocate("activations mlp", n * inter_ * e, &mlp_));
    if (tp_size() > 1) RETURN_IF_ERROR(Allocate("activations part", n * c.hidden_size * 4, &part_));
    token_capacity_ = n;
  }
  if (R > row_capacity_ && last_stage()) {
    for (DeviceBuffer* b : {&hn_, &logits_dev_, &gathered_dev_, &greedy_dev_}) *b = DeviceBuffer();
    logits_host_ = PinnedBuffer();
    greedy_host_ = PinnedBuffer();
    const int64_t n = std::max<int64_t>(R, 2 * row_capacity_);
    row_capacity_ = 0;
    RETURN_IF_ERROR(Allocate("activations hn", n * c.hidden_size * e, &hn_));
    RETURN_IF_ERROR(Allocate("logits", n * vocab_rows_ * 4, &logits_dev_));
    if (tp_size() > 1 && tp_->device_memory()) {
      RETURN_IF_ERROR(Allocate("gathered logits", 2 * n * c.vocab_size * 4, &gathered_dev_));
    }
    RETURN_IF_ERROR(Allocate("greedy tokens", n * 4, &greedy_dev_));
    logits_host_ = PinnedBuffer(n * c.vocab_size * 4);
    greedy_host_ = PinnedBuffer(n * 4);
    row_capacity_ = n;
  }
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::StageStep(int64_t max_blocks) {
  const int64_t T = step_.num_tokens(), S = static_cast<int64_t>(step_.seqs.size());
  const int64_t R = static_cast<int64_t>(step_.logit_rows.size());
  auto aligned = [](size_t n) { return (n + 255) & ~size_t{255}; };
  const size_t tokens_at = 0;
  const size_t row_seq_at = tokens_at + aligned(T * 4);
  const size_t tables_at = row_seq_at + aligned(T * 4);
  const size_t logit_rows_at = tables_at + aligned(S * max_blocks * 4);
  const size_t positions_at = logit_rows_at + aligned(R * 4);
  const size_t total = positions_at + aligned(T * 8);
  if (total > staging_.bytes() || total > step_dev_.bytes()) {
    staging_ = PinnedBuffer();
    step_dev_ = DeviceBuffer();
    RETURN_IF_ERROR(Allocate("step index arrays", 2 * total, &step_dev_));
    staging_ = PinnedBuffer(2 * total);
  }
  std::byte* h = staging_.as<std::byte>();
  std::memcpy(h + tokens_at, step_.tokens.data(), T * 4);
  int32_t* row_seq = reinterpret_cast<int32_t*>(h + row_seq_at);
  int32_t* tables = reinterpret_cast<int32_t*>(h + tables_at);
  std::fill_n(tables, S * max_blocks, 0);  // entries past a sequence's positions are never read
  for (int64_t s = 0; s < S; ++s) {
    const cpu::AttentionSequence& q = step_.seqs[s];
    std::fill_n(row_seq + q.first_row, q.num_tokens, static_cast<int32_t>(s));
    const int64_t used = (q.start_pos + q.num_tokens + block_size_ - 1) / block_size_;
    std::copy_n(q.block_table.begin(), used, tables + s * max_blocks);
  }
  int32_t* logit_rows = reinterpret_cast<int32_t*>(h + logit_rows_at);
  for (int64_t r = 0; r < R; ++r) logit_rows[r] = static_cast<int32_t>(step_.logit_rows[r]);
  std::memcpy(h + positions_at, step_.positions.data(), T * 8);
  if (total > 0) SHOAL_CUDA_CHECK(cudaMemcpyAsync(step_dev_.data(), h, total, cudaMemcpyHostToDevice, stream_.get()));
  const std::byte* d = step_dev_.as<std::byte>();
  d_tokens_ = reinterpret_cast<const int32_t*>(d + tokens_at);
  d_row_seq_ = reinterpret_cast<const int32_t*>(d + row_seq_at);
  d_tables_ = reinterpret_cast<const int32_t*>(d + tables_at);
  d_logit_rows_ = reinterpret_cast<const int32_t*>(d + logit_rows_at);
  d_positions_ = reinterpret_cast<const int64_t*>(d + positions_at);
  max_blocks_ = max_blocks;
  return absl::OkStatus();
}

float* CudaLlamaModel::HostScratch(size_t bytes) {
  if (host_scratch_.bytes() < bytes) host_scratch_ = PinnedBuffer(std::max(bytes, 2 * host_scratch_.bytes()));
  return host_scratch_.as<float>();
}

absl::Status CudaLlamaModel::AllReduce(float* data, int64_t n) {
  cudaStream_t s = stream_.get();
  // The communicator's calls block until done, on their own stream (NCCL) or the host
  // (Gloo): what the model enqueued must have finished first.
  if (tp_->device_memory()) {
    SHOAL_CUDA_CHECK(cudaStreamSynchronize(s));
    return tp_->AllReduceSum(std::span<float>(data, n));
  }
  float* host = HostScratch(n * sizeof(float));
  SHOAL_CUDA_CHECK(cudaMemcpyAsync(host, data, n * sizeof(float), cudaMemcpyDeviceToHost, s));
  SHOAL_CUDA_CHECK(cudaStreamSynchronize(s));
  RETURN_IF_ERROR(tp_->AllReduceSum(std::span<float>(host, n)));
  // Read by the stream before any later use of the scratch, which first synchronizes it.
  SHOAL_CUDA_CHECK(cudaMemcpyAsync(data, host, n * sizeof(float), cudaMemcpyHostToDevice, s));
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::AddReduced(int64_t n) {
  RETURN_IF_ERROR(AllReduce(part_.as<float>(), n));
  cuda::AddInto(stream_.get(), part_.as<float>(), x_.as<float>(), n);
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::Embed(int64_t T) {
  float* x = x_.as<float>();
  cuda::EmbeddingLookup(stream_.get(), wdt_, embed_.data(), config_.hidden_size, d_tokens_, T, x, vocab_begin_,
                        vocab_rows_);
  // Each rank holds a slice of the vocabulary and zeroes the other tokens' rows: the sum
  // over the ranks is the whole embedding.
  if (tp_size() > 1) return AllReduce(x, T * config_.hidden_size);
  return absl::OkStatus();
}

// One decoder block over the step's T rows, as llama.cc's RunLayer: the GEMMs see every
// sequence's tokens as one matrix; only attention looks at sequences, through row_seq.
absl::Status CudaLlamaModel::RunLayer(int64_t l, int64_t T) {
  const CudaLayer& L = layers_[l];
  const ModelConfig& c = config_;
  cudaStream_t s = stream_.get();
  const int64_t hidden = c.hidden_size, hd = c.head_dim;
  const int64_t heads = heads_.num_heads, kv_heads = heads_.num_kv_heads;
  const float eps = static_cast<float>(c.rms_norm_eps);
  float* x = x_.as<float>();
  float* qkv = qkv_.as<float>();  // q: [T, heads, hd] at 0, k at q_width, v at q_width + kv_width (row stride qkv_width)
  // Row-parallel layers: alone, cuBLAS adds into the f32 residual stream (beta = 1); with
  // tensor ranks each writes its partial sum, and the all-reduced sum joins the residual.
  const bool alone = tp_size() == 1;
  float* row_out = alone ? x : part_.as<float>();

  cuda::RmsNormRows(s, x, nullptr, L.attn_norm.as<float>(), wdt_, xn_.data(), T, hidden, eps);
  gemm_.Run(wdt_, xn_.data(), L.qkv.data(), T, hidden, qkv_width_, DType::kF32, qkv, /*accumulate=*/false);
  if (c.attention_bias) cuda::AddBias(s, qkv, T, qkv_width_, L.qkv_bias.as<float>(), qkv_width_);
  cuda::ApplyRope(s, DType::kF32, qkv, T, qkv_width_, d_positions_, heads, hd, hd, rope_cos_.as<float>(),
                  rope_sin_.as<float>(), c.rope_interleaved);
  cuda::ApplyRope(s, DType::kF32, qkv + q_width_, T, qkv_width_, d_positions_, kv_heads, hd, hd,
                  rope_cos_.as<float>(), rope_sin_.as<float>(), c.rope_interleaved);

  // k, v → their cache slots; attention reads the new keys from the cache like the old.
  const cuda::DeviceKvLayer cache = KvLayer(l);
  const cuda::DeviceRows rows{d_row_seq_, d_positions_, d_tables_, max_blocks_, T};
  cuda::WriteKv(s, cache, rows, qkv + q_width_, qkv_width_, qkv + q_width_ + kv_width_, qkv_width_);
  cuda::PagedAttention(s, cache, rows, qkv, qkv_width_, heads, 1.0f / std::sqrt(static_cast<float>(hd)),
                       attn_.as<float>(), q_width_);

  // x += attn·Woᵀ
  const void* attn_in = attn_.data();
  if (wdt_ != DType::kF32) {
    cuda::Cast(s, DType::kF32, attn_.data(), wdt_, attn_in_.data(), T * q_width_);
    attn_in = attn_in_.data();
  }
  gemm_.Run(wdt_, attn_in, L.o.data(), T, q_width_, hidden, DType::kF32, row_out, /*accumulate=*/alone);
  if (!alone) RETURN_IF_ERROR(AddReduced(T * hidden));

  // x += (silu(xn·Wgateᵀ) * xn·Wupᵀ)·Wdownᵀ
  cuda::RmsNormRows(s, x, nullptr, L.mlp_norm.as<float>(), wdt_, xn_.data(), T, hidden, eps);
  gemm_.Run(wdt_, xn_.data(), L.gate_up.data(), T, hidden, 2 * inter_, wdt_, gate_up_.data(), /*accumulate=*/false);
  cuda::SiluMulRows(s, wdt_, gate_up_.data(), mlp_.data(), T, inter_);
  gemm_.Run(wdt_, mlp_.data(), L.down.data(), T, inter_, hidden, DType::kF32, row_out, /*accumulate=*/alone);
  if (!alone) RETURN_IF_ERROR(AddReduced(T * hidden));
  return absl::OkStatus();
}

absl::StatusOr<int64_t> CudaLlamaModel::RunStep(const ForwardBatch& batch, std::span<const float> hidden_in) {
  const ModelConfig& c = config_;
  UseDevice();
  RETURN_IF_ERROR(step_.Reset(batch, num_blocks_, block_size_, c.vocab_size));
  const int64_t T = step_.num_tokens(), R = static_cast<int64_t>(step_.logit_rows.size());
  if (!first_stage()) RETURN_IF_ERROR(CheckHiddenIn(shard_, hidden_in, T, c.hidden_size));
  if (step_.max_pos > rope_uploaded_) {
    rope_.Reserve(std::max(step_.max_pos, 2 * rope_.num_positions()));
    RETURN_IF_ERROR(UploadRope());
  }
  int64_t max_blocks = 1;
  for (const cpu::AttentionSequence& q : step_.seqs) {
    max_blocks = std::max<int64_t>(max_blocks, (q.start_pos + q.num_tokens + block_size_ - 1) / block_size_);
  }
  RETURN_IF_ERROR(EnsureCapacity(T, R));
  RETURN_IF_ERROR(StageStep(max_blocks));

  cudaStream_t s = stream_.get();
  if (first_stage()) {
    RETURN_IF_ERROR(Embed(T));
  } else if (T > 0) {
    // Pageable memory: the copy is synchronous with the host, so hidden_in may go away.
    SHOAL_CUDA_CHECK(cudaMemcpyAsync(x_.data(), hidden_in.data(), hidden_in.size_bytes(), cudaMemcpyHostToDevice, s));
  }
  for (int64_t l = 0; l < num_layers_; ++l) RETURN_IF_ERROR(RunLayer(l, T));
  if (!last_stage()) return int64_t{0};
  // Final norm and vocabulary projection only for the rows the caller samples from.
  cuda::RmsNormRows(s, x_.as<float>(), d_logit_rows_, final_norm_.as<float>(), wdt_, hn_.data(), R, c.hidden_size,
                    static_cast<float>(c.rms_norm_eps));
  gemm_.Run(wdt_, hn_.data(), lm_head(), R, c.hidden_size, vocab_rows_, DType::kF32, logits_dev_.data(), false);
  return R;
}

absl::Status CudaLlamaModel::CollectLogits(int64_t R, std::vector<float>* logits) {
  cudaStream_t s = stream_.get();
  const int64_t vocab = config_.vocab_size;
  const size_t bytes = R * vocab * sizeof(float);
  if (tp_size() == 1 || R == 0) {
    if (R > 0) SHOAL_CUDA_CHECK(cudaMemcpyAsync(logits_host_.data(), logits_dev_.data(), bytes, cudaMemcpyDeviceToHost, s));
    // Always: the next step rewrites the pinned staging this one's copies read.
    SHOAL_CUDA_CHECK(cudaStreamSynchronize(s));
    logits->resize(R * vocab);
    if (R > 0) std::memcpy(logits->data(), logits_host_.data(), bytes);
    return absl::OkStatus();
  }
  const int64_t local = R * vocab_rows_;
  if (!tp_->device_memory()) {
    local_logits_.resize(local);
    SHOAL_CUDA_CHECK(cudaMemcpyAsync(logits_host_.data(), logits_dev_.data(), local * sizeof(float),
                                     cudaMemcpyDeviceToHost, s));
    SHOAL_CUDA_CHECK(cudaStreamSynchronize(s));
    std::memcpy(local_logits_.data(), logits_host_.data(), local * sizeof(float));
    return GatherVocabSlices(*tp_, local_logits_, R, &gathered_, logits);
  }
  // gathered [rank][row][vocab_rows_] → whole rows [row][vocab] after it, one strided copy
  // per rank.
  float* gathered = gathered_dev_.as<float>();
  float* rows = gathered + static_cast<int64_t>(tp_size()) * local;
  SHOAL_CUDA_CHECK(cudaStreamSynchronize(s));
  RETURN_IF_ERROR(tp_->AllGather(std::span<const float>(logits_dev_.as<float>(), local),
                                 std::span<float>(gathered, tp_size() * local)));
  for (int r = 0; r < tp_size(); ++r) {
    SHOAL_CUDA_CHECK(cudaMemcpy2DAsync(rows + r * vocab_rows_, vocab * sizeof(float), gathered + r * local,
                                       vocab_rows_ * sizeof(float), vocab_rows_ * sizeof(float), R,
                                       cudaMemcpyDeviceToDevice, s));
  }
  SHOAL_CUDA_CHECK(cudaMemcpyAsync(logits_host_.data(), rows, bytes, cudaMemcpyDeviceToHost, s));
  SHOAL_CUDA_CHECK(cudaStreamSynchronize(s));
  logits->resize(R * vocab);
  std::memcpy(logits->data(), logits_host_.data(), bytes);
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::Forward(const ForwardBatch& batch, std::vector<float>* logits) {
  if (!first_stage() || !last_stage()) return WholeModelOnly(shard_, config_.num_layers);
  return ForwardStage(batch, {}, logits);
}

absl::Status CudaLlamaModel::ForwardStage(const ForwardBatch& batch, std::span<const float> hidden_in,
                                          std::vector<float>* out) {
  ASSIGN_OR_RETURN(const int64_t R, RunStep(batch, hidden_in));
  if (last_stage()) return CollectLogits(R, out);
  const int64_t n = step_.num_tokens() * config_.hidden_size;
  out->resize(n);
  // Pageable destination: synchronous with the host once it returns.
  if (n > 0) SHOAL_CUDA_CHECK(cudaMemcpyAsync(out->data(), x_.data(), n * sizeof(float), cudaMemcpyDeviceToHost,
                                              stream_.get()));
  SHOAL_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::ForwardGreedy(const ForwardBatch& batch, std::vector<int32_t>* tokens) {
  if (!first_stage() || !last_stage()) return WholeModelOnly(shard_, config_.num_layers);
  if (tp_size() > 1) {
    // Whole rows exist only after the gather; the argmax is then a host scan.
    std::vector<float> logits;
    RETURN_IF_ERROR(Forward(batch, &logits));
    const int64_t vocab = config_.vocab_size, R = static_cast<int64_t>(logits.size()) / vocab;
    tokens->resize(R);
    for (int64_t r = 0; r < R; ++r) {
      const float* row = &logits[r * vocab];
      (*tokens)[r] = static_cast<int32_t>(std::max_element(row, row + vocab) - row);
    }
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(const int64_t R, RunStep(batch, {}));
  if (R > 0) {
    cuda::ArgmaxRows(stream_.get(), logits_dev_.as<float>(), R, config_.vocab_size, greedy_dev_.as<int32_t>());
    SHOAL_CUDA_CHECK(cudaMemcpyAsync(greedy_host_.data(), greedy_dev_.data(), R * 4, cudaMemcpyDeviceToHost,
                                     stream_.get()));
  }
  SHOAL_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
  tokens->assign(greedy_host_.as<int32_t>(), greedy_host_.as<int32_t>() + R);
  return absl::OkStatus();
}

// The checks shared by both factories; fills in shard->end_layer and *heads, and makes
// options.cuda_device current.
absl::Status CheckCudaArgs(const ModelConfig& c, const std::string& source, ShardSpec* shard,
                           const CausalLMOptions& options, AttentionHeads* heads) {
  std::string why_not;
  const int devices = cuda::CudaDeviceCount(&why_not);
  if (devices == 0 || !cuda::LoadCublas(&why_not)) return absl::FailedPreconditionError(why_not);
  if (options.cuda_device < 0 || options.cuda_device >= devices) {
    return absl::InvalidArgumentError(
        fmt::format("{}: CUDA device {} does not exist ({} visible)", source, options.cuda_device, devices));
  }
  if (c.arch != Arch::kLlama && c.arch != Arch::kQwen2) {
    return absl::UnimplementedError(
        fmt::format("{}: architecture '{}' has no CUDA implementation (llama and qwen2 do)", source, c.arch_name));
  }
  if (c.hidden_size <= 0 || c.intermediate_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 ||
      c.num_kv_heads <= 0 || c.head_dim <= 0 || c.vocab_size <= 0) {
    return absl::InvalidArgumentError(fmt::format("{}: config has non-positive sizes (hidden {}, intermediate {}, layers {}, heads {}, kv heads {}, head_dim {}, vocab {})",
                                                  source, c.hidden_size, c.intermediate_size, c.num_layers,
                                                  c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size));
  }
  if (shard->end_layer < 0) shard->end_layer = c.num_layers;
  if (shard->first_layer < 0 || shard->first_layer >= shard->end_layer || shard->end_layer > c.num_layers) {
    return absl::InvalidArgumentError(fmt::format("{}: layers [{}, {}) are not a range of the model's {}", source,
                                                  shard->first_layer, shard->end_layer, c.num_layers));
  }
  if (shard->tp_size < 1 || shard->tp_rank < 0 || shard->tp_rank >= shard->tp_size) {
    return absl::InvalidArgumentError(
        fmt::format("{}: tensor rank {} of {} is out of range", source, shard->tp_rank, shard->tp_size));
  }
  ASSIGN_OR_RETURN(*heads, AttentionHeads::Of(c, *shard, source));
  if (shard->tp_size > 1 && (options.tensor_group == nullptr || options.tensor_group->size() != shard->tp_size)) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor rank {} of {} needs a tensor group communicator of {} ranks",
                                                  source, shard->tp_rank, shard->tp_size, shard->tp_size));
  }
  if (options.device_weight_dtype != DType::kBF16 && options.device_weight_dtype != DType::kF32) {
    return absl::InvalidArgumentError(fmt::format("{}: device weight dtype {}: the CUDA model keeps weights in BF16 or F32",
                                                  source, DTypeName(options.device_weight_dtype)));
  }
  if (options.kv_cache_dtype != DType::kF16 && options.kv_cache_dtype != DType::kBF16 &&
      options.kv_cache_dtype != DType::kF32) {
    return absl::InvalidArgumentError(fmt::format("{}: KV cache dtype {}: the CUDA model keeps its KV cache in F16, BF16 or F32",
                                                  source, DTypeName(options.kv_cache_dtype)));
  }
  if (c.intermediate_size % shard->tp_size != 0) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor parallel size {} does not divide the {} MLP features",
                                                  source, shard->tp_size, c.intermediate_size));
  }
  if (c.head_dim > cuda::kMaxHeadDim) {
    return absl::InvalidArgumentError(
        fmt::format("{}: head_dim {} is above the CUDA attention's {}", source, c.head_dim, cuda::kMaxHeadDim));
  }
  SHOAL_CUDA_CHECK(cudaSetDevice(options.cuda_device));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaLlama>> CreateCudaLlama(const LoadedModel& model, const ShardSpec& shard_in,
                                                           const CausalLMOptions& options) {
  ShardSpec shard = shard_in;
  AttentionHeads heads;
  RETURN_IF_ERROR(CheckCudaArgs(model.config, model.path, &shard, options, &heads));
  if (model.weights == nullptr) return absl::InvalidArgumentError(fmt::format("{}: no weights loaded", model.path));
  auto m = std::make_unique<CudaLlamaModel>(model.config, shard, heads, options);
  RETURN_IF_ERROR(m->AllocateWeights());
  RETURN_IF_ERROR(m->LoadWeights(*model.weights));
  RETURN_IF_ERROR(m->UploadRope());
  // cudaMemcpy from pageable memory may return before its DMA lands, on the legacy stream
  // the model's own stream does not wait for.
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  return std::unique_ptr<CudaLlama>(std::move(m));
}

absl::StatusOr<std::unique_ptr<CudaLlama>> CreateRandomCudaLlama(const ModelConfig& config,
                                                                 const CausalLMOptions& options, uint64_t seed) {
  ShardSpec shard;
  AttentionHeads heads;
  RETURN_IF_ERROR(CheckCudaArgs(config, "random weights", &shard, options, &heads));
  auto m = std::make_unique<CudaLlamaModel>(config, shard, heads, options);
  RETURN_IF_ERROR(m->AllocateWeights());
  m->FillRandomWeights(seed);
  RETURN_IF_ERROR(m->UploadRope());
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  return std::unique_ptr<CudaLlama>(std::move(m));
}

}  // namespace shoal::worker
