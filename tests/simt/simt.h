#pragma once
// Prelude for compiling a CUDA source as host C++ (`g++ -include tests/simt/simt.h`, after
// rewrite_launches.py turned its `<<<...>>>` launches into LaunchConfig{...}.Run calls):
// every CUDA thread of a block becomes a fiber, __syncthreads and warp shuffles are
// barriers between them, and the blocks of a grid run one after another. The point is to
// run the kernels' index arithmetic, loops, reductions and synchronization on a machine
// without a GPU, against the same CPU references the GPU tests use; it says nothing about
// speed, and floating-point intrinsics are the host's (__expf is expf).
//
// The CUDA headers come first so that their own definitions of __global__, __shared__ and
// friends are replaced by ours below (their include guards keep later includes quiet).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <bit>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

// Sources compiled for the emulator can tell (worker/kernels/cuda/launch.cuh does).
#define SHOAL_SIMT 1

namespace shoal::simt {

// The running fiber's coordinates (valid only inside a kernel).
const uint3& ThreadIdx();
const uint3& BlockIdx();
const dim3& BlockDim();
const dim3& GridDim();

// Block-wide barrier: every live thread of the block arrives before any continues.
void SyncThreads();
// Warp-wide barrier (a full mask only, as WarpExchange).
void SyncWarp(unsigned mask);

// Publishes `size` bytes of this lane's value to its warp, waits for every live lane of
// the warp, and copies lane `src`'s value into `out`. A full mask is the only one our
// kernels use; another one, or a warp with exited lanes, ends the process with a message.
void WarpExchange(unsigned mask, const void* value, size_t size, int src_lane, void* out);
int LaneId();

// Runs `body` once per thread of `grid` x `block` on `stream` (now, or recorded into the
// stream's capture). An invalid configuration is the launch's error, as cudaGetLastError
// reports it. `overlapped`: a launch that may overlap the grid before it on a GPU
// (launch.cuh), so each of its threads must call WaitForPriorGrid before it exits; one
// that does not ends the process naming the kernel.
// shared_bytes: the block's dynamic shared memory, at most 48 KB unless
// cudaFuncSetAttribute(function, cudaFuncAttributeMaxDynamicSharedMemorySize) allowed more.
void Launch(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream, std::function<void()> body,
            const char* kernel, const void* function, bool overlapped);

// The running block's dynamic shared memory (16-byte aligned; nullptr for a launch that
// gave none). It starts as 0xff bytes in every block, as the hardware leaves it undefined,
// so a read of a word the block never wrote gives a NaN or a huge integer, not a zero.
void* DynamicShared();

// griddepcontrol.wait: blocks run one grid after another here, so it only records that
// the thread waited.
void WaitForPriorGrid();

// cp.async (worker/kernels/cuda/async_copy.cuh): a copy of `bytes` into shared memory, the
// first src_bytes read from src and the rest zeroed. Half the blocks perform it only when
// its thread waits for its group (reading the buffer before the wait sees the old
// contents), the other half at once (overwriting a tile other threads still read, if no
// barrier came first): the two ends of what the hardware may do. A thread that exits with
// copies it never waited for ends the process, as does a copy off its alignment.
void CopyAsync(void* dst, const void* src, int bytes, int src_bytes);
void CommitAsyncCopies();
void WaitAsyncCopies(int outstanding_groups);

struct LaunchConfig {
  dim3 grid;
  dim3 block;
  size_t shared_bytes = 0;
  cudaStream_t stream = nullptr;
  bool overlapped = false;

  template <typename... P, typename... A>
  void Run(const char* name, void (*kernel)(P...), A&&... args) const {
    // Arguments convert to the kernel's parameter types once, as a launch copies them.
    std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    Launch(grid, block, shared_bytes, stream, [kernel, params] { std::apply(kernel, params); }, name,
           reinterpret_cast<const void*>(kernel), overlapped);
  }
};

template <typename T>
T ShuffleXor(unsigned mask, T v, int lane_mask, int width) {
  const int lane = LaneId();
  const int src = (lane & ~(width - 1)) | ((lane ^ lane_mask) & (width - 1));
  T out;
  WarpExchange(mask, &v, sizeof(T), src, &out);
  return out;
}

template <typename T>
T ShuffleIndex(unsigned mask, T v, int src_lane, int width) {
  const int lane = LaneId();
  const int src = (lane & ~(width - 1)) | (src_lane & (width - 1));
  T out;
  WarpExchange(mask, &v, sizeof(T), src, &out);
  return out;
}

template <typename T>
T ShuffleUp(unsigned mask, T v, unsigned delta, int width) {
  const int lane = LaneId();
  const int in_segment = lane & (width - 1);
  const int src = in_segment >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane;
  T out;
  WarpExchange(mask, &v, sizeof(T), src, &out);
  return out;
}

}  // namespace shoal::simt

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __constant__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __constant__ static
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)

#define threadIdx (::shoal::simt::ThreadIdx())
#define blockIdx (::shoal::simt::BlockIdx())
#define blockDim (::shoal::simt::BlockDim())
#define gridDim (::shoal::simt::GridDim())
inline constexpr int warpSize = 32;

inline void __syncthreads() { ::shoal::simt::SyncThreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::shoal::simt::SyncWarp(mask); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::shoal::simt::ShuffleXor(mask, v, lane_mask, width);
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  return ::shoal::simt::ShuffleIndex(mask, v, src_lane, width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::shoal::simt::ShuffleUp(mask, v, delta, width);
}

// The lanes of `mask` whose predicate holds, as a bit each: an OR over the warp by the
// shuffles above, so a lane outside the warp's convergence fails as a shuffle does.
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  unsigned bits = predicate ? 1u << ::shoal::simt::LaneId() : 0u;
  for (int offset = 16; offset > 0; offset /= 2) bits |= ::shoal::simt::ShuffleXor(mask, bits, offset, 32);
  return bits & mask;
}
inline int __popc(unsigned v) { return std::popcount(v); }
// 1 + the lowest set bit's position (0 for none); the leading zeros (32 for 0).
inline int __ffs(int v) { return v == 0 ? 0 : std::countr_zero(static_cast<unsigned>(v)) + 1; }
inline int __clz(int v) { return std::countl_zero(static_cast<unsigned>(v)); }

// Fibers of one block run on one host thread, so atomics are plain read-modify-writes.
template <typename T>
T atomicMin(T* p, T v) {
  const T old = *p;
  if (v < old) *p = v;
  return old;
}
template <typename T>
T atomicMax(T* p, T v) {
  const T old = *p;
  if (old < v) *p = v;
  return old;
}
template <typename T>
T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}

#if defined(SHOAL_SIMT_GPU_ARITHMETIC)
// A GPU's arithmetic where it leaves the host's (-DSHOAL_SIMT_GPU_ARITHMETIC=ON builds the
// rewritten sources with -ffp-contract=fast -mfma, as nvcc fuses a * b + c by default):
// __expf is ex2.approx(x * log2 e), so the product's rounding grows its error with |x|;
// expf and rsqrtf are within CUDA's 2 ulps of the correctly rounded value, not the
// host's. The ulps each one moves by are a hash of its argument (reproducible, and equal
// arguments still give equal results); exact cases the hardware keeps exact stay so.
namespace shoal::simt {
inline float NudgedUlps(float r, float x, int most) {
  uint32_t h;
  std::memcpy(&h, &x, sizeof(h));
  h ^= h >> 16, h *= 0x7feb352du, h ^= h >> 15, h *= 0x846ca68bu, h ^= h >> 16;
  if (!std::isfinite(r) || r == 0.0f) return r;
  const int ulps = static_cast<int>(h % static_cast<uint32_t>(2 * most + 1)) - most;
  for (int i = 0; i < (ulps < 0 ? -ulps : ulps); ++i) r = std::nextafter(r, ulps < 0 ? 0.0f : INFINITY);
  return r;
}
}  // namespace shoal::simt
inline float __expf(float x) {
  const float r = std::exp2(x * 1.44269504f);
  return x == 0.0f ? r : ::shoal::simt::NudgedUlps(r, x, 1);
}
inline float shoal_simt_gpu_expf(float x) { return x == 0.0f ? 1.0f : ::shoal::simt::NudgedUlps(std::exp(x), x, 2); }
#define expf(x) shoal_simt_gpu_expf(x)
inline float rsqrtf(float x) {
  return ::shoal::simt::NudgedUlps(static_cast<float>(1.0 / std::sqrt(static_cast<double>(x))), x, 2);
}
// The named roundings stay single ones under contraction: the empty asm keeps the product
// (or sum) from fusing with what uses it.
inline float __fmul_rn(float a, float b) {
  float r = a * b;
  asm("" : "+x"(r));
  return r;
}
inline float __fadd_rn(float a, float b) {
  float r = a + b;
  asm("" : "+x"(r));
  return r;
}
inline float __fsub_rn(float a, float b) {
  float r = a - b;
  asm("" : "+x"(r));
  return r;
}
#else
inline float __expf(float x) { return std::exp(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
// simt sources build with -ffp-contract=off, so these are the single roundings they name.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
#endif
inline float __logf(float x) { return std::log(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline uint32_t __float_as_uint(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return u;
}
inline float __uint_as_float(uint32_t u) {
  float v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}

// Device code's min/max take mixed integer types (CUDA has overloads for them).
template <typename A, typename B>
constexpr std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
template <typename A, typename B>
constexpr std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}
