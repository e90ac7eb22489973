#pragma once
// The float element types the CUDA kernels read and write (f32, f16, bf16), shared by
// every .cu file: loads widen to f32, stores round to nearest even, and a DType picks the
// kernel instantiation. Device code only (included by .cu files).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "worker/kernels/cuda/cuda_check.h"
#include "worker/model/dtype.h"

namespace shoal::worker::cuda {

template <typename T>
__device__ __forceinline__ float Load(const T* p, int64_t i) {
  if constexpr (std::is_same_v<T, float>) {
    return p[i];
  } else if constexpr (std::is_same_v<T, __half>) {
    return __half2float(p[i]);
  } else {
    return __bfloat162float(p[i]);
  }
}

template <typename T>
__device__ __forceinline__ T FromFloat(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(v);
  } else {
    return __float2bfloat16_rn(v);
  }
}

template <typename T>
__device__ __forceinline__ void Store(T* p, int64_t i, float v) {
  p[i] = FromFloat<T>(v);
}

// A 32-bit word of elements as they lie in memory, as f32: one f32 (x; y is 0), or two
// f16/bf16 (x the lower address).
template <typename T>
__device__ __forceinline__ float2 Unpack(uint32_t w) {
  if constexpr (std::is_same_v<T, float>) {
    return make_float2(__uint_as_float(w), 0.0f);
  } else if constexpr (std::is_same_v<T, __half>) {
    return make_float2(__half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu))),
                       __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16))));
  } else {
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
  }
}

// Calls fn(T{}) with the CUDA element type of `t`; any other type ends the process naming
// `what` (callers validate their types first).
template <typename Fn>
void WithFloatType(DType t, const char* what, Fn&& fn) {
  switch (t) {
    case DType::kF32: fn(float{}); return;
    case DType::kF16: fn(__half{}); return;
    case DType::kBF16: fn(__nv_bfloat16{}); return;
    default: DieOnCudaError(what, DTypeName(t).data(), __FILE__, __LINE__);
  }
}

}  // namespace shoal::worker::cuda
