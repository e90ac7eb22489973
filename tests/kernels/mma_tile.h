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

// A 16x16 matrix of 16-bit elements (row-major, device memory) into shared memory by
// async_copy.cuh's copies, 16 bytes each, except those of row `unread_row` (zero-filled),
// then read back by one warp through LoadMatrices, matrix i (of 4) being rows
// 8 (i % 2) .. + 7 and columns 8 (i / 2) .. + 7: out[8 lane + i] is lane's word m[i],
// out[8 lane + 4 + i] the same transposed. Synchronizes the device.
void MatrixLoadsForTest(const uint16_t* matrix, int unread_row, uint32_t* out);

}  // namespace shoal::worker::cuda
