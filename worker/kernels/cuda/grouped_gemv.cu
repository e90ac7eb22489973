#include "worker/kernels/cuda/grouped_gemv.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/elements.cuh"
#include "worker/kernels/cuda/fp8.h"
#include "worker/kernels/cuda/launch.cuh"

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

// A span of kSpan elements as loaded, before widening: the 32-bit words of 16-byte loads
// where the row is aligned for them, of element loads (zeros past n) where not. LoadSpan
// (below) widens as it loads; the one-row kernel keeps the raw words instead, so several
// spans' loads are in flight before the first is widened.
template <typename W>
struct RawSpan {
  static constexpr int kWords = kSpan * static_cast<int>(sizeof(W)) / 4;
  uint32_t words[kWords];
};

template <typename W>
__device__ __forceinline__ void LoadRaw(const W* p, bool vector, int n, RawSpan<W>& out) {
  constexpr int kBytes = static_cast<int>(sizeof(W)), kPerWord = 4 / kBytes;
  if (vector) {
#pragma unroll
    for (int k = 0; k < RawSpan<W>::kWords / 4; ++k) {
      const uint4 v = reinterpret_cast<const uint4*>(p)[k];
      out.words[4 * k] = v.x;
      out.words[4 * k + 1] = v.y;
      out.words[4 * k + 2] = v.z;
      out.words[4 * k + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int w = 0; w < RawSpan<W>::kWords; ++w) {
      uint32_t word = 0;
#pragma unroll
      for (int e = 0; e < kPerWord; ++e) {
        const int j = w * kPerWord + e;
        uint32_t bits = 0;
        if (j < n) memcpy(&bits, p + j, kBytes);
        word |= bits << (8 * kBytes * e);
      }
      out.words[w] = word;
    }
  }
}

// Element j of a raw span as f32.
template <typename W>
__device__ __forceinline__ float ElementOf(const RawSpan<W>& raw, int j) {
  constexpr int kBytes = static_cast<int>(sizeof(W));
  const uint32_t word = raw.words[j * kBytes / 4];
  if constexpr (std::is_same_v<W, Fp8Code>) {
    return WeightValue(static_cast<Fp8Code>((word >> (8 * (j % 4))) & 0xffu));
  } else {
    const float2 v = Unpack<W>(word);
    return kBytes == 4 || j % 2 == 0 ? v.x : v.y;
  }
}

template <typename W>
__device__ __forceinline__ void Widen(const RawSpan<W>& raw, float (&out)[kSpan]) {
#pragma unroll
  for (int j = 0; j < kSpan; ++j) out[j] = ElementOf(raw, j);
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

// Spans of weights a lane of the one-row kernel loads before it multiplies any: two, 64
// bytes of bf16 or 32 of FP8 codes in flight a lane where one span was 32 or 16 (f32
// spans are 64 bytes already); at 32 warps an SM that is past the ~25 KB a Hopper SM needs
// in flight to keep its share of HBM busy. More FP8 spans would spill at 64 registers.
template <typename W>
constexpr int kSpansInFlight = sizeof(W) == 4 ? 1 : 2;

// FP8 codes times their block's scale (other weights as they are).
template <typename W>
__device__ __forceinline__ void ScaleFp8Span(const float* scales, int64_t i0, float (&wv)[kSpan]) {
  if constexpr (std::is_same_v<W, Fp8Code>) {
    const float s = scales[i0 / kFp8ScaleBlock];
#pragma unroll
    for (int j = 0; j < kSpan; ++j) wv[j] *= s;
  }
}

// acc[t] += the span of weights wv times elements [i0, i0 + kSpan) of x row t, t < rows.
template <int kRows, typename X>
__device__ __forceinline__ void MultiplyRows(const float (&wv)[kSpan], const X* xr, int64_t cols, int64_t i0, int rows,
                                             bool x_vector, int n, float (&acc)[kRows]) {
#pragma unroll
  for (int t = 0; t < kRows; ++t) {
    if (t >= rows) break;
    float xv[kSpan];  // zeros past n, as wv: the products there add +0
    LoadSpan(xr + t * cols + i0, x_vector, n, xv);
    float a = acc[t];
#pragma unroll
    for (int j = 0; j < kSpan; ++j) a += wv[j] * xv[j];
    acc[t] = a;
  }
}

// Block (blockIdx.x, blockIdx.y = group): one warp per output row o of the group's matrix;
// the group's rows in passes of kChunk, each pass one walk along the weight row (a row of
// a few KB stays in L1 from one pass to the next).
// kRows: x rows a pass multiplies, kChunk, or 1 for a launch whose groups are one row
// each (a batch-1 decode step's products), which then keeps kSpansInFlight spans of
// weights loading at once (the 8-row pass has no registers left for them).
// silu_mul (GemvOutput::kSiluGateTimesUp): the matrix's rows are gate rows [0, F) then up
// rows [F, 2F); warps 2k and 2k + 1 of a block take gate and up row f (the block's k-th
// of its kWarps / 2 features), meet in shared memory, and the gate warp writes
// silu(gate) * up as output f of the row's F.
template <typename W, typename X, typename Y, int kRows>
__global__ void __launch_bounds__(32 * kWarps, 4)
    GroupedGemvKernel(StackedMatrices w, const GemvGroup* groups, GemvGroup single, const X* x, Y* y, bool accumulate,
                      bool silu_mul) {
  WaitForPriorKernel();
  __shared__ float pair[kWarps][kRows];
  const GemvGroup g = groups != nullptr ? groups[blockIdx.y] : single;
  if (g.num_rows <= 0) return;  // the whole block
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t features = silu_mul ? w.rows / 2 : w.rows;
  const int64_t f = silu_mul ? static_cast<int64_t>(blockIdx.x) * (kWarps / 2) + warp / 2
                             : static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const bool active = f < features;  // the same on every lane of the warp (and of its pair)
  if (!silu_mul && !active) return;  // no barrier to keep
  const int64_t o = silu_mul ? (warp % 2) * features + f : f;  // the weight row
  const int64_t cols = w.cols, wrow = static_cast<int64_t>(g.matrix) * w.matrix_stride + o;
  const W* row = static_cast<const W*>(w.data) + wrow * cols;
  const int64_t scale_cols = (cols + kFp8ScaleBlock - 1) / kFp8ScaleBlock;
  const float* scales = std::is_same_v<W, Fp8Code> ? w.scales + wrow * scale_cols : nullptr;
  const bool vector = (cols * sizeof(W)) % 16 == 0 && cols % kSpan == 0 && reinterpret_cast<uintptr_t>(row) % 16 == 0;
  // The inputs too: element by element, a warp's load of x touches 32 spans 32+ bytes
  // apart, eight or more L1 wavefronts for 64 useful bytes, once per weight.
  const bool x_vector = (cols * sizeof(X)) % 16 == 0 && cols % kSpan == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  for (int r0 = 0; r0 < g.num_rows; r0 += kRows) {
    const int rows = min(kRows, g.num_rows - r0);
    const X* xr = x + (static_cast<int64_t>(g.first_row) + r0) * cols;
    float acc[kRows] = {};
    constexpr int kInFlight = kRows == 1 ? kSpansInFlight<W> : 1;
    for (int64_t i00 = static_cast<int64_t>(lane) * kSpan; active && i00 < cols; i00 += 32 * kSpan * kInFlight) {
      if constexpr (kInFlight == 1) {
        const int64_t i0 = i00;
        float wv[kSpan];
        const int n = cols - i0 < kSpan ? static_cast<int>(cols - i0) : kSpan;
        LoadSpan(row + i0, vector && n == kSpan, n, wv);
        ScaleFp8Span<W>(scales, i0, wv);
        MultiplyRows<kRows>(wv, xr, cols, i0, rows, x_vector && n == kSpan, n, acc);
      } else {
        // Every span's loads first (the spans past the row load nothing), then the products.
        RawSpan<W> raw[kInFlight];
#pragma unroll
        for (int u = 0; u < kInFlight; ++u) {
          const int64_t i0 = i00 + static_cast<int64_t>(u) * 32 * kSpan;
          const int n = i0 >= cols ? 0 : cols - i0 < kSpan ? static_cast<int>(cols - i0) : kSpan;
          if (n > 0) LoadRaw(row + i0, vector && n == kSpan, n, raw[u]);
        }
#pragma unroll
        for (int u = 0; u < kInFlight; ++u) {
          const int64_t i0 = i00 + static_cast<int64_t>(u) * 32 * kSpan;
          if (i0 >= cols) continue;  // past the row (so is every later span)
          const int n = cols - i0 < kSpan ? static_cast<int>(cols - i0) : kSpan;
          float wv[kSpan];
          Widen(raw[u], wv);
          ScaleFp8Span<W>(scales, i0, wv);
          MultiplyRows<kRows>(wv, xr, cols, i0, rows, x_vector && n == kSpan, n, acc);
        }
      }
    }
#pragma unroll
    for (int t = 0; t < kRows; ++t) {
      if (t >= rows) break;
      float v = acc[t];
      for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
      if (lane != 0 || !active) continue;
      if (silu_mul) {
        pair[warp][t] = v;
      } else {
        const int64_t at = (static_cast<int64_t>(g.first_row) + r0 + t) * w.rows + o;
        Store(y, at, accumulate ? Load(y, at) + v : v);
      }
    }
    if (silu_mul) {
      __syncthreads();
      if (lane == 0 && active && warp % 2 == 0) {
        for (int t = 0; t < rows; ++t) {
          // Rounded to y's type first, as a SiluMul after plain products would read them,
          // so the fused and the unfused step compute the same.
          const Y gate_y = FromFloat<Y>(pair[warp][t]), up_y = FromFloat<Y>(pair[warp + 1][t]);
          const float gate = Load(&gate_y, 0), up = Load(&up_y, 0);
          Store(y, (static_cast<int64_t>(g.first_row) + r0 + t) * features + f, gate / (1.0f + __expf(-gate)) * up);
        }
      }
      __syncthreads();  // before the next pass writes `pair` again
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
            int64_t max_group_rows, DType x_type, const void* x, DType y_type, void* y, bool accumulate,
            GemvOutput output) {
  if (w.dtype == DType::kF8E4M3 && w.scales == nullptr) {
    DieOnCudaError("GroupedGemv", "FP8 weights without block scales", __FILE__, __LINE__);
  }
  const bool silu_mul = output == GemvOutput::kSiluGateTimesUp;
  if (silu_mul && (w.rows % 2 != 0 || accumulate)) {
    DieOnCudaError("GroupedGemv", "kSiluGateTimesUp needs an even row count (gate, then up) and no accumulate",
                   __FILE__, __LINE__);
  }
  const int64_t per_block = silu_mul ? kWarps / 2 : kWarps, features = silu_mul ? w.rows / 2 : w.rows;
  const dim3 grid(static_cast<unsigned>((features + per_block - 1) / per_block), static_cast<unsigned>(num_groups));
  WithWeightType(w.dtype, [&](auto wz) {
    WithFloatType(x_type, "GroupedGemv input type", [&](auto xz) {
      WithFloatType(y_type, "GroupedGemv output type", [&](auto yz) {
        using W = decltype(wz);
        using X = decltype(xz);
        using Y = decltype(yz);
        if (max_group_rows == 1) {
          LaunchKernel("GroupedGemvKernel", GroupedGemvKernel<W, X, Y, 1>, grid, 32 * kWarps, 0, stream, w, groups,
              single, static_cast<const X*>(x), static_cast<Y*>(y), accumulate, silu_mul);
        } else {
          LaunchKernel("GroupedGemvKernel", GroupedGemvKernel<W, X, Y, kChunk>, grid, 32 * kWarps, 0, stream, w,
              groups, single, static_cast<const X*>(x), static_cast<Y*>(y), accumulate, silu_mul);
        }
      });
    });
  });
}

}  // namespace

void GroupedGemv(cudaStream_t stream, const StackedMatrices& w, const GemvGroup* groups, int num_groups,
                 int64_t max_group_rows, DType x_type, const void* x, DType y_type, void* y, bool accumulate,
                 GemvOutput output) {
  if (num_groups == 0 || w.rows == 0) return;
  Launch(stream, w, groups, GemvGroup{}, num_groups, max_group_rows, x_type, x, y_type, y, accumulate, output);
}

void Gemv(cudaStream_t stream, const StackedMatrices& w, int64_t num_rows, DType x_type, const void* x, DType y_type,
          void* y, bool accumulate, GemvOutput output) {
  if (num_rows == 0 || w.rows == 0) return;
  Launch(stream, w, nullptr, GemvGroup{0, 0, static_cast<int32_t>(num_rows), 0}, 1, num_rows, x_type, x, y_type, y,
         accumulate, output);
}

}  // namespace shoal::worker::cuda
