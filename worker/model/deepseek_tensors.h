#pragma once
// The tensors a DeepSeek-V2/V3 checkpoint must hold, by Hugging Face name, as the
// loaders' consistency check (CheckModelTensors) walks them.
#include <functional>

#include "absl/status/status.h"
#include "worker/model/model_checks.h"
#include "worker/model/model_config.h"

namespace shoal::worker {

// Calls `visit` on every tensor of the decoder layers [0, num_layers) of a DeepSeek
// model: MLA projections (q_a/q_b or q_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj and
// their norms), then the dense MLP or the MoE block (router `mlp.gate.weight`, V3's
// `e_score_correction_bias`, every routed expert's gate/up/down, the shared experts).
// Multi-token-prediction layers (index >= num_layers) are not visited: they are not run.
absl::Status ForEachExpectedDeepseekTensor(const ModelConfig& config,
                                           const std::function<absl::Status(const ExpectedTensor&)>& visit);

}  // namespace shoal::worker
