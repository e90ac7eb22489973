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

constexpr int kWarps = 8;   // warps per block
constexpr int kOut = 2;     // weight rows a warp multiplies: each x span it loads serves both
constexpr int kChunk = 8;   // x rows multiplied per pass over a weight row
constexpr int kSpan = 8;    // consecutive weights a lane takes per step and weight row (inside one FP8 scale block)
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

// A span of kSpan elements as loaded, before widening: the 32-bit words of one or two
// 16-byte loads (one 8-byte load for FP8 codes) where the row is aligned for them, of
// element loads (zeros past n) where not. The kernel loads every span of a step as raw
// words and widens them after, so all of a step's loads are in flight before the first
// is used.
template <typename W>
struct RawSpan {
  static constexpr int kWords = kSpan * static_cast<int>(sizeof(W)) / 4;
  static_assert(kWords % 4 == 0 || kWords == 2);
  uint32_t words[kWords];
};

template <typename W>
__device__ __forceinline__ void LoadRaw(const W* p, bool vector, int n, RawSpan<W>& out) {
  constexpr int kBytes = static_cast<int>(sizeof(W)), kPerWord = 4 / kBytes;
  if (vector) {
    if constexpr (RawSpan<W>::kWords == 2) {
      const uint2 v = *reinterpret_cast<const uint2*>(p);
      out.words[0] = v.x;
      out.words[1] = v.y;
    } else {
#pragma unroll
      for (int k = 0; k < RawSpan<W>::kWords / 4; ++k) {
        const uint4 v = reinterpret_cast<const uint4*>(p)[k];
        out.words[4 * k] = v.x;
        out.words[4 * k + 1] = v.y;
        out.words[4 * k + 2] = v.z;
        out.words[4 * k + 3] = v.w;
      }
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

// Elements [i0, i0 + kSpan) of an input row as f32 (zeros past n).
template <typename X>
__device__ __forceinline__ void LoadSpan(const X* p, bool vector, int n, float (&out)[kSpan]) {
  RawSpan<X> raw;
  LoadRaw(p, vector, n, raw);
  Widen(raw, out);
}

// Spans of each weight row a lane of the one-row kernel loads before it multiplies any:
// four of 16-bit weights or FP8 codes, two of f32, so a lane has 128 bytes in flight (64
// of FP8 codes) and a matrix of R rows R/2 warps of 4 KB each: as many bytes in flight as
// R warps of one row and two 32-byte spans each, 7 MB for a 3584-row matrix (all its
// warps resident at once), past the ~4 MB that Hopper's HBM needs in flight for its
// bandwidth (about 4.3 TB/s at ~1 us). 80 registers (3 blocks an SM): at 64 the spans in
// flight spill.
template <typename W>
constexpr int kSpansInFlight = sizeof(W) == 4 ? 2 : 4;

// The factor a span's products are multiplied by: its FP8 block's scale (the span lies in
// one block), 1 for other weights (never multiplied).
template <typename W>
__device__ __forceinline__ float SpanScale(const float* scales, int64_t i0) {
  if constexpr (std::is_same_v<W, Fp8Code>) {
    return scales[i0 / kFp8ScaleBlock];
  } else {
    return 1.0f;
  }
}

template <typename W>
__device__ __forceinline__ void AddScaled(float& acc, float scale, float products) {
  if constexpr (std::is_same_v<W, Fp8Code>) {
    acc += scale * products;
  } else {
    acc += products;
  }
}

// acc[k][t] += the span of weight row k of the warp (raw[k], times scale[k]) times
// elements [i0, i0 + kSpan) of x row t, t < rows: each x span loaded once for both weight
// rows. A pass of several rows widens the weights once for all of them; the one-row pass
// widens each weight as it multiplies it (no widened span held: the registers go to the
// spans in flight).
template <int kRows, typename W, typename X>
__device__ __forceinline__ void MultiplyRows(const RawSpan<W> (&raw)[kOut], const float (&scale)[kOut], const X* xr,
                                             int64_t cols, int64_t i0, int rows, bool x_vector, int n,
                                             float (&acc)[kOut][kRows]) {
  if constexpr (kRows == 1) {
    float xv[kSpan];  // zeros past n, as the weights: the products there add +0
    LoadSpan(xr + i0, x_vector, n, xv);
#pragma unroll
    for (int k = 0; k < kOut; ++k) {
      float p = 0.0f;
#pragma unroll
      for (int j = 0; j < kSpan; ++j) p += ElementOf(raw[k], j) * xv[j];
      AddScaled<W>(acc[k][0], scale[k], p);
    }
  } else {
    float wv[kOut][kSpan];
#pragma unroll
    for (int k = 0; k < kOut; ++k) Widen(raw[k], wv[k]);
#pragma unroll
    for (int t = 0; t < kRows; ++t) {
      if (t >= rows) break;
      float xv[kSpan];
      LoadSpan(xr + t * cols + i0, x_vector, n, xv);
#pragma unroll
      for (int k = 0; k < kOut; ++k) {
        float p = 0.0f;
#pragma unroll
        for (int j = 0; j < kSpan; ++j) p += wv[k][j] * xv[j];
        AddScaled<W>(acc[k][t], scale[k], p);
      }
    }
  }
}

// Block (blockIdx.x, blockIdx.y = group): each warp takes kOut weight rows of the group's
// matrix (rows kOut u .. kOut u + kOut - 1 for the block's u-th warp unit; with silu_mul,
// gate row f and up row F + f); the group's rows in passes of kRows, each pass one walk
// along those weight rows (rows of a few KB stay in L1 from one pass to the next).
// kRows: x rows a pass multiplies, kChunk, or 1 for a launch whose groups are one row
// each (a batch-1 decode step's products), which then keeps kSpansInFlight spans of
// each weight row loading at once (the 8-row pass's registers hold both rows' widened
// spans instead, and its 8 x rows are more loads in flight).
// silu_mul (GemvOutput::kSiluGateTimesUp): the matrix's rows are gate rows [0, F) then up
// rows [F, 2F); the warp of feature f writes silu(gate) * up as output f of the row's F.
template <typename W, typename X, typename Y, int kRows>
__global__ void __launch_bounds__(32 * kWarps, 3)
    GroupedGemvKernel(StackedMatrices w, const GemvGroup* groups, GemvGroup single, const X* x, Y* y, bool accumulate,
                      bool silu_mul) {
  WaitForPriorKernel();
  const GemvGroup g = groups != nullptr ? groups[blockIdx.y] : single;
  if (g.num_rows <= 0) return;
  const int lane = threadIdx.x % 32;
  const int64_t unit = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t features = silu_mul ? w.rows / 2 : w.rows;
  // The warp's weight rows; a row past the matrix (an odd row count's last warp) reads
  // row o[0] again and writes nothing.
  int64_t o[kOut];
  bool live[kOut];
#pragma unroll
  for (int k = 0; k < kOut; ++k) {
    o[k] = silu_mul ? k * features + unit : unit * kOut + k;
    live[k] = silu_mul ? unit < features : o[k] < w.rows;
    if (!live[k]) o[k] = o[0];
  }
  if (!live[0]) return;  // the same on every lane; no barrier to keep
  const int64_t cols = w.cols, scale_cols = (cols + kFp8ScaleBlock - 1) / kFp8ScaleBlock;
  const W* row[kOut];
  const float* scales[kOut];
#pragma unroll
  for (int k = 0; k < kOut; ++k) {
    const int64_t wrow = static_cast<int64_t>(g.matrix) * w.matrix_stride + o[k];
    row[k] = static_cast<const W*>(w.data) + wrow * cols;
    scales[k] = std::is_same_v<W, Fp8Code> ? w.scales + wrow * scale_cols : nullptr;
  }
  // Rows of a 16-byte multiple from an aligned start: every row of the stack is aligned.
  const bool vector =
      (cols * sizeof(W)) % 16 == 0 && cols % kSpan == 0 && reinterpret_cast<uintptr_t>(w.data) % 16 == 0;
  // The inputs too: element by element, a warp's load of x touches 32 spans 16+ bytes
  // apart, four or more L1 wavefronts for 32 useful bytes, once per step and x row.
  const bool x_vector = (cols * sizeof(X)) % 16 == 0 && cols % kSpan == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  for (int r0 = 0; r0 < g.num_rows; r0 += kRows) {
    const int rows = min(kRows, g.num_rows - r0);
    const X* xr = x + (static_cast<int64_t>(g.first_row) + r0) * cols;
    float acc[kOut][kRows] = {};
    constexpr int kInFlight = kRows == 1 ? kSpansInFlight<W> : 1;
    for (int64_t i00 = static_cast<int64_t>(lane) * kSpan; i00 < cols; i00 += 32 * kSpan * kInFlight) {
      // Every span's loads first (the spans past the row load nothing), then the products.
      RawSpan<W> raw[kInFlight][kOut];
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) {
        const int64_t i0 = i00 + static_cast<int64_t>(u) * 32 * kSpan;
        const int n = i0 >= cols ? 0 : cols - i0 < kSpan ? static_cast<int>(cols - i0) : kSpan;
#pragma unroll
        for (int k = 0; k < kOut; ++k) {
          if (n > 0) LoadRaw(row[k] + i0, vector && n == kSpan, n, raw[u][k]);
        }
      }
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) {
        const int64_t i0 = i00 + static_cast<int64_t>(u) * 32 * kSpan;
        if (i0 >= cols) continue;  // past the row (so is every later span)
        const int n = cols - i0 < kSpan ? static_cast<int>(cols - i0) : kSpan;
        float scale[kOut];
#pragma unroll
        for (int k = 0; k < kOut; ++k) scale[k] = SpanScale<W>(scales[k], i0);
        MultiplyRows<kRows>(raw[u], scale, xr, cols, i0, rows, x_vector && n == kSpan, n, acc);
      }
    }
#pragma unroll
    for (int t = 0; t < kRows; ++t) {
      if (t >= rows) break;
      float v[kOut];
#pragma unroll
      for (int k = 0; k < kOut; ++k) {
        v[k] = acc[k][t];
        for (int offset = 16; offset > 0; offset /= 2) v[k] += __shfl_xor_sync(0xffffffffu, v[k], offset);
      }
      if (lane != 0) continue;
      const int64_t out_row = static_cast<int64_t>(g.first_row) + r0 + t;
      if (silu_mul) {
        // Rounded to y's type first, as a SiluMul after plain products would read them,
        // so the fused and the unfused step compute the same.
        const Y gate_y = FromFloat<Y>(v[0]), up_y = FromFloat<Y>(v[1]);
        const float gate = Load(&gate_y, 0), up = Load(&up_y, 0);
        Store(y, out_row * features + unit, gate / (1.0f + __expf(-gate)) * up);
      } else {
#pragma unroll
        for (int k = 0; k < kOut; ++k) {
          if (!live[k]) continue;
          const int64_t at = out_row * w.rows + o[k];
          Store(y, at, accumulate ? Load(y, at) + v[k] : v[k]);
        }
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
  // A warp's kOut weight rows: kOut outputs, or one feature's gate and up rows.
  static_assert(kOut == 2, "the SiLU epilogue takes a feature's gate and up rows in one warp");
  const int64_t per_block = silu_mul ? kWarps : kWarps * kOut, features = silu_mul ? w.rows / 2 : w.rows;
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
