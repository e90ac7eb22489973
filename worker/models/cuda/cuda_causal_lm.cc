#include "worker/models/cuda/cuda_causal_lm.h"

#include <fmt/format.h>

#include "worker/models/cuda/cuda_deepseek.h"
#include "worker/models/cuda/cuda_llama.h"

namespace shoal::worker {
namespace {

absl::Status NoCudaImplementation(const std::string& source, const ModelConfig& c) {
  return absl::UnimplementedError(fmt::format(
      "{}: architecture '{}' has no CUDA implementation (llama, qwen2, deepseek_v2 and deepseek_v3 do)", source,
      c.arch_name));
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaCausalLM>> CreateCudaCausalLM(const LoadedModel& model, const ShardSpec& shard,
                                                                 const CausalLMOptions& options) {
  switch (model.config.arch) {
    case Arch::kLlama:
    case Arch::kQwen2: return CreateCudaLlama(model, shard, options);
    case Arch::kDeepseekV2:
    case Arch::kDeepseekV3: return CreateCudaDeepseek(model, shard, options);
  }
  return NoCudaImplementation(model.path, model.config);
}

absl::StatusOr<std::unique_ptr<CudaCausalLM>> CreateRandomCudaCausalLM(const ModelConfig& config,
                                                                       const CausalLMOptions& options, uint64_t seed) {
  switch (config.arch) {
    case Arch::kLlama:
    case Arch::kQwen2: return CreateRandomCudaLlama(config, options, seed);
    case Arch::kDeepseekV2:
    case Arch::kDeepseekV3: return CreateRandomCudaDeepseek(config, options, seed);
  }
  return NoCudaImplementation("random weights", config);
}

}  // namespace shoal::worker
