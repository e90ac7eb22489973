#include "worker/models/causal_lm.h"

#include <fmt/format.h>

#include "worker/models/deepseek.h"
#include "worker/models/llama.h"

namespace shoal::worker {

absl::StatusOr<std::unique_ptr<CausalLM>> CreateCausalLM(const LoadedModel& model,
                                                         const ShardSpec& shard,
                                                         ThreadPool* pool,
                                                         const CausalLMOptions& options) {
  switch (model.config.arch) {
    case Arch::kLlama:
    case Arch::kQwen2:  // llama plus q/k/v biases, which the config announces
      return CreateLlama(model, shard, pool, options);
    case Arch::kDeepseekV2:
    case Arch::kDeepseekV3:  // V3 differs in routing (sigmoid + noaux_tc), which the config announces
      return CreateDeepseek(model, shard, pool, options);
  }
  return absl::UnimplementedError(
      fmt::format("{}: architecture '{}' has no CPU implementation", model.path, model.config.arch_name));
}

}  // namespace shoal::worker
