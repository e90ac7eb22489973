#pragma once
// llama and qwen2 on a GPU (the forward pass of worker/models/llama.cc); built through
// CreateCudaCausalLM (cuda_causal_lm.h), which picks the architecture.
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "worker/models/cuda/cuda_causal_lm.h"

namespace shoal::worker {

absl::StatusOr<std::unique_ptr<CudaCausalLM>> CreateCudaLlama(const LoadedModel& model, const ShardSpec& shard,
                                                              const CausalLMOptions& options);
absl::StatusOr<std::unique_ptr<CudaCausalLM>> CreateRandomCudaLlama(const ModelConfig& config,
                                                                    const CausalLMOptions& options, uint64_t seed);

}  // namespace shoal::worker
