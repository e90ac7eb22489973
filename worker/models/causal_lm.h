#pragma once
// The one interface the engine drives a model through. There is no prefill phase and no
// decode phase: each sequence in a batch brings the new tokens it needs computed this
// step (a prompt chunk, or one sampled token) and where they start; everything before
// `start_pos` is already in the paged KV cache under the sequence's block table.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/kernels/cuda/launch_types.h"
#include "worker/model/loaded_model.h"
#include "worker/model/model_config.h"

namespace shoal::worker {

class Communicator;
class ThreadPool;

// Where a model's weights, activations and KV cache live.
enum class Device { kCpu, kCuda };

// Choices about how a model instance computes, fixed when it is created.
struct CausalLMOptions {
  // Element type of the paged KV cache: kF16 (the serving default, as llama.cpp's: half the
  // memory per token, and with it attention computes as llama.cpp's does on the CPU) or
  // kF32 (exact f32 attention, e.g. for comparing against f32 reference implementations).
  // On CUDA also kBF16.
  DType kv_cache_dtype = DType::kF16;
  // kCuda: the model's shard on one GPU (worker/models/cuda; llama, qwen2, DeepSeek), in a build with
  // the CUDA backend. Otherwise CreateCausalLM fails with FAILED_PRECONDITION ("built
  // without CUDA", or "no GPU: ..." where the driver finds none).
  Device device = Device::kCpu;
  // kCuda only: the element type weights are kept in on the GPU, whatever the file stores
  // (GGUF quantized blocks and f16 are dequantized on the host at load). kBF16 (speed: half
  // the bytes a decode step reads) or kF32 (exact checks against the CPU model); the
  // activations entering each GEMM have the same type, the residual stream and attention
  // are f32. For DeepSeek also kF8E4M3: the checkpoint's FP8 matrices stay FP8 (one byte
  // a weight), everything else bf16.
  DType device_weight_dtype = DType::kBF16;
  // kCuda with FP8 weights kept (kF8E4M3), for steps of more rows than a GEMV takes (a
  // prompt, a large batch). kTensorCores: the activations are quantized to FP8 (one scale
  // per row and 128 columns, as DeepSeek-V3's own inference, vLLM and SGLang quantize
  // them) and multiplied on FP8 tensor cores (Hopper), each weight byte read once.
  // kExact: the weights are widened to bf16 for cuBLAS and the activations stay bf16 (the
  // CPU's products). kTensorCores falls back to kExact, with a warning, where the GPU or
  // cuBLASLt has no such GEMM.
  enum class Fp8Gemm { kTensorCores, kExact };
  Fp8Gemm fp8_gemm = Fp8Gemm::kTensorCores;
  // kCuda only: how steps of at most cuda::kGemvMaxRows (8) rows, decode steps, multiply
  // the dense (bf16 or f32) weights. kGemv: a warp per two output rows, each weight read once
  // (worker/kernels/cuda/grouped_gemv.h, the kernel FP8 weights and small experts always
  // take); kCublas: cuBLAS's GEMM, whose tiles are mostly idle at these shapes. Both
  // accumulate in f32, in different orders; cuda-decode-bench times one against the other.
  enum class SmallStepMatmul { kGemv, kCublas };
  SmallStepMatmul small_step_matmul = SmallStepMatmul::kGemv;
  // kCuda only: decode steps of a shape seen before replay a captured CUDA graph instead
  // of launching their kernels one by one (a whole model on one GPU; DeepSeek for steps
  // of up to 32 rows, which route MoE on the device).
  bool cuda_graphs = false;
  // kCuda only: which of the visible GPUs the model lives on (a rank of a group on a
  // machine with several takes its own; see worker/parallel/group_flags.h).
  int cuda_device = 0;
  // The tensor ranks of this pipeline stage (worker/parallel), for the all-reduces after
  // the row-parallel layers and the vocabulary-parallel embedding and LM head. Required
  // when the shard's tp_size > 1; must outlive the model.
  Communicator* tensor_group = nullptr;
};

struct SequenceChunk {
  std::span<const int32_t> tokens;       // new tokens, positions start_pos .. start_pos+size-1
  int64_t start_pos = 0;
  // KV block ids covering positions [0, start_pos + tokens.size()); position p lives in
  // block_table[p / block_size] at slot p % block_size.
  std::span<const int32_t> block_table;
  bool want_logits = false;              // logits for the last token of `tokens`
};

struct ForwardBatch {
  std::vector<SequenceChunk> seqs;
};

// How one want_logits row's next token is chosen, for a model that samples where its
// logits are (ForwardSample): the engine's SamplingOptions and the row's uniform draw
// (taken by the caller from the sequence's RNG exactly when the host sampler would take
// it: Sampler::IsGreedy false) as the GPU kernel reads them, and the sequence's tokens for
// the penalties (the model fills in params' penalty range).
struct RowSampling {
  cuda::SamplingRow params;
  std::span<const int32_t> tokens;  // prompt, then output so far
  int64_t num_prompt_tokens = 0;
};

class CausalLM {
 public:
  virtual ~CausalLM() = default;
  virtual const ModelConfig& config() const = 0;
  virtual const ShardSpec& shard() const = 0;

  // Bytes one KV block of `block_size` tokens takes over all layers this rank holds, in
  // the cache's element type.
  virtual size_t KvBytesPerBlock(int block_size) const = 0;
  // (Re)allocates the paged KV cache. Must be called before Forward.
  virtual absl::Status AllocateKvCache(int64_t num_blocks, int block_size) = 0;

  // Runs one step. Appends, for each sequence with want_logits (in batch order), a row of
  // config().vocab_size logits to *logits (resized to rows * vocab).
  virtual absl::Status Forward(const ForwardBatch& batch, std::vector<float>* logits) = 0;

  // One pipeline stage's part of a step. The first stage embeds the batch's tokens, the
  // others take the previous stage's hidden states, `hidden_in` [T, hidden_size] for the
  // batch's T tokens in order. A stage that is not the last writes its hidden states
  // [T, hidden_size] to *out; the last writes logits as Forward does. A model that holds
  // every layer does both ends in one call, like Forward.
  virtual absl::Status ForwardStage(const ForwardBatch& batch, std::span<const float> hidden_in,
                                    std::vector<float>* out) {
    return absl::UnimplementedError("this model does not run as a pipeline stage");
  }

  // Bytes of weights this rank keeps resident (mapped or owned), for sizing and tests.
  virtual size_t WeightBytes() const = 0;

  // Device memory still free once the model is loaded, for a KV cache sized as a fraction
  // of it (a GPU model); 0 for a model in host memory, whose cache is sized in bytes.
  virtual size_t FreeDeviceBytes() const { return 0; }

  // Whether ForwardSample works: the model picks tokens where its logits are (a whole
  // model on one GPU), so only one int32 per row crosses to the host.
  virtual bool SamplesOnDevice() const { return false; }
  // Forward, then each want_logits row's token (rows[i] for the i-th, in batch order) by
  // the engine sampler's rules (worker/engine/sampler.h); -1 for a row whose logits hold
  // a NaN. UNIMPLEMENTED unless SamplesOnDevice().
  virtual absl::Status ForwardSample(const ForwardBatch& batch, std::span<const RowSampling> rows,
                                     std::vector<int32_t>* tokens) {
    return absl::UnimplementedError("this model does not sample on its device");
  }
};

// GPUs a kCuda model could use here: 0 in a build without CUDA or where the driver finds
// none.
int VisibleCudaDevices();

// For a kCuda model with no GPU chosen (cuda_device < 0): group rank `rank` (0 for a
// single process) takes GPU rank modulo the visible ones, so the ranks of one machine
// spread over its GPUs and a pod that sees only its own GPU takes device 0. Ranks sharing
// a GPU still work: their tensor all-reduces go over Gloo in host memory. With no GPU,
// device 0, and the factory says why.
void ResolveCudaDevice(int rank, CausalLMOptions* options);

// "hostname/PCI bus id" of GPU `device` (the same GPU gives the same string in every
// process of the machine), for a group to see which ranks share one ("hostname/device-N"
// when the driver gives no bus id); "" in a build without CUDA.
std::string CudaDeviceIdentity(int device);

// Builds the model named by model.config.arch over the shard, on options.device. `pool`
// must outlive it (a CUDA model does not use it and may be given null).
absl::StatusOr<std::unique_ptr<CausalLM>> CreateCausalLM(const LoadedModel& model,
                                                         const ShardSpec& shard,
                                                         ThreadPool* pool,
                                                         const CausalLMOptions& options = {});

}  // namespace shoal::worker
