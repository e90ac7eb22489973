#include "worker/models/cuda/cuda_decoder.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "worker/common/status_macros.h"
#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/fp8.h"
#include "worker/kernels/cuda/grouped_gemv.h"
#include "worker/kernels/cuda/ops.h"
#include "worker/kernels/cuda/sampling.h"
#include "worker/models/cuda/device_weights.h"
#include "worker/models/step_plan.h"
#include "worker/models/linear.h"
#include "worker/parallel/communicator.h"

namespace shoal::worker {

using cuda::DeviceBuffer;
using cuda::PinnedBuffer;

CudaStream::CudaStream() { SHOAL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
CudaStream::~CudaStream() { cudaStreamDestroy(stream_); }

absl::Status CheckCudaShard(const ModelConfig& c, const std::string& source, ShardSpec* shard,
                            const CausalLMOptions& options) {
  std::string why_not;
  const int devices = cuda::CudaDeviceCount(&why_not);
  if (devices == 0 || !cuda::LoadCublas(&why_not)) return absl::FailedPreconditionError(why_not);
  if (options.cuda_device < 0 || options.cuda_device >= devices) {
    return absl::InvalidArgumentError(
        fmt::format("{}: CUDA device {} does not exist ({} visible)", source, options.cuda_device, devices));
  }
  if (c.hidden_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 || c.vocab_size <= 0) {
    return absl::InvalidArgumentError(fmt::format("{}: config has non-positive sizes (hidden {}, layers {}, heads {}, vocab {})",
                                                  source, c.hidden_size, c.num_layers, c.num_heads, c.vocab_size));
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
  if (options.device_weight_dtype != DType::kBF16 && options.device_weight_dtype != DType::kF32 &&
      !(options.device_weight_dtype == DType::kF8E4M3 && IsDeepseek(c.arch))) {
    return absl::InvalidArgumentError(fmt::format(
        "{}: device weight dtype {}: the CUDA model keeps weights in BF16 or F32 (or, for DeepSeek, F8_E4M3: "
        "FP8 checkpoint matrices stay FP8)",
        source, DTypeName(options.device_weight_dtype)));
  }
  if (options.kv_cache_dtype != DType::kF16 && options.kv_cache_dtype != DType::kBF16 &&
      options.kv_cache_dtype != DType::kF32) {
    return absl::InvalidArgumentError(fmt::format("{}: KV cache dtype {}: the CUDA model keeps its KV cache in F16, BF16 or F32",
                                                  source, DTypeName(options.kv_cache_dtype)));
  }
  if (const cudaError_t e = cudaSetDevice(options.cuda_device); e != cudaSuccess) {
    cudaGetLastError();
    return absl::FailedPreconditionError(fmt::format("{}: CUDA device {} cannot be used: {}", source,
                                                     options.cuda_device, cudaGetErrorString(e)));
  }
  return absl::OkStatus();
}

absl::Status CheckTensorSplit(const ModelConfig& c, const std::string& source, const ShardSpec& shard,
                              const CausalLMOptions& options) {
  if (c.vocab_size % shard.tp_size != 0) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor parallel size {} does not divide the vocabulary of {}",
                                                  source, shard.tp_size, c.vocab_size));
  }
  if (shard.tp_size > 1 && (options.tensor_group == nullptr || options.tensor_group->size() != shard.tp_size)) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor rank {} of {} needs a tensor group communicator of {} ranks",
                                                  source, shard.tp_rank, shard.tp_size, shard.tp_size));
  }
  return absl::OkStatus();
}

CudaDecoder::CudaDecoder(const ModelConfig& config, const ShardSpec& shard, const CausalLMOptions& options)
    : config_(config),
      shard_(shard),
      device_(options.cuda_device),
      tp_(options.tensor_group),
      wdt_(options.device_weight_dtype == DType::kF8E4M3 ? DType::kBF16 : options.device_weight_dtype),
      keep_fp8_(options.device_weight_dtype == DType::kF8E4M3),
      kv_dtype_(options.kv_cache_dtype),
      num_layers_(shard.end_layer - shard.first_layer),
      gemm_(stream_.get()) {
  vocab_rows_ = config.vocab_size / shard.tp_size;
  vocab_begin_ = vocab_rows_ * shard.tp_rank;
  graphs_requested_ = options.cuda_graphs;
  fp8_tensor_cores_requested_ = options.fp8_gemm == CausalLMOptions::Fp8Gemm::kTensorCores;
  small_steps_gemv_ = options.small_step_matmul == CausalLMOptions::SmallStepMatmul::kGemv;
}

void CudaDecoder::SetUpGraphs() {
  if (!graphs_requested_ || !StepsCapturable() || !first_stage() || !last_stage()) return;
  // A workspace of its own, so cuBLAS allocates nothing inside a capture.
  constexpr size_t kWorkspaceBytes = 32u << 20;
  graphs_enabled_ = DeviceBuffer::TryAllocate(kWorkspaceBytes, &cublas_workspace_) &&
                    gemm_.SetWorkspace(cublas_workspace_.data(), kWorkspaceBytes);
  if (!graphs_enabled_) {
    cublas_workspace_ = DeviceBuffer();
    spdlog::warn("CUDA graphs off for this model: no cuBLAS workspace");
  }
}

CudaDecoder::~CudaDecoder() {
  Quiesce();
  for (auto& [key, g] : graphs_) cudaGraphExecDestroy(g.exec);
}

void CudaDecoder::Quiesce() const noexcept {
  cudaSetDevice(device_);
  cudaStreamSynchronize(stream_.get());
}

void CudaDecoder::UseDevice() const { SHOAL_CUDA_CHECK(cudaSetDevice(device_)); }

size_t CudaDecoder::FreeDeviceBytes() const {
  UseDevice();
  size_t free_bytes = 0, total = 0;
  cuda::DeviceMemory(&free_bytes, &total);
  return free_bytes;
}

absl::Status CudaDecoder::AllocateWeight(const std::string& what, size_t bytes, DeviceBuffer* out) {
  RETURN_IF_ERROR(Allocate(what, bytes, out));
  weight_bytes_ += bytes;
  return absl::OkStatus();
}

absl::Status CudaDecoder::AllocateWeights(const WeightStore* store) {
  const size_t e = ElementBytes(wdt_);
  const int64_t hidden = config_.hidden_size;
  if (first_stage()) RETURN_IF_ERROR(AllocateWeight("model.embed_tokens.weight", vocab_rows_ * hidden * e, &embed_));
  RETURN_IF_ERROR(AllocateLayerWeights(store));
  if (last_stage()) {
    RETURN_IF_ERROR(AllocateWeight("model.norm.weight", hidden * 4, &final_norm_));
    // Tied embeddings read the embedding table, or, on a stage without it, a copy of its slice.
    if (!(config_.tie_word_embeddings && first_stage())) {
      RETURN_IF_ERROR(AllocateWeight("lm_head.weight", vocab_rows_ * hidden * e, &lm_head_));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaDecoder::LoadWeights(const WeightStore& store) {
  const int64_t hidden = config_.hidden_size;
  const MatrixSlice vocab =
      MatrixSlice::Columns(config_.vocab_size, hidden, ShardOf{shard_.tp_rank, shard_.tp_size});
  if (first_stage()) RETURN_IF_ERROR(UploadMatrix(store, "model.embed_tokens.weight", vocab, wdt_, embed_, 0));
  RETURN_IF_ERROR(LoadLayerWeights(store));
  if (last_stage()) {
    RETURN_IF_ERROR(UploadVector(store, "model.norm.weight", hidden, final_norm_));
    if (lm_head_.bytes() > 0) {
      // Tied embeddings on a stage without the embedding: its own copy of the table's slice.
      const char* head = config_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
      RETURN_IF_ERROR(UploadMatrix(store, head, vocab, wdt_, lm_head_, 0));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaDecoder::Load(const WeightStore& store) {
  RETURN_IF_ERROR(AllocateWeights(&store));
  RETURN_IF_ERROR(LoadWeights(store));
  RETURN_IF_ERROR(ReserveFp8Scratch());
  RETURN_IF_ERROR(GrowRope(std::min<int64_t>(config_.max_position_embeddings, 4096)));
  SetUpGraphs();
  // cudaMemcpy from pageable memory may return before its DMA lands, on the legacy stream
  // the model's own stream does not wait for.
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  return absl::OkStatus();
}

absl::Status CudaDecoder::InitRandom(uint64_t seed) {
  RETURN_IF_ERROR(AllocateWeights(nullptr));
  RETURN_IF_ERROR(ReserveFp8Scratch());
  fill_seed_ = seed;
  FillUniform(embed_, wdt_, 1.0f);
  FillRandomLayerWeights();
  FillOnes(final_norm_);
  FillUniform(lm_head_, wdt_, 1.0f / std::sqrt(static_cast<float>(config_.hidden_size)));
  RETURN_IF_ERROR(GrowRope(std::min<int64_t>(config_.max_position_embeddings, 4096)));
  SetUpGraphs();
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  return absl::OkStatus();
}

void CudaDecoder::FillUniform(const DeviceBuffer& b, DType t, float bound) {
  if (b.bytes() == 0) return;
  cuda::FillUniform(stream_.get(), t, b.data(), static_cast<int64_t>(b.bytes() / ElementBytes(t)), fill_seed_++,
                    -bound, bound);
}

void CudaDecoder::FillUniform(const DeviceMatrix& m, float bound) {
  if (m.dtype != DType::kF8E4M3) return FillUniform(m.data, m.dtype, bound);
  cuda::Fp8FillUniform(stream_.get(), m.data.as<uint8_t>(), m.scales.as<float>(), m.rows, m.cols, fill_seed_++, bound);
}

void CudaDecoder::FillOnes(const DeviceBuffer& b) {
  if (b.bytes() == 0) return;
  cuda::FillUniform(stream_.get(), DType::kF32, b.data(), static_cast<int64_t>(b.bytes() / 4), 0, 1.0f, 1.0f);
}

absl::Status CudaDecoder::AllocateWeightMatrix(const WeightStore* store, const std::vector<std::string>& names,
                                               const MatrixSlice& slice, int64_t rows, DeviceMatrix* out,
                                               int64_t gemm_rows) {
  bool fp8 = keep_fp8_;
  for (const std::string& name : names) fp8 = fp8 && KeepsFp8(store, name, slice);
  RETURN_IF_ERROR(AllocateMatrix(names.front(), rows, slice.cols, fp8 ? DType::kF8E4M3 : wdt_, out));
  weight_bytes_ += out->bytes();
  if (fp8) {
    const int64_t view = gemm_rows > 0 ? gemm_rows : rows;
    largest_fp8_matrix_ = std::max(largest_fp8_matrix_, static_cast<size_t>(view * slice.cols));
  }
  return absl::OkStatus();
}

absl::Status CudaDecoder::ReserveFp8Scratch() {
  if (largest_fp8_matrix_ > 0 && fp8_tensor_cores_requested_ && fp8_gemm_ == nullptr) {
    fp8_tensor_cores_requested_ = false;  // probe once
    std::string why_not;
    fp8_gemm_ = cuda::Fp8BlockGemm::Create(stream_.get(), &gemm_, &why_not);
    if (fp8_gemm_ == nullptr) {
      spdlog::warn("FP8 GEMMs widen the weights to {} (no FP8 tensor-core GEMM: {})", DTypeName(wdt_), why_not);
    } else {
      spdlog::info("FP8 GEMMs on tensor cores, activations quantized per row and 128 columns ({})",
                   fp8_gemm_->layouts().Describe());
    }
  }
  // With tensor cores only shapes off their tiles widen: that scratch grows when one comes.
  if (fp8_gemm_ != nullptr) return absl::OkStatus();
  const size_t bytes = largest_fp8_matrix_ * ElementBytes(wdt_);
  if (bytes <= fp8_scratch_.bytes()) return absl::OkStatus();
  fp8_scratch_ = DeviceBuffer();
  BuffersMoved();
  return Allocate("FP8 matrix widened for a GEMM", bytes, &fp8_scratch_);
}

absl::Status CudaDecoder::GrowScratch(const char* what, size_t bytes, DeviceBuffer* b) {
  if (bytes <= b->bytes()) return absl::OkStatus();
  if (capturing_) return absl::FailedPreconditionError(fmt::format("the {} scratch would grow inside a CUDA graph capture", what));
  SHOAL_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));  // enqueued work may still read the old one
  *b = DeviceBuffer();
  BuffersMoved();
  return Allocate(what, bytes, b);
}

absl::Status CudaDecoder::Gemm(const MatrixView& w, const void* x, int64_t T, DType y_type, void* y,
                               bool accumulate) {
  if (w.dtype != DType::kF8E4M3) {
    DenseGemm(w.data, w.cols, w.rows, x, T, y_type, y, accumulate);
    return absl::OkStatus();
  }
  const cuda::Fp8Matrix m{static_cast<const uint8_t*>(w.data), w.scales, w.rows, w.cols};
  if (GemmUsesGemv(w, T)) {
    cuda::Fp8Gemv(stream_.get(), m, wdt_, x, T, y_type, y, accumulate);
    return absl::OkStatus();
  }
  if (fp8_gemm_ != nullptr && fp8_gemm_->Supports(T, w.rows, w.cols, y_type, accumulate)) {
    RETURN_IF_ERROR(GrowScratch("FP8 GEMM activations", fp8_gemm_->ScratchBytes(T, w.rows, w.cols),
                                &fp8_gemm_scratch_));
    fp8_gemm_->Run(m, wdt_, x, T, y_type, y, accumulate, fp8_gemm_scratch_.data());
    ++fp8_tensor_core_gemms_;
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(GrowScratch("FP8 matrix widened for a GEMM",
                              static_cast<size_t>(w.rows) * w.cols * ElementBytes(wdt_), &fp8_scratch_));
  cuda::Fp8Dequantize(stream_.get(), m, wdt_, fp8_scratch_.data());
  gemm_.Run(wdt_, x, fp8_scratch_.data(), T, w.cols, w.rows, y_type, y, accumulate);
  return absl::OkStatus();
}

absl::Status CudaDecoder::GateUpSiluMul(const MatrixView& w, const void* x, int64_t T, void* gate_up, void* mlp) {
  if (GemmUsesGemv(w, T)) {
    const bool fp8 = w.dtype == DType::kF8E4M3;
    const cuda::StackedMatrices m{w.data, w.scales, fp8 ? DType::kF8E4M3 : wdt_, w.rows, w.cols, w.rows};
    cuda::Gemv(stream_.get(), m, T, wdt_, x, wdt_, mlp, /*accumulate=*/false, cuda::GemvOutput::kSiluGateTimesUp);
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(Gemm(w, x, T, wdt_, gate_up, false));
  cuda::SiluMulRows(stream_.get(), wdt_, gate_up, mlp, T, w.rows / 2);
  return absl::OkStatus();
}

bool CudaDecoder::DenseGemmUsesGemv(int64_t T) const { return small_steps_gemv_ && T <= cuda::kGemvMaxRows; }

bool CudaDecoder::GemmUsesGemv(const MatrixView& w, int64_t T) const {
  return w.dtype == DType::kF8E4M3 ? T <= cuda::kFp8GemvMaxRows : DenseGemmUsesGemv(T);
}

void CudaDecoder::DenseGemmF32Input(const void* w, int64_t in, int64_t out, const float* x, int64_t T, DType y_type,
                                    void* y, bool accumulate) {
  if (!DenseGemmUsesGemv(T)) {
    cuda::DieOnCudaError("DenseGemmF32Input", "a step too long for the GEMV kernel", __FILE__, __LINE__);
  }
  cuda::Gemv(stream_.get(), cuda::StackedMatrices{w, nullptr, wdt_, out, in, out}, T, DType::kF32, x, y_type, y,
             accumulate);
}

void CudaDecoder::DenseGemm(const void* w, int64_t in, int64_t out, const void* x, int64_t T, DType y_type, void* y,
                            bool accumulate) {
  if (DenseGemmUsesGemv(T)) {
    cuda::Gemv(stream_.get(), cuda::StackedMatrices{w, nullptr, wdt_, out, in, out}, T, wdt_, x, y_type, y,
               accumulate);
    return;
  }
  gemm_.Run(wdt_, x, w, T, in, out, y_type, y, accumulate);
}

absl::Status CudaDecoder::UploadRope(const float* cos, const float* sin, int64_t positions, int64_t half) {
  const size_t bytes = positions * half * sizeof(float);
  UseDevice();
  // The old tables may still be read by enqueued kernels.
  SHOAL_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
  rope_cos_ = DeviceBuffer();
  rope_sin_ = DeviceBuffer();
  rope_positions_ = 0;
  RETURN_IF_ERROR(Allocate("rope cos table", bytes, &rope_cos_));
  RETURN_IF_ERROR(Allocate("rope sin table", bytes, &rope_sin_));
  // On the model's stream, ordered before the kernels that read them; the caller's host
  // tables stay alive and unchanged until the next GrowRope, after a synchronized step.
  SHOAL_CUDA_CHECK(cudaMemcpyAsync(rope_cos_.data(), cos, bytes, cudaMemcpyHostToDevice, stream_.get()));
  SHOAL_CUDA_CHECK(cudaMemcpyAsync(rope_sin_.data(), sin, bytes, cudaMemcpyHostToDevice, stream_.get()));
  rope_positions_ = positions;
  BuffersMoved();
  return absl::OkStatus();
}

absl::StatusOr<cuda::AttentionSplit> CudaDecoder::AttentionSplitFor(int64_t T, int64_t num_heads, int64_t v_dim) {
  const int splits = cuda::AttentionSplits(T, num_heads, attention_kv_heads_, step_.max_pos);
  const size_t bytes = cuda::AttentionPartialFloats(T, num_heads, splits, v_dim) * sizeof(float);
  if (bytes > attn_partials_.bytes()) {
    if (capturing_) return absl::FailedPreconditionError("the split-K scratch would grow inside a CUDA graph capture");
    // Enqueued kernels may still read the old scratch.
    SHOAL_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    attn_partials_ = DeviceBuffer();
    BuffersMoved();
    RETURN_IF_ERROR(Allocate("attention split scratch", 2 * bytes, &attn_partials_));
  }
  return cuda::AttentionSplit{splits, splits > 1 ? attn_partials_.as<float>() : nullptr};
}

absl::Status CudaDecoder::AllocateKvCache(int64_t num_blocks, int block_size) {
  if (num_blocks <= 0 || block_size <= 0) {
    return absl::InvalidArgumentError(fmt::format("KV cache of {} blocks of {} tokens: both must be positive",
                                                  num_blocks, block_size));
  }
  UseDevice();
  SHOAL_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
  kv_ = DeviceBuffer();  // the old cache's memory is free for the new one
  num_blocks_ = 0;
  const size_t layer_bytes = static_cast<size_t>(num_blocks) * block_size * KvBytesPerToken();
  // Not zeroed: a slot is always written before any query reads it.
  RETURN_IF_ERROR(Allocate(fmt::format("KV cache of {} blocks of {} tokens", num_blocks, block_size),
                           num_layers_ * layer_bytes, &kv_));
  kv_layer_bytes_ = layer_bytes;
  num_blocks_ = num_blocks;
  block_size_ = block_size;
  BuffersMoved();
  return absl::OkStatus();
}

absl::Status CudaDecoder::EnsureCapacity(int64_t T, int64_t R) {
  const ModelConfig& c = config_;
  const size_t e = ElementBytes(wdt_);
  if (T > token_capacity_) {
    BuffersMoved();
    // Freed first, so the new buffers may take their place.
    for (DeviceBuffer* b : {&x_, &xn_, &part_}) *b = DeviceBuffer();
    const int64_t n = std::max<int64_t>(T, 2 * token_capacity_);
    token_capacity_ = 0;  // until every buffer is back: a failed allocation leaves none usable
    RETURN_IF_ERROR(Allocate("activations x", n * c.hidden_size * 4, &x_));
    RETURN_IF_ERROR(Allocate("activations xn", n * c.hidden_size * e, &xn_));
    if (tp_size() > 1) RETURN_IF_ERROR(Allocate("activations part", n * c.hidden_size * 4, &part_));
    RETURN_IF_ERROR(AllocateLayerActivations(n));
    token_capacity_ = n;
  }
  if (R > row_capacity_ && last_stage()) {
    BuffersMoved();
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

absl::Status CudaDecoder::StageStep(int64_t max_blocks) {
  const int64_t T = step_.num_tokens(), S = static_cast<int64_t>(step_.seqs.size());
  const int64_t R = static_cast<int64_t>(step_.logit_rows.size());
  // Prompt chunks of MinTiledRows() or more rows go to the tiled attention kernel; the
  // other rows (decode) to the per-row one, through a list of their rows when any were tiled.
  PlanQueryTiles(step_.seqs, MinTiledRows(), &tiles_, &untiled_);
  max_tile_rows_ = 0;
  for (const cuda::QueryTile& t : tiles_) max_tile_rows_ = std::max<int64_t>(max_tile_rows_, t.num_rows);
  const int64_t num_tiles = static_cast<int64_t>(tiles_.size()), num_untiled = static_cast<int64_t>(untiled_.size());
  auto aligned = [](size_t n) { return (n + 255) & ~size_t{255}; };
  const size_t tokens_at = 0;
  const size_t row_seq_at = tokens_at + aligned(T * 4);
  const size_t tables_at = row_seq_at + aligned(T * 4);
  const size_t logit_rows_at = tables_at + aligned(S * max_blocks * 4);
  const size_t positions_at = logit_rows_at + aligned(R * 4);
  const size_t tiles_at = positions_at + aligned(T * 8);
  const size_t untiled_at = tiles_at + aligned(num_tiles * sizeof(cuda::QueryTile));
  const size_t total = untiled_at + aligned(num_untiled * 4);
  max_blocks_ = max_blocks;
  if (total == 0) return absl::OkStatus();  // an empty step: nothing to copy (and maybe no buffers yet)
  if (total > staging_.bytes() || total > step_dev_.bytes()) {
    BuffersMoved();
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
  if (num_tiles > 0) std::memcpy(h + tiles_at, tiles_.data(), num_tiles * sizeof(cuda::QueryTile));
  if (num_untiled > 0) std::memcpy(h + untiled_at, untiled_.data(), num_untiled * 4);
  SHOAL_CUDA_CHECK(cudaMemcpyAsync(step_dev_.data(), h, total, cudaMemcpyHostToDevice, stream_.get()));
  const std::byte* d = step_dev_.as<std::byte>();
  d_tokens_ = reinterpret_cast<const int32_t*>(d + tokens_at);
  d_row_seq_ = reinterpret_cast<const int32_t*>(d + row_seq_at);
  d_tables_ = reinterpret_cast<const int32_t*>(d + tables_at);
  d_logit_rows_ = reinterpret_cast<const int32_t*>(d + logit_rows_at);
  d_positions_ = reinterpret_cast<const int64_t*>(d + positions_at);
  d_tiles_ = reinterpret_cast<const cuda::QueryTile*>(d + tiles_at);
  d_untiled_ = reinterpret_cast<const int32_t*>(d + untiled_at);
  return absl::OkStatus();
}

cuda::DeviceRows CudaDecoder::untiled_rows(int64_t T) const {
  cuda::DeviceRows r = rows(T);
  if (!tiles_.empty()) {
    r.num_rows = static_cast<int64_t>(untiled_.size());
    r.row_ids = d_untiled_;
  }
  return r;
}

float* CudaDecoder::HostScratch(size_t bytes) {
  if (host_scratch_.bytes() < bytes) host_scratch_ = PinnedBuffer(std::max(bytes, 2 * host_scratch_.bytes()));
  return host_scratch_.as<float>();
}

absl::Status CudaDecoder::AllReduce(float* data, int64_t n) {
  if (n == 0) return absl::OkStatus();  // the same on every rank of the step
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

absl::Status CudaDecoder::AddReduced(int64_t n) {
  RETURN_IF_ERROR(AllReduce(part_.as<float>(), n));
  cuda::AddInto(stream_.get(), part_.as<float>(), x_.as<float>(), n);
  return absl::OkStatus();
}

absl::Status CudaDecoder::Embed(int64_t T) {
  float* x = x_.as<float>();
  cuda::EmbeddingLookup(stream_.get(), wdt_, embed_.data(), config_.hidden_size, d_tokens_, T, x, vocab_begin_,
                        vocab_rows_);
  // Each rank holds a slice of the vocabulary and zeroes the other tokens' rows: the sum
  // over the ranks is the whole embedding.
  if (tp_size() > 1) return AllReduce(x, T * config_.hidden_size);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> CudaDecoder::RunStep(const ForwardBatch& batch, std::span<const float> hidden_in) {
  const ModelConfig& c = config_;
  UseDevice();
  RETURN_IF_ERROR(step_.Reset(batch, num_blocks_, block_size_, c.vocab_size));
  const int64_t T = step_.num_tokens(), R = static_cast<int64_t>(step_.logit_rows.size());
  if (!first_stage()) RETURN_IF_ERROR(CheckHiddenIn(shard_, hidden_in, T, c.hidden_size));
  if (step_.max_pos > rope_positions_) RETURN_IF_ERROR(GrowRope(std::max(step_.max_pos, 2 * rope_positions_)));
  int64_t max_blocks = 1;
  for (const cpu::AttentionSequence& q : step_.seqs) {
    max_blocks = std::max<int64_t>(max_blocks, (q.start_pos + q.num_tokens + block_size_ - 1) / block_size_);
  }
  // With graphs, block tables are laid out a power of two wide, so a shape's graph serves
  // the next block_size * that positions rather than one block's worth.
  if (graphs_enabled_) max_blocks = int64_t{1} << static_cast<int>(std::ceil(std::log2(static_cast<double>(max_blocks))));
  RETURN_IF_ERROR(EnsureCapacity(T, R));
  RETURN_IF_ERROR(StageStep(max_blocks));
  // Decode steps of a whole model (every row a sequence's next token) may go through a graph:
  // no tiles, or tiles of one row each (then T of them, so the launches are T's).
  if (graphs_enabled_ && T > 0 && R == T && max_tile_rows_ <= 1 && StepCapturable(T)) {
    ASSIGN_OR_RETURN(const bool done, RunStepThroughGraph(T, R));
    if (done) return R;
  }
  RETURN_IF_ERROR(EnqueueStep(T, R, hidden_in));
  return last_stage() ? R : int64_t{0};
}

absl::Status CudaDecoder::EnqueueStep(int64_t T, int64_t R, std::span<const float> hidden_in) {
  const ModelConfig& c = config_;
  cudaStream_t s = stream_.get();
  if (first_stage()) {
    RETURN_IF_ERROR(Embed(T));
  } else if (T > 0) {
    // Pageable memory: the copy is synchronous with the host, so hidden_in may go away.
    SHOAL_CUDA_CHECK(cudaMemcpyAsync(x_.data(), hidden_in.data(), hidden_in.size_bytes(), cudaMemcpyHostToDevice, s));
  }
  for (int64_t l = 0; l < num_layers_; ++l) RETURN_IF_ERROR(RunLayer(l, T));
  if (!last_stage()) return absl::OkStatus();
  // Final norm and vocabulary projection only for the rows the caller samples from.
  cuda::RmsNormRows(s, x_.as<float>(), d_logit_rows_, final_norm_.as<float>(), wdt_, hn_.data(), R, c.hidden_size,
                    static_cast<float>(c.rms_norm_eps));
  DenseGemm(lm_head(), c.hidden_size, vocab_rows_, hn_.data(), R, DType::kF32, logits_dev_.data(), false);
  return absl::OkStatus();
}

absl::StatusOr<bool> CudaDecoder::RunStepThroughGraph(int64_t T, int64_t R) {
  cudaStream_t s = stream_.get();
  const int splits = cuda::AttentionSplits(T, attention_heads_, attention_kv_heads_, step_.max_pos);
  const auto key = std::make_tuple(T, max_blocks_, splits);
  auto it = graphs_.find(key);
  if (it != graphs_.end() && it->second.epoch == buffers_epoch_) {
    const cudaError_t e = cudaGraphLaunch(it->second.exec, s);
    if (e == cudaSuccess) {
      ++graph_launches_;
      return true;
    }
    cudaGetLastError();  // the launch's error, so the eager rerun's launch checks do not see it
    DisableGraphs(std::string("cudaGraphLaunch: ") + cudaGetErrorString(e));
    return false;  // nothing was enqueued: the caller runs the step
  }
  // Run the step as usual; when that moved no buffer, capture the same work for the next
  // step of this shape (capturing records the launches without running them).
  const uint64_t epoch = buffers_epoch_;
  RETURN_IF_ERROR(EnqueueStep(T, R, {}));
  if (buffers_epoch_ != epoch) return true;
  if (cudaError_t e = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal); e != cudaSuccess) {
    cudaGetLastError();
    DisableGraphs(std::string("cudaStreamBeginCapture: ") + cudaGetErrorString(e));
    return true;
  }
  capturing_ = true;
  const absl::Status enqueued = EnqueueStep(T, R, {});
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(s, &graph);
  cudaGraphExec_t exec = nullptr;
  cudaError_t made = cudaErrorUnknown;
  if (enqueued.ok() && ended == cudaSuccess) made = cudaGraphInstantiate(&exec, graph, 0);
  if (graph != nullptr) cudaGraphDestroy(graph);
  if (made != cudaSuccess) {
    cudaGetLastError();  // leave no capture error behind for the next launch check
    DisableGraphs(!enqueued.ok() ? enqueued.ToString()
                  : ended != cudaSuccess ? std::string("cudaStreamEndCapture: ") + cudaGetErrorString(ended)
                                         : std::string("cudaGraphInstantiate failed"));
    return true;  // the eager run above did the step
  }
  graphs_[key] = {exec, epoch};
  return true;
}

void CudaDecoder::BuffersMoved() {
  ++buffers_epoch_;
  if (graphs_.empty()) return;
  // Stale from now on: free them (once no launch of one can still be running).
  SHOAL_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
  for (auto& [key, g] : graphs_) cudaGraphExecDestroy(g.exec);
  graphs_.clear();
}

void CudaDecoder::DisableGraphs(const std::string& why) {
  if (!graphs_enabled_) return;
  graphs_enabled_ = false;
  cudaStreamSynchronize(stream_.get());  // no launch of a graph still running (errors: already reported)
  cudaGetLastError();
  for (auto& [key, g] : graphs_) cudaGraphExecDestroy(g.exec);
  graphs_.clear();
  spdlog::warn("CUDA graphs off for this model: {}", why);
}

absl::Status CudaDecoder::CollectLogits(int64_t R, std::vector<float>* logits) {
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

absl::Status CudaDecoder::Forward(const ForwardBatch& batch, std::vector<float>* logits) {
  if (!first_stage() || !last_stage()) return WholeModelOnly(shard_, config_.num_layers);
  return ForwardStage(batch, {}, logits);
}

absl::Status CudaDecoder::ForwardStage(const ForwardBatch& batch, std::span<const float> hidden_in,
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

absl::Status CudaDecoder::ForwardGreedy(const ForwardBatch& batch, std::vector<int32_t>* tokens) {
  if (!first_stage() || !last_stage()) return WholeModelOnly(shard_, config_.num_layers);
  if (tp_size() > 1) {
    // Whole rows exist only after the gather; the argmax is then a host scan.
    std::vector<float> logits;
    RETURN_IF_ERROR(Forward(batch, &logits));
    const int64_t vocab = config_.vocab_size, R = static_cast<int64_t>(logits.size()) / vocab;
    tokens->resize(R);
    for (int64_t r = 0; r < R; ++r) {
      const float* row = &logits[r * vocab];
      // As ArgmaxRows: the lowest index of the largest value, never a NaN.
      int64_t best = -1;
      for (int64_t i = 0; i < vocab; ++i) {
        if (!std::isnan(row[i]) && (best < 0 || row[i] > row[best])) best = i;
      }
      (*tokens)[r] = static_cast<int32_t>(std::max<int64_t>(best, 0));
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


absl::Status CudaDecoder::ForwardSample(const ForwardBatch& batch, std::span<const RowSampling> rows,
                                        std::vector<int32_t>* tokens) {
  if (!SamplesOnDevice()) return CudaCausalLM::ForwardSample(batch, rows, tokens);
  int64_t wanted = 0;
  for (const SequenceChunk& c : batch.seqs) wanted += c.want_logits ? 1 : 0;
  if (static_cast<int64_t>(rows.size()) != wanted) {
    return absl::InvalidArgumentError(
        fmt::format("{} sampling rows for {} sequences that want a token", rows.size(), wanted));
  }
  std::vector<cuda::SamplingRow>& params = sampling_params_;  // members: their capacity stays
  std::vector<cuda::PenaltyToken>& penalties = sampling_penalties_;
  PlanSampling(rows, &params, &penalties);
  ASSIGN_OR_RETURN(const int64_t R, RunStep(batch, {}));
  const size_t rows_bytes = params.size() * sizeof(cuda::SamplingRow);
  const size_t penalties_at = (rows_bytes + 255) & ~size_t{255};
  const size_t total = penalties_at + penalties.size() * sizeof(cuda::PenaltyToken);
  if (total > sampling_host_.bytes() || total > sampling_dev_.bytes()) {
    sampling_host_ = PinnedBuffer();
    sampling_dev_ = DeviceBuffer();
    RETURN_IF_ERROR(Allocate("sampling parameters", 2 * total, &sampling_dev_));
    sampling_host_ = PinnedBuffer(2 * total);
  }
  cudaStream_t s = stream_.get();
  if (R > 0) {
    std::byte* h = sampling_host_.as<std::byte>();
    std::memcpy(h, params.data(), rows_bytes);
    if (!penalties.empty()) std::memcpy(h + penalties_at, penalties.data(), total - penalties_at);
    SHOAL_CUDA_CHECK(cudaMemcpyAsync(sampling_dev_.data(), h, total, cudaMemcpyHostToDevice, s));
    const std::byte* d = sampling_dev_.as<std::byte>();
    cuda::SampleRows(s, logits_dev_.as<float>(), R, config_.vocab_size,
                     reinterpret_cast<const cuda::SamplingRow*>(d),
                     reinterpret_cast<const cuda::PenaltyToken*>(d + penalties_at), greedy_dev_.as<int32_t>());
    SHOAL_CUDA_CHECK(cudaMemcpyAsync(greedy_host_.data(), greedy_dev_.data(), R * 4, cudaMemcpyDeviceToHost, s));
  }
  // Always: the next step rewrites the pinned staging this one's copies read.
  SHOAL_CUDA_CHECK(cudaStreamSynchronize(s));
  tokens->assign(greedy_host_.as<int32_t>(), greedy_host_.as<int32_t>() + R);
  return absl::OkStatus();
}

}  // namespace shoal::worker
