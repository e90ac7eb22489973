#pragma once
// DeepSeek-V2/V3/R1 on a GPU (the forward pass of worker/models/deepseek.cc: MLA over a
// latent cache, DeepSeekMoE); built through CreateCudaCausalLM (cuda_causal_lm.h).
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "worker/models/cuda/cuda_causal_lm.h"

namespace shoal::worker {

absl::StatusOr<std::unique_ptr<CudaCausalLM>> CreateCudaDeepseek(const LoadedModel& model, const ShardSpec& shard,
                                                                 const CausalLMOptions& options);
absl::StatusOr<std::unique_ptr<CudaCausalLM>> CreateRandomCudaDeepseek(const ModelConfig& config,
                                                                       const CausalLMOptions& options, uint64_t seed);

}  // namespace shoal::worker
