#pragma once
// Choosing tokens on the GPU, so a step's logits need not travel to the host. Greedy only
// for now; the engine's sampler (temperature, top-k/p, penalties) still runs on the host
// over logits copied back.
#include <cuda_runtime_api.h>

#include <cstdint>

namespace shoal::worker::cuda {

// out[r] = argmax of logits row r ([num_rows, n] f32, row stride n), the lowest index on
// ties (as std::max_element); NaNs are never chosen.
void ArgmaxRows(cudaStream_t stream, const float* logits, int64_t num_rows, int64_t n, int32_t* out);

}  // namespace shoal::worker::cuda
