#pragma once
// What every CUDA decoder does around its layers, whatever its attention or MLP (the GPU
// counterpart of decoder_step.h): one stream, one cuBLAS handle, the step's index arrays
// copied to the device in one transfer, the vocabulary-parallel embedding and LM head,
// all-reduces of a tensor rank's partial sums, the paged cache's one allocation, and
// Forward / ForwardStage / ForwardGreedy. cuda_llama.cc and cuda_deepseek.cc supply the
// layers through the virtual hooks below.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <tuple>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/kernels/cuda/attention.h"
#include "worker/kernels/cuda/device.h"
#include "worker/kernels/cuda/fp8_gemm.h"
#include "worker/kernels/cuda/gemm.h"
#include "worker/kernels/cuda/sampling.h"
#include "worker/model/model_config.h"
#include "worker/model/weight_store.h"
#include "worker/models/cuda/cuda_causal_lm.h"
#include "worker/models/cuda/device_weights.h"
#include "worker/models/decoder_step.h"

namespace shoal::worker {

class Communicator;

class CudaStream {
 public:
  CudaStream();
  ~CudaStream();
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// The checks every CUDA factory makes before building a model: a usable GPU and cuBLAS
// (FAILED_PRECONDITION), the device index, positive sizes, a layer range of the model
// (end_layer < 0 filled in), a tensor rank in range, and weight and cache dtypes the
// kernels take (INVALID_ARGUMENT, naming `source`). Makes options.cuda_device current.
absl::Status CheckCudaShard(const ModelConfig& c, const std::string& source, ShardSpec* shard,
                            const CausalLMOptions& options);
// After an architecture's own split checks (so a split that cannot work is named before
// a missing communicator): the vocabulary divisible by the tensor ranks, and a tensor
// group of tp_size ranks when there are several.
absl::Status CheckTensorSplit(const ModelConfig& c, const std::string& source, const ShardSpec& shard,
                              const CausalLMOptions& options);

class CudaDecoder : public CudaCausalLM {
 public:
  // Must be constructed with options.cuda_device current (the stream and the cuBLAS handle
  // belong to it).
  CudaDecoder(const ModelConfig& config, const ShardSpec& shard, const CausalLMOptions& options);
  ~CudaDecoder() override;

  // Every weight from `store`, or drawn uniform in ±1/sqrt(fan-in) (norms 1) from `seed`
  // for benchmarks; then the rope tables. Synchronizes the device before returning.
  absl::Status Load(const WeightStore& store);
  absl::Status InitRandom(uint64_t seed);
  // (InitRandom draws every weight from seed, seed + 1, ...)

  const ModelConfig& config() const override { return config_; }
  const ShardSpec& shard() const override { return shard_; }
  size_t KvBytesPerBlock(int block_size) const override {
    return static_cast<size_t>(num_layers_) * block_size * KvBytesPerToken();
  }
  absl::Status AllocateKvCache(int64_t num_blocks, int block_size) override;
  absl::Status Forward(const ForwardBatch& batch, std::vector<float>* logits) override;
  absl::Status ForwardStage(const ForwardBatch& batch, std::span<const float> hidden_in,
                            std::vector<float>* out) override;
  absl::Status ForwardGreedy(const ForwardBatch& batch, std::vector<int32_t>* tokens) override;
  // A whole model on one GPU: its rank's logits are whole rows there.
  bool SamplesOnDevice() const override { return tp_size() == 1 && first_stage() && last_stage(); }
  absl::Status ForwardSample(const ForwardBatch& batch, std::span<const RowSampling> rows,
                             std::vector<int32_t>* tokens) override;
  size_t WeightBytes() const override { return weight_bytes_; }
  size_t FreeDeviceBytes() const override;
  int64_t graph_launches() const override { return graph_launches_; }
  int64_t fp8_tensor_core_gemms() const override { return fp8_tensor_core_gemms_; }

 protected:
  // --- what an architecture supplies ---
  // Device memory for its layers' weights (through AllocateWeight), unfilled. `store` is
  // the checkpoint the weights will come from (which matrices are FP8), null for random.
  virtual absl::Status AllocateLayerWeights(const WeightStore* store) = 0;
  virtual absl::Status LoadLayerWeights(const WeightStore& store) = 0;
  // Random weights of the layers' shapes, through FillUniform / FillOnes.
  virtual void FillRandomLayerWeights() = 0;
  // Cache bytes per token of one layer (every layer the same).
  virtual size_t KvBytesPerToken() const = 0;
  // The rope tables cover at least `positions` positions (through UploadRope).
  virtual absl::Status GrowRope(int64_t positions) = 0;
  // The layers' own activations for `tokens` rows (the base keeps x_, xn_ and part_).
  virtual absl::Status AllocateLayerActivations(int64_t tokens) = 0;
  // Local layer l over the step's T rows: x_ += its attention and its MLP.
  virtual absl::Status RunLayer(int64_t l, int64_t num_tokens) = 0;
  // Whether a step's layers enqueue device work only (no host synchronization, no
  // collective), so it can be captured into a CUDA graph.
  virtual bool StepsCapturable() const { return false; }
  // A sequence with this many new rows or more attends through tiles (tiles(), else the
  // per-row kernel): kMinTiledRows unless a model's tiled kernel also wins for decode rows.
  virtual int64_t MinTiledRows() const { return kMinTiledRows; }
  // And whether a step of this many rows is (DeepSeek: only when it routes on the device).
  virtual bool StepCapturable(int64_t num_tokens) const { return true; }

  // --- what the base offers them ---
  absl::Status AllocateWeight(const std::string& what, size_t bytes, cuda::DeviceBuffer* out);
  // A weight matrix of the device weight type, or FP8 when the options keep FP8
  // (device_weight_dtype kF8E4M3) and KeepsFp8 says the checkpoint's slice can stay so.
  absl::Status AllocateWeightMatrix(const WeightStore* store, const std::string& name, const MatrixSlice& slice,
                                    int64_t rows, DeviceMatrix* out) {
    return AllocateWeightMatrix(store, std::vector<std::string>{name}, slice, rows, out);
  }
  // The same for a matrix stacking several tensors (each sliced alike): FP8 only when all are.
  // gemm_rows: the most rows one GEMM reads (an expert's, of a stack of experts); 0 = all.
  absl::Status AllocateWeightMatrix(const WeightStore* store, const std::vector<std::string>& names,
                                    const MatrixSlice& slice, int64_t rows, DeviceMatrix* out,
                                    int64_t gemm_rows = 0);
  // Makes sure the FP8 widening scratch fits every FP8 matrix allocated so far (called
  // once the weights are in, so a long step never allocates it after the KV cache).
  absl::Status ReserveFp8Scratch();
  // y[T, w.rows] = x[T, w.cols] · Wᵀ (+ y), x of the weight type: cuBLAS, or for an FP8
  // matrix Fp8Gemv on a few rows and on more the FP8 tensor-core GEMM (options.fp8_gemm
  // kTensorCores, where the probe found one) or cuBLAS over the matrix widened into a
  // scratch.
  absl::Status Gemm(const MatrixView& w, const void* x, int64_t num_tokens, DType y_type, void* y, bool accumulate);
  // y[T, out] = x[T, in] · Wᵀ (+ y) for a dense matrix w [out, in] of wdt_, x of wdt_:
  // steps of at most cuda::kGemvMaxRows rows through cuda::Gemv (unless
  // options.small_step_matmul is kCublas), longer ones through cuBLAS.
  void DenseGemm(const void* w, int64_t in, int64_t out, const void* x, int64_t num_tokens, DType y_type, void* y,
                 bool accumulate);
  // True when DenseGemm takes a step of num_tokens rows through the GEMV kernel, which
  // reads f32 input as well as wdt_ (DenseGemmF32Input), so the caller need not cast.
  bool DenseGemmUsesGemv(int64_t num_tokens) const;
  // True when Gemm multiplies w over num_tokens rows with the GEMV kernel (FP8: Fp8Gemv's
  // rows; dense: DenseGemmUsesGemv).
  bool GemmUsesGemv(const MatrixView& w, int64_t num_tokens) const;
  // DenseGemm of f32 input x, for a step where DenseGemmUsesGemv.
  void DenseGemmF32Input(const void* w, int64_t in, int64_t out, const float* x, int64_t num_tokens, DType y_type,
                         void* y, bool accumulate);
  // mlp[T, w.rows / 2] = silu(x · W_gateᵀ) * (x · W_upᵀ), w a SwiGLU's gate rows then its
  // up rows, x and mlp of wdt_: on the steps Gemm takes through a GEMV, one launch with
  // the SiLU in its epilogue (cuda::GemvOutput::kSiluGateTimesUp); on longer ones Gemm
  // into gate_up [T, w.rows], then SiluMulRows.
  absl::Status GateUpSiluMul(const MatrixView& w, const void* x, int64_t num_tokens, void* gate_up, void* mlp);
  // Random weights: uniform in ±bound (each call its own seed), or 1 (norms).
  void FillUniform(const cuda::DeviceBuffer& b, DType t, float bound);
  void FillUniform(const DeviceMatrix& m, float bound);
  void FillOnes(const cuda::DeviceBuffer& b);
  // cos/sin [positions, half] f32 of the model's rope table onto the device, on the stream.
  absl::Status UploadRope(const float* cos, const float* sin, int64_t positions, int64_t half);
  // Local layer l's share of the cache: kv_layer_bytes_ bytes at kv_layer(l).
  std::byte* kv_layer(int64_t l) const { return kv_.as<std::byte>() + l * kv_layer_bytes_; }
  // With tensor ranks: part_ [n] summed over the ranks, then added into x_.
  absl::Status AddReduced(int64_t n);
  // data [n] f32 in device memory = its sum over the tensor ranks, in stream order.
  absl::Status AllReduce(float* data, int64_t n);
  // Where a row-parallel GEMM writes: x_ itself (accumulating) alone, part_ with ranks.
  float* row_out() const { return alone() ? x_.as<float>() : part_.as<float>(); }
  bool alone() const { return shard_.tp_size == 1; }
  cuda::DeviceRows rows(int64_t num_tokens) const {
    return {d_row_seq_, d_positions_, d_tables_, max_blocks_, num_tokens};
  }
  cudaStream_t stream() const { return stream_.get(); }
  // The step's prompt chunks as tiles for cuda::PagedAttentionTiled, and the rows left
  // for the per-row kernel (all of them when nothing was tiled).
  const cuda::QueryTile* tiles() const { return d_tiles_; }
  int64_t num_tiles() const { return static_cast<int64_t>(tiles_.size()); }
  int64_t max_tile_rows() const { return max_tile_rows_; }
  cuda::DeviceRows untiled_rows(int64_t num_tokens) const;
  // A buffer a captured step reads was reallocated: the captured graphs are stale (and
  // freed). Never called inside a capture: growth there fails with a Status instead.
  void BuffersMoved();
  // The split-K plan of this step's attention over num_heads heads (of attention_kv_heads_
  // KV heads) of v_dim outputs (cuda::AttentionSplits over the step's longest row), its
  // scratch grown as needed.
  absl::StatusOr<cuda::AttentionSplit> AttentionSplitFor(int64_t num_tokens, int64_t num_heads, int64_t v_dim);
  const int64_t* d_positions() const { return d_positions_; }
  // cudaSetDevice is per thread, and the engine steps on a thread of its own.
  void UseDevice() const;
  // Waits for the stream, ignoring errors: a derived destructor calls it first, so no
  // enqueued kernel reads a buffer being freed.
  void Quiesce() const noexcept;
  bool first_stage() const { return shard_.first_layer == 0; }
  bool last_stage() const { return shard_.end_layer == config_.num_layers; }
  int tp_size() const { return shard_.tp_size; }

  ModelConfig config_;
  ShardSpec shard_;
  int device_;
  Communicator* tp_;  // tensor ranks of this stage; null when tp_size == 1
  DType wdt_;         // weights and GEMM inputs: kBF16 or kF32
  bool keep_fp8_;     // FP8 checkpoint matrices stay FP8 (device_weight_dtype kF8E4M3; wdt_ is then bf16)
  DType kv_dtype_;    // kF16, kBF16 or kF32
  int64_t num_layers_ = 0;  // of this pipeline stage
  int64_t attention_heads_ = 0;     // query heads of this rank, set by the architecture (graph keys)
  int64_t attention_kv_heads_ = 1;  // their KV heads (MLA: 1, the latent cache), likewise
  int64_t num_blocks_ = 0;
  int block_size_ = 0;
  CudaStream stream_;  // every kernel, GEMM and copy of the model, in order (before gemm_, which uses it)
  cuda::CublasGemm gemm_;
  cuda::DeviceBuffer x_;     // f32 [T, hidden]: the residual stream
  cuda::DeviceBuffer xn_;    // wdt_ [T, hidden]: normed, the next GEMM's input
  cuda::DeviceBuffer part_;  // f32 [T, hidden]: a row-parallel layer's partial sums (tensor ranks)
  cuda::DeviceBuffer rope_cos_, rope_sin_;
  int64_t rope_positions_ = 0;

 private:
  absl::Status AllocateWeights(const WeightStore* store);
  absl::Status LoadWeights(const WeightStore& store);
  // Everything of a step up to where it leaves the GPU, enqueued on the stream: a stage
  // that is not the last ends with its hidden states in x_; the last with the logits of
  // its want_logits rows in logits_dev_ ([R, vocab_rows_] f32: this rank's vocabulary
  // slice). Returns R.
  absl::StatusOr<int64_t> RunStep(const ForwardBatch& batch, std::span<const float> hidden_in);
  // The device work of a staged step: embedding (or hidden_in), layers, final norm and head.
  absl::Status EnqueueStep(int64_t num_tokens, int64_t num_logit_rows, std::span<const float> hidden_in);
  // A decode step through a CUDA graph: replays the one captured for this shape, or runs
  // the step and captures it for next time. False when graphs are off (after a failure).
  // Errors of the step itself come back as a Status; a graph problem turns graphs off.
  // Kernel launch checks inside a capture still end the process (cuda_check.h), as they
  // do outside one; a step's first run is eager, so a capture only records launches that
  // just succeeded.
  absl::StatusOr<bool> RunStepThroughGraph(int64_t num_tokens, int64_t num_logit_rows);
  void DisableGraphs(const std::string& why);
  // Graphs for a model that can capture them (StepsCapturable, a whole model), once built.
  void SetUpGraphs();
  absl::Status StageStep(int64_t max_blocks);
  absl::Status EnsureCapacity(int64_t num_tokens, int64_t num_logit_rows);
  absl::Status Embed(int64_t num_tokens);
  // The R rows of logits_dev_ as whole rows of the vocabulary in *logits (host).
  absl::Status CollectLogits(int64_t R, std::vector<float>* logits);
  // *b holds at least `bytes` (grown after the stream drains; never inside a capture).
  absl::Status GrowScratch(const char* what, size_t bytes, cuda::DeviceBuffer* b);
  // Pinned host memory of at least `bytes` (a host communicator's copies).
  float* HostScratch(size_t bytes);
  const void* lm_head() const { return lm_head_.bytes() == 0 ? embed_.data() : lm_head_.data(); }

  int64_t vocab_rows_ = 0, vocab_begin_ = 0;  // this rank's slice of the vocabulary
  cuda::DeviceBuffer embed_;  // [vocab_rows_, hidden] of wdt_: first stage, or tied LM head of a whole model
  cuda::DeviceBuffer final_norm_;  // f32 [hidden], last stage
  cuda::DeviceBuffer lm_head_;     // [vocab_rows_, hidden] of wdt_, last stage; empty when it is embed_
  size_t weight_bytes_ = 0;

  cuda::DeviceBuffer attn_partials_;  // split-K scratch (AttentionSplitFor)
  cuda::DeviceBuffer fp8_scratch_;    // an FP8 matrix widened for cuBLAS (Gemm)
  bool fp8_tensor_cores_requested_ = false;        // CausalLMOptions.fp8_gemm
  bool small_steps_gemv_ = true;                   // CausalLMOptions.small_step_matmul kGemv
  std::unique_ptr<cuda::Fp8BlockGemm> fp8_gemm_;  // set by ReserveFp8Scratch when the probe passes
  cuda::DeviceBuffer fp8_gemm_scratch_;           // its quantized activations and scale tables
  int64_t fp8_tensor_core_gemms_ = 0;
  // CUDA graphs of decode steps, by (rows, block-table stride, attention splits), each
  // valid while buffers_epoch_ is the one it was captured at.
  struct CapturedStep {
    cudaGraphExec_t exec = nullptr;
    uint64_t epoch = 0;
  };
  bool graphs_requested_ = false;  // CausalLMOptions.cuda_graphs
  bool graphs_enabled_ = false;
  bool capturing_ = false;
  std::map<std::tuple<int64_t, int64_t, int>, CapturedStep> graphs_;
  uint64_t buffers_epoch_ = 0;
  int64_t graph_launches_ = 0;
  cuda::DeviceBuffer cublas_workspace_;
  uint64_t fill_seed_ = 0;
  size_t largest_fp8_matrix_ = 0;  // elements of the largest FP8 matrix one GEMM reads
  cuda::DeviceBuffer kv_;  // the stage's layers' caches, kv_layer_bytes_ each
  size_t kv_layer_bytes_ = 0;

  int64_t token_capacity_ = 0, row_capacity_ = 0;
  cuda::DeviceBuffer hn_;            // wdt_ [R, hidden]: final norm of the want_logits rows
  cuda::DeviceBuffer logits_dev_;    // f32 [R, vocab_rows_]
  cuda::DeviceBuffer gathered_dev_;  // f32 [tp, R, vocab_rows_] then [R, vocab]: a device communicator's gather
  cuda::DeviceBuffer greedy_dev_;    // int32 [R]
  cuda::PinnedBuffer logits_host_, greedy_host_, host_scratch_;
  // ForwardSample's rows and penalty tokens, staged and copied in one transfer.
  cuda::PinnedBuffer sampling_host_;
  cuda::DeviceBuffer sampling_dev_;
  std::vector<cuda::SamplingRow> sampling_params_;
  std::vector<cuda::PenaltyToken> sampling_penalties_;
  std::vector<float> local_logits_, gathered_;  // a host communicator's gather

  // The step's index arrays, staged in pinned memory and copied in one transfer:
  // tokens [T], row_seq [T], block tables [S, max_blocks], logit rows [R] (int32),
  // positions [T] (int64), the query tiles and the untiled rows (int32).
  cuda::PinnedBuffer staging_;
  cuda::DeviceBuffer step_dev_;
  const int32_t* d_tokens_ = nullptr;
  const int32_t* d_row_seq_ = nullptr;
  const int32_t* d_tables_ = nullptr;
  const int32_t* d_logit_rows_ = nullptr;
  const int64_t* d_positions_ = nullptr;
  const cuda::QueryTile* d_tiles_ = nullptr;
  const int32_t* d_untiled_ = nullptr;
  int64_t max_blocks_ = 0;
  // A sequence with this many new rows or more attends through the tiled kernel.
  static constexpr int64_t kMinTiledRows = 8;
  std::vector<cuda::QueryTile> tiles_;
  int64_t max_tile_rows_ = 0;
  std::vector<int32_t> untiled_;
  StepRows step_;
};

}  // namespace shoal::worker
