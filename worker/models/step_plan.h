#pragma once
// The host side of a CUDA step's launches, as pure functions of the step: which prompt
// rows attend tile by tile, the rows' sampling records, and where each routed MoE slot
// goes. They live here, outside worker/models/cuda, so they build and are unit-tested on
// any machine (tests/models/step_plan_test.cc); the CUDA models only copy their output.
#include <cstdint>
#include <span>
#include <vector>

#include "worker/kernels/cpu/attention.h"
#include "worker/kernels/cuda/launch_types.h"
#include "worker/model/model_config.h"
#include "worker/models/causal_lm.h"
#include "worker/models/deepseek_moe.h"

namespace shoal::worker {

// Sequences with at least min_rows new rows as tiles of cuda::kQueryTileRows rows (in
// order); the other sequences' rows listed in *untiled, or both empty when nothing is
// tiled (every row then goes to the per-row kernel as it is).
void PlanQueryTiles(std::span<const cpu::AttentionSequence> seqs, int64_t min_rows,
                    std::vector<cuda::QueryTile>* tiles, std::vector<int32_t>* untiled);

// ForwardSample's rows for cuda::SampleRows, and each row's penalty tokens: when a
// penalty is on, every distinct token of prompt and output with its count in the output
// (the repetition penalty's set and the presence/frequency counts of Sampler).
void PlanSampling(std::span<const RowSampling> rows, std::vector<cuda::SamplingRow>* params,
                  std::vector<cuda::PenaltyToken>* penalties);

// Where a MoE layer's T * k routed slots go on the rank holding experts `local`.
struct ExpertSlots {
  std::vector<int32_t> gather;         // gathered row i is token gather[i]; rows grouped by local expert
  std::vector<int64_t> count, offset;  // per local expert: its rows, its first row (offset: local + 1)
  // Per token, its k slots ordered by expert id (the CPU adds its experts in that order):
  std::vector<int32_t> slot_rows;      // the slot's gathered row, -1 when its expert is elsewhere
  std::vector<float> slot_weights;
  // The experts with rows, for the projections: those of at most kGroupedGemvMaxRows rows
  // as one GroupedGemv launch's groups (matrix: the local expert), the rest (local
  // indices) each a GEMM of its own.
  std::vector<cuda::GemvGroup> small;
  std::vector<int64_t> large;
  int64_t gathered() const { return static_cast<int64_t>(gather.size()); }
  std::vector<int32_t> row_of;  // scratch
  std::vector<int64_t> next, order;
};
// Into *plan, whose vectors keep their capacity from layer to layer.
void PlanExpertSlots(const Routing& routing, int64_t num_tokens, ExpertRange local, ExpertSlots* plan);

}  // namespace shoal::worker
