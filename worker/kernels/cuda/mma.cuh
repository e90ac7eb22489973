#pragma once
// One warp-wide multiply-add on the tensor cores: C += A B for a 16x8 f32 tile C, A 16x16
// and B 16x8 of f16 or bf16 (PTX mma.sync m16n8k16, sm_80 and newer), and the packing of
// f32 values into its operands. Device code only (included by .cu files).
//
// The fragments, for lane l of the warp with g = l / 4 and t = l % 4; a register holds
// two elements, the lower column (A) or row (B) in its low 16 bits:
//   a[0] = A[g][2t, 2t+1]     a[1] = A[g+8][2t, 2t+1]
//   a[2] = A[g][2t+8, 2t+9]   a[3] = A[g+8][2t+8, 2t+9]
//   b[0] = B[2t, 2t+1][g]     b[1] = B[2t+8, 2t+9][g]      (column g of B: consecutive k)
//   c[0], c[1] = C[g][2t, 2t+1]     c[2], c[3] = C[g+8][2t, 2t+1]
// so the C tiles of two neighbouring 8-column blocks are, rounded and packed, the A
// fragment of their 16 columns (how attention feeds its probabilities to the values).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "worker/kernels/cuda/elements.cuh"

namespace shoal::worker::cuda {

// The same product computed from the fragments through warp shuffles, in f32: what the
// SIMT emulator runs for MmaM16N8K16, so the emulated kernels depend on the layout above
// exactly as the hardware's do. Every lane of the warp must call it.
template <typename T>
__device__ __forceinline__ void MmaByShuffles(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  const int lane = static_cast<int>(threadIdx.x % 32), g = lane / 4, t = lane % 4;
  for (int k = 0; k < 4; ++k) {
    // Columns 2k, 2k+1 and 2k+8, 2k+9 of rows g and g+8 of A live in lane 4g + k.
    const float2 top_lo = Unpack<T>(__shfl_sync(0xffffffffu, a[0], 4 * g + k));
    const float2 bottom_lo = Unpack<T>(__shfl_sync(0xffffffffu, a[1], 4 * g + k));
    const float2 top_hi = Unpack<T>(__shfl_sync(0xffffffffu, a[2], 4 * g + k));
    const float2 bottom_hi = Unpack<T>(__shfl_sync(0xffffffffu, a[3], 4 * g + k));
    for (int n = 0; n < 2; ++n) {
      // The same rows of column 2t + n of B live in lane 4 (2t + n) + k.
      const float2 lo = Unpack<T>(__shfl_sync(0xffffffffu, b[0], 4 * (2 * t + n) + k));
      const float2 hi = Unpack<T>(__shfl_sync(0xffffffffu, b[1], 4 * (2 * t + n) + k));
      c[n] += top_lo.x * lo.x + top_lo.y * lo.y + top_hi.x * hi.x + top_hi.y * hi.y;
      c[2 + n] += bottom_lo.x * lo.x + bottom_lo.y * lo.y + bottom_hi.x * hi.x + bottom_hi.y * hi.y;
    }
  }
}

template <typename T>
__device__ __forceinline__ void MmaM16N8K16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "f16 or bf16 operands");
#if defined(SHOAL_SIMT)
  MmaByShuffles<T>(c, a, b);
#elif defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, __half>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#endif
}

// Words of a uint4, in memory order.
__device__ __forceinline__ uint32_t WordOf(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Four 8x8 matrices of 16-bit elements from shared memory in one warp-wide load (PTX
// ldmatrix .x4): lane 8i + r gives the address of row r of matrix i (8 elements, 16-byte
// aligned). Lane l = 4g + t receives in m[i] the word of elements (g, 2t) and (g, 2t + 1)
// of matrix i; with kTranspose, of elements (2t, g) and (2t + 1, g), as if the matrix had
// been stored by columns. So B's fragment for keys by rows of values (b[0] and b[1]: rows
// 2t, 2t + 1 and 2t + 8, 2t + 9 of column g) is two transposed matrices, rows 0-7 and
// 8-15, without the values being rearranged in shared memory first.
template <bool kTranspose>
__device__ __forceinline__ void LoadMatrices(const uint32_t* row, uint32_t (&m)[4]) {
#if defined(SHOAL_SIMT)
  // Each lane reads its row (a 16-byte load, so a misaligned address stops the emulator as
  // it faults on a GPU); the rows reach the lanes that want them through shuffles.
  const uint4 own = *reinterpret_cast<const uint4*>(row);
  const int lane = static_cast<int>(threadIdx.x % 32), g = lane / 4, t = lane % 4;
  const auto half = [](const uint4& v, int e) { return (WordOf(v, e / 2) >> (16 * (e % 2))) & 0xffffu; };
  for (int i = 0; i < 4; ++i) {
    if constexpr (kTranspose) {
      const uint4 r0 = __shfl_sync(0xffffffffu, own, 8 * i + 2 * t);
      const uint4 r1 = __shfl_sync(0xffffffffu, own, 8 * i + 2 * t + 1);
      m[i] = half(r0, g) | (half(r1, g) << 16);
    } else {
      m[i] = WordOf(__shfl_sync(0xffffffffu, own, 8 * i + g), t);
    }
  }
#elif defined(__CUDA_ARCH__)
  const auto at = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  if constexpr (kTranspose) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(m[0]), "=r"(m[1]), "=r"(m[2]), "=r"(m[3])
                 : "r"(at));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(m[0]), "=r"(m[1]), "=r"(m[2]), "=r"(m[3])
                 : "r"(at));
  }
#endif
}

// The bits of a T.
template <typename T>
__device__ __forceinline__ uint32_t ElementBits(T v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half_as_ushort(v);
  } else {
    return __bfloat16_as_ushort(v);
  }
}

// Two f32 values as one operand register, each rounded to nearest even (x0 in the low half).
template <typename T>
__device__ __forceinline__ uint32_t PackPair(float x0, float x1) {
  return ElementBits(FromFloat<T>(x0)) | (ElementBits(FromFloat<T>(x1)) << 16);
}

// x0 and x1 as the sum of two operand registers, hi their rounding and lo the rounding of
// what that left: a product with hi and one with lo add up to the f32 product within
// about 2^-16 (bf16) or 2^-22 (f16) of it, where hi alone is off by up to 2^-9 or 2^-12.
template <typename T>
__device__ __forceinline__ void SplitPair(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  const T h0 = FromFloat<T>(x0), h1 = FromFloat<T>(x1);
  hi = ElementBits(h0) | (ElementBits(h1) << 16);
  lo = PackPair<T>(x0 - static_cast<float>(h0), x1 - static_cast<float>(h1));
}

}  // namespace shoal::worker::cuda
