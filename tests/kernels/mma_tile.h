#pragma once
// One tensor-core tile product for cuda_kernels_test, through worker/kernels/cuda/mma.cuh
// exactly as the attention kernel uses it: lanes gather their fragments by the layout
// mma.cuh documents, so a GPU whose hardware disagrees with it fails the test (and the
// SIMT emulator's shuffle form is checked against the same layout).
#include <cstdint>

#include "worker/model/dtype.h"

namespace shoal::worker::cuda {

// c[16][8] += a[16][16] b[16][8] (all row-major, device memory) with one warp: a as f32,
// packed into operand registers once (split = false) or as two roundings (split = true,
// two products); b as elements of t (kF16 or kBF16). Synchronizes the device.
void MmaTileForTest(DType t, const float* a, const uint16_t* b, float* c, bool split);

}  // namespace shoal::worker::cuda
