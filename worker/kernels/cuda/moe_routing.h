#pragma once
// DeepSeekMoE's routing and slot plan on the GPU: the router logits never leave the device,
// so a MoE layer of a decode step needs no host synchronization (the host path copies the
// logits back, routes with RouteTokens and copies the plan over: one stream sync per
// layer, 26 per V2-Lite step, 58 per V3 step).
//
// The rules are worker/models/deepseek_moe.cc's RouteTokens, and the plan is
// worker/models/step_plan.cc's PlanExpertSlots; tests/kernels/cuda_kernels_test.cc holds
// both sides to each other. The scores come from expf where the CPU uses its own exp, so
// a choice between experts whose scores are within a rounding of each other may differ,
// as it may already between the CPU's and the GPU's router logits.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "worker/kernels/cuda/launch_types.h"

namespace shoal::worker::cuda {

// DeepseekConfig's routing fields, for device code.
struct RouterRules {
  int32_t num_experts = 0;     // n_routed_experts, at most kMaxRoutedExperts
  int32_t experts_per_token = 0;  // k, at most kMaxExpertsPerTokenOnDevice
  int32_t num_groups = 1, top_groups = 1;  // n_group, topk_group (at most 32 groups)
  bool sigmoid = false;        // scoring_func: sigmoid, else softmax
  enum Method : int32_t { kGreedy, kGroupLimitedGreedy, kNoauxTc } method = kGreedy;
  bool normalize = false;      // norm_topk_prob
  float scaling = 1.0f;        // routed_scaling_factor
};
constexpr int kMaxRoutedExperts = 512;
constexpr int kMaxExpertsPerTokenOnDevice = 16;

// ids/weights [T, k]: each token's experts, highest choice first (ties to the lower id),
// and their weights, from logits [T, num_experts] f32 and bias [num_experts] (noaux_tc's
// correction, choice only; may be null). One warp per token.
void RouteTokensOnDevice(cudaStream_t stream, const RouterRules& rules, const float* logits, int64_t num_tokens,
                         const float* bias, int32_t* ids, float* weights);

// The slot plan of local experts [expert_begin, expert_end) over T tokens' [T, k] ids and
// weights, as PlanExpertSlots makes it: gather [T * k] (gathered row -> token; rows
// grouped by expert, tokens in order; entries past the gathered rows 0), slot_rows and
// slot_weights [T * k] (each token's slots ordered by expert id; row -1 for an expert on
// another rank), and the GroupedGemv groups: groups [min(local, T * k)], first one per
// local expert with tokens in expert order (matrix e, its first row, its row count: the
// host plan's `small`), then empty ones (0 rows). T * k at most kMaxPlannedSlots; one
// block.
void PlanExpertSlotsOnDevice(cudaStream_t stream, const int32_t* ids, const float* weights, int64_t num_tokens,
                             int32_t k, int32_t expert_begin, int32_t expert_end, int32_t* gather, int32_t* slot_rows,
                             float* slot_weights, GemvGroup* groups);
constexpr int kMaxPlannedSlots = 1024;

}  // namespace shoal::worker::cuda
