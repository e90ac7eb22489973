#pragma once
// The plain records the host fills for the CUDA kernels' launches (query tiles, sampling
// rows, penalty tokens, expert groups). No CUDA header, so the host code that plans them
// (worker/models/step_plan.h) builds and is tested without a toolkit; the kernels read
// them with exactly this layout.
#include <cstdint>

namespace shoal::worker::cuda {

// Consecutive query rows of one sequence at consecutive positions: rows [first_row,
// first_row + num_rows) of the step, at positions first_pos.., of sequence seq (its block
// table is rows.block_tables[seq]). A prompt chunk is cut into tiles of at most
// kQueryTileRows.
struct QueryTile {
  int32_t first_row = 0;
  int32_t num_rows = 0;
  int32_t seq = 0;
  int32_t unused = 0;
  int64_t first_pos = 0;
};
constexpr int kQueryTileRows = 32;

// A token the penalties look at: every distinct token of the prompt and output (seen,
// for the repetition penalty) with its count in the output (presence, frequency).
struct PenaltyToken {
  int32_t token = 0;
  int32_t output_count = 0;
};

// Below this temperature a row samples greedily (the engine's kGreedyTemperature).
constexpr float kGreedyTemperature = 1e-5f;

// One row's sampling, as the engine's SamplingOptions plus the row's draw.
struct SamplingRow {
  float temperature = 0.0f;  // below kGreedyTemperature: greedy
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int32_t penalty_begin = 0, penalty_end = 0;  // this row's entries of `penalties`
  double uniform = 0.0;                        // in [0, 1); unused when greedy
};

// Rows of a step that multiply one matrix of a stack (GroupedGemv): rows [first_row,
// first_row + num_rows) of x and y, matrix `matrix` (a local expert). Groups of more than
// kGroupedGemvMaxRows rows go to a GEMM instead.
struct GemvGroup {
  int32_t matrix = 0;
  int32_t first_row = 0;
  int32_t num_rows = 0;
  int32_t unused = 0;
};
constexpr int kGroupedGemvMaxRows = 32;

}  // namespace shoal::worker::cuda
