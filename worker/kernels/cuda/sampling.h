#pragma once
// Choosing tokens on the GPU, so a step's logits need not travel to the host: greedy
// (ArgmaxRows), and the engine sampler's whole rule set (SampleRows: worker/engine/
// sampler.h, whose order and tie rules it follows) given each row's uniform draw, which
// the host takes from the sequence's own RNG so a seed gives the same stream either way.
#include <cuda_runtime_api.h>

#include <cstdint>

namespace shoal::worker::cuda {

// out[r] = argmax of logits row r ([num_rows, n] f32, row stride n), the lowest index on
// ties (as std::max_element); NaNs are never chosen.
void ArgmaxRows(cudaStream_t stream, const float* logits, int64_t num_rows, int64_t n, int32_t* out);

// A token the penalties look at: every distinct token of the prompt and output (seen,
// for the repetition penalty) with its count in the output (presence, frequency).
struct PenaltyToken {
  int32_t token = 0;
  int32_t output_count = 0;
};

// One row's sampling, as the engine's SamplingOptions plus the row's draw.
struct SamplingRow {
  float temperature = 0.0f;  // <= 0: greedy
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int32_t penalty_begin = 0, penalty_end = 0;  // this row's entries of `penalties`
  double uniform = 0.0;                        // in [0, 1); unused when greedy
};

// For each of num_rows rows of logits ([num_rows, n] f32, overwritten as scratch; rows
// and penalties are device arrays): penalties, temperature, top-k, top-p, min-p and the
// draw as Sampler::Sample does them; out[r] the token, or -1 when the row holds a NaN
// (the engine fails that request). One block per row: the truncations find their cut by
// a binary search over the probabilities' bit patterns (no sort), ties kept in index
// order as the host's stable ordering keeps them; sums are in double as on the host but
// in another order, so a draw or a cut that lands within rounding of a boundary may go
// the other way.
void SampleRows(cudaStream_t stream, float* logits, int64_t num_rows, int64_t n, const SamplingRow* rows,
                const PenaltyToken* penalties, int32_t* out);

}  // namespace shoal::worker::cuda
