#include "worker/kernels/cuda/grouped_gemv.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <type_traits>

#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/elements.cuh"
#include "worker/kernels/cuda/fp8.h"

namespace shoal::worker::cuda {
namespace {

constexpr int kWarps = 8;   // output rows per block
constexpr int kChunk = 8;   // x rows multiplied per pass over a weight row
constexpr int kSpan = 16;   // consecutive weights a lane takes per step (inside one FP8 scale block)
static_assert(kFp8ScaleBlock % kSpan == 0);

using Fp8Code = uint8_t;

template <typename W>
__device__ __forceinline__ float WeightValue(W v) {
  if constexpr (std::is_same_v<W, Fp8Code>) {
    __nv_fp8_e4m3 e;  // every e4m3 value is a half: exact, 0x7f/0xff NaN as on the CPU
    e.__x = v;
    return static_cast<float>(e);
  } else {
    return Load(&v, 0);
  }
}

// Elements [i0, i0 + kSpan) of a weight or input row as f32 (zeros past n): one or more
// 16-byte loads when the row is aligned for them.
template <typename W>
__device__ __forceinline__ void LoadSpan(const W* p, bool vector, int n, float (&out)[kSpan]) {
  if (vector) {
    constexpr int kVectors = kSpan * static_cast<int>(sizeof(W)) / 16;
    alignas(16) W v[kSpan];
#pragma unroll
    for (int k = 0; k < kVectors; ++k) reinterpret_cast<uint4*>(v)[k] = reinterpret_cast<const uint4*>(p)[k];
#pragma unroll
    for (int j = 0; j < kSpan; ++j) out[j] = WeightValue(v[j]);
  } else {
#pragma unroll
    for (int j = 0; j < kSpan; ++j) out[j] = j < n ? WeightValue(p[j]) : 0.0f;
  }
}

// Block (blockIdx.x, blockIdx.y = group): one warp per output row o of the group's matrix;
// the group's rows in passes of kChunk, each pass one walk along the weight row (a row of
// a few KB stays in L1 from one pass to the next).
template <typename W, typename X, typename Y>
__global__ void __launch_bounds__(32 * kWarps, 4) GroupedGemvKernel(StackedMatrices w, const GemvGroup* groups, GemvGroup single, const X* x, Y* y,
                                  bool accumulate) {
  const GemvGroup g = groups != nullptr ? groups[blockIdx.y] : single;
  const int lane = threadIdx.x % 32;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (o >= w.rows || g.num_rows <= 0) return;  // whole warps only: o is the same on every lane
  const int64_t cols = w.cols, wrow = static_cast<int64_t>(g.matrix) * w.matrix_stride + o;
  const W* row = static_cast<const W*>(w.data) + wrow * cols;
  const int64_t scale_cols = (cols + kFp8ScaleBlock - 1) / kFp8ScaleBlock;
  const float* scales = std::is_same_v<W, Fp8Code> ? w.scales + wrow * scale_cols : nullptr;
  const bool vector = (cols * sizeof(W)) % 16 == 0 && cols % kSpan == 0 && reinterpret_cast<uintptr_t>(row) % 16 == 0;
  // The inputs too: element by element, a warp's load of x touches 32 spans 32+ bytes
  // apart, eight or more L1 wavefronts for 64 useful bytes, once per weight.
  const bool x_vector = (cols * sizeof(X)) % 16 == 0 && cols % kSpan == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  for (int r0 = 0; r0 < g.num_rows; r0 += kChunk) {
    const int rows = min(kChunk, g.num_rows - r0);
    const X* xr = x + (static_cast<int64_t>(g.first_row) + r0) * cols;
    float acc[kChunk] = {};
    for (int64_t i0 = static_cast<int64_t>(lane) * kSpan; i0 < cols; i0 += 32 * kSpan) {
      float wv[kSpan];
      const int n = cols - i0 < kSpan ? static_cast<int>(cols - i0) : kSpan;
      LoadSpan(row + i0, vector && n == kSpan, n, wv);
      if constexpr (std::is_same_v<W, Fp8Code>) {
        const float s = scales[i0 / kFp8ScaleBlock];
#pragma unroll
        for (int j = 0; j < kSpan; ++j) wv[j] *= s;
      }
#pragma unroll
      for (int t = 0; t < kChunk; ++t) {
        if (t >= rows) break;
        float xv[kSpan];  // zeros past n, as wv: the products there add +0
        LoadSpan(xr + t * cols + i0, x_vector && n == kSpan, n, xv);
        float a = acc[t];
#pragma unroll
        for (int j = 0; j < kSpan; ++j) a += wv[j] * xv[j];
        acc[t] = a;
      }
    }
#pragma unroll
    for (int t = 0; t < kChunk; ++t) {
      if (t >= rows) break;
      float v = acc[t];
      for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
      if (lane == 0) {
        const int64_t at = (static_cast<int64_t>(g.first_row) + r0 + t) * w.rows + o;
        Store(y, at, accumulate ? Load(y, at) + v : v);
      }
    }
  }
}

template <typename Fn>
void WithWeightType(DType t, Fn&& fn) {
  if (t == DType::kF8E4M3) {
    fn(Fp8Code{});
  } else {
    WithFloatType(t, "GroupedGemv weight type", fn);
  }
}

void Launch(cudaStream_t stream, const StackedMatrices& w, const GemvGroup* groups, GemvGroup single, int num_groups,
            DType x_type, const void* x, DType y_type, void* y, bool accumulate) {
  if (w.dtype == DType::kF8E4M3 && w.scales == nullptr) {
    DieOnCudaError("GroupedGemv", "FP8 weights without block scales", __FILE__, __LINE__);
  }
  const dim3 grid(static_cast<unsigned>((w.rows + kWarps - 1) / kWarps), static_cast<unsigned>(num_groups));
  WithWeightType(w.dtype, [&](auto wz) {
    WithFloatType(x_type, "GroupedGemv input type", [&](auto xz) {
      WithFloatType(y_type, "GroupedGemv output type", [&](auto yz) {
        using W = decltype(wz);
        using X = decltype(xz);
        using Y = decltype(yz);
        GroupedGemvKernel<W, X, Y><<<grid, 32 * kWarps, 0, stream>>>(w, groups, single, static_cast<const X*>(x),
                                                                     static_cast<Y*>(y), accumulate);
      });
    });
  });
  SHOAL_CUDA_CHECK_LAUNCH();
}

}  // namespace

void GroupedGemv(cudaStream_t stream, const StackedMatrices& w, const GemvGroup* groups, int num_groups,
                 DType x_type, const void* x, DType y_type, void* y, bool accumulate) {
  if (num_groups == 0 || w.rows == 0) return;
  Launch(stream, w, groups, GemvGroup{}, num_groups, x_type, x, y_type, y, accumulate);
}

void Gemv(cudaStream_t stream, const StackedMatrices& w, int64_t num_rows, DType x_type, const void* x, DType y_type,
          void* y, bool accumulate) {
  if (num_rows == 0 || w.rows == 0) return;
  Launch(stream, w, nullptr, GemvGroup{0, 0, static_cast<int32_t>(num_rows), 0}, 1, x_type, x, y_type, y, accumulate);
}

}  // namespace shoal::worker::cuda
