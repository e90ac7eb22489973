#pragma once
// Choosing tokens on the GPU, so a step's logits need not travel to the host: greedy
// (ArgmaxRows), and the engine sampler's whole rule set (SampleRows: worker/engine/
// sampler.h, whose order and tie rules it follows) given each row's uniform draw, which
// the host takes from the sequence's own RNG so a seed gives the same stream either way.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "worker/kernels/cuda/launch_types.h"

namespace shoal::worker::cuda {

// out[r] = argmax of logits row r ([num_rows, n] f32, row stride n), the lowest index on
// ties (as std::max_element); NaNs are never chosen.
void ArgmaxRows(cudaStream_t stream, const float* logits, int64_t num_rows, int64_t n, int32_t* out);

// For each of num_rows rows of logits ([num_rows, n] f32, overwritten as scratch; rows
// and penalties are device arrays): penalties, temperature, top-k, top-p, min-p and the
// draw as Sampler::Sample does them; out[r] the token, or -1 when the row holds a NaN
// (the engine fails that request). One block per row: the truncations find their cut by
// a binary search over the probabilities' bit patterns (no sort), ties kept in index
// order as the host's stable ordering keeps them; sums are in double as on the host but
// in another order, so a draw or a cut that lands within rounding of a boundary may go
// the other way. A truncating row (top-k, top-p or min-p) whose kept tokens provably lie
// among at most 4096 above a power-of-two floor (counted while normalizing) makes its
// searches and draw over those, copied to shared memory in index order, not the whole
// vocabulary; the choice is the same either way.
void SampleRows(cudaStream_t stream, float* logits, int64_t num_rows, int64_t n, const SamplingRow* rows,
                const PenaltyToken* penalties, int32_t* out);

}  // namespace shoal::worker::cuda
