#pragma once
// Decoders on a GPU: the CPU models' forward passes (worker/models/llama.cc,
// deepseek.cc) over the same tensor × pipeline shard, with weights, activations and the
// paged cache in device memory. No CUDA header here, so the CPU-side factory
// (causal_lm.cc) can include it.
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/models/causal_lm.h"

namespace shoal::worker {

class CudaCausalLM : public CausalLM {
 public:
  // Forward with the next token of each want_logits row chosen greedily on the GPU: only
  // one int32 per row comes back to the host (what the benchmark times; the engine uses
  // ForwardSample, which applies its whole sampler).
  virtual absl::Status ForwardGreedy(const ForwardBatch& batch, std::vector<int32_t>* tokens) = 0;
  // Steps that replayed a captured CUDA graph (CausalLMOptions.cuda_graphs), for tests and logs.
  virtual int64_t graph_launches() const = 0;
  // GEMMs run on FP8 tensor cores (CausalLMOptions.fp8_gemm kTensorCores), for tests and logs.
  virtual int64_t fp8_tensor_core_gemms() const = 0;
};

// The shard of `model` (llama, qwen2, deepseek_v2 or deepseek_v3) on GPU
// options.cuda_device, weights converted to options.device_weight_dtype;
// options.tensor_group is required for tp_size > 1. FAILED_PRECONDITION "no GPU: ..."
// without a usable device; UNIMPLEMENTED for another architecture; INVALID_ARGUMENT for a
// device index past the visible ones, a layer range or tensor split the model does not
// allow (named), a missing tensor group, an unsupported weight or KV dtype, or tensors of
// the wrong shape (named).
absl::StatusOr<std::unique_ptr<CudaCausalLM>> CreateCudaCausalLM(const LoadedModel& model, const ShardSpec& shard,
                                                                 const CausalLMOptions& options);

// The whole model of `config`'s shape with weights uniform in ±1/sqrt(fan-in) (norms 1)
// drawn in device memory from `seed`: benchmarks of real shapes without a checkpoint.
absl::StatusOr<std::unique_ptr<CudaCausalLM>> CreateRandomCudaCausalLM(const ModelConfig& config,
                                                                       const CausalLMOptions& options, uint64_t seed);

}  // namespace shoal::worker
