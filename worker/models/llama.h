#pragma once
// The llama family (Llama 2/3, SmolLM2, R1-Distill-Llama) and qwen2, which differs only
// in having q/k/v biases and, usually, an untied lm_head.
#include <memory>

#include "absl/status/statusor.h"
#include "worker/models/causal_lm.h"

namespace shoal::worker {

absl::StatusOr<std::unique_ptr<CausalLM>> CreateLlama(const LoadedModel& model,
                                                      const ShardSpec& shard, ThreadPool* pool,
                                                      const CausalLMOptions& options);

}  // namespace shoal::worker
