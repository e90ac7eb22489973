#include "tests/simt/simt_selftest_kernels.h"

#include "worker/kernels/cuda/async_copy.cuh"
#include "worker/kernels/cuda/launch.cuh"

namespace shoal::simt_selftest {
namespace {

// Launched to overlap the kernel before it: every thread must wait for that kernel first.
__global__ void OverlappedKernel(int32_t* out, bool wait) {
  if (wait) worker::cuda::WaitForPriorKernel();
  out[threadIdx.x] = static_cast<int32_t>(threadIdx.x) + 1;
}

__global__ void BlockSumKernel(const int32_t* in, int32_t* out) {
  __shared__ int32_t s[1024];
  const int t = threadIdx.x, n = blockDim.x;
  s[t] = in[blockIdx.x * n + t];
  __syncthreads();
  for (int half = n / 2; half > 0; half /= 2) {
    if (t < half) s[t] += s[t + half];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

__global__ void WarpKernel(const int32_t* in, int n, int32_t* out, int32_t* scan, int32_t* gathered) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x % 32;
  const int32_t v = i < n ? in[i] : 0;
  int32_t sum = v;
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  int32_t prefix = v;
  for (int d = 1; d < 32; d *= 2) {
    const int32_t up = __shfl_up_sync(0xffffffffu, prefix, d);
    if (lane >= d) prefix += up;
  }
  const int32_t from = __shfl_sync(0xffffffffu, v, (lane * 7 + 3) % 32);
  if (i < n) {
    out[i] = sum;
    scan[i] = prefix;
    gathered[i] = from;
  }
}

__global__ void ExitedKernel(const int32_t* in, int live, int32_t* out) {
  __shared__ int32_t total;
  if (static_cast<int>(threadIdx.x) >= live) return;
  if (threadIdx.x == 0) total = 0;
  __syncthreads();
  atomicAdd(&total, in[threadIdx.x]);
  __syncthreads();
  if (threadIdx.x == 0) *out = total;
}

__global__ void ShuffleAfterExitKernel(int32_t* out) {
  if (threadIdx.x >= 16) return;
  *out = __shfl_xor_sync(0xffffffffu, static_cast<int32_t>(threadIdx.x), 1);
}

__global__ void CountKernel(int32_t* out) { atomicAdd(out, 1); }

__global__ void MissingBarrierKernel(int32_t* out) {
  __shared__ int32_t s[1024];
  const int t = threadIdx.x, n = blockDim.x;
  s[t] = 0;  // what a read finds before the neighbour's write
  __syncthreads();
  s[t] = t + 1;
  out[blockIdx.x * n + t] = s[(t + 1) % n];  // no __syncthreads: which value is here depends on order
}

__global__ void VectorLoadKernel(const char* p, uint32_t* out) {
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  *out = v.x ^ v.y ^ v.z ^ v.w;
}

// mode 0: copies, waits, a barrier, then reads the next thread's copy; 1: reads its own
// copy before waiting; 2: exits without waiting.
__global__ void AsyncCopyKernel(const int32_t* in, int mode, int32_t* out) {
  __shared__ __align__(16) int32_t s[32 * 4];
  const int t = threadIdx.x;
  for (int i = 0; i < 4; ++i) s[4 * t + i] = -1;
  __syncthreads();
  worker::cuda::CopyAsync16(&s[4 * t], in + 4 * t, true);
  worker::cuda::CommitCopies();
  if (mode == 2) return;
  if (mode == 1) out[blockIdx.x * 32 + t] = s[4 * t];
  worker::cuda::WaitCopies<0>();
  __syncthreads();
  if (mode == 0) out[blockIdx.x * 32 + t] = s[4 * ((t + 1) % 32)];
}

// Thread t writes word t of the dynamic shared memory (`words` of them) and, after a
// barrier, reads word t + blockDim.x (never written: the emulator's fill) into out.
__global__ void DynamicSharedKernel(int words, uint32_t* out) {
  SHOAL_DYNAMIC_SHARED(shared);
  auto* w = reinterpret_cast<uint32_t*>(shared);
  const int t = threadIdx.x, n = blockDim.x;
  w[t] = static_cast<uint32_t>(t) + 1;
  w[words - 1 - t] = 0;
  __syncthreads();
  out[blockIdx.x * 2 * n + t] = w[(t + 1) % n];
  out[blockIdx.x * 2 * n + n + t] = w[t + n];
}

__global__ void ReadTheBlockBeforeKernel(int32_t* out) {
  const int b = blockIdx.x;
  out[b] = b + 1 + (b > 0 ? out[b - 1] : 0);
}

__global__ void AddOneKernel(int32_t* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] += 1;
}

__global__ void ArithmeticKernel(const float* a, const float* b, const float* c, int n, float* fused, float* expf_,
                                 float* fast_exp, float* rsqrt) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  fused[i] = a[i] * b[i] + c[i];
  expf_[i] = expf(a[i]);
  fast_exp[i] = __expf(a[i]);
  rsqrt[i] = rsqrtf(b[i]);
}

}  // namespace

void BlockSums(cudaStream_t stream, const int32_t* in, int n, int blocks, int32_t* out) {
  BlockSumKernel<<<blocks, n, 0, stream>>>(in, out);
}

void WarpSumsAndScans(cudaStream_t stream, const int32_t* in, int n, int32_t* out, int32_t* scan,
                      int32_t* gathered) {
  WarpKernel<<<(n + 63) / 64, 64, 0, stream>>>(in, n, out, scan, gathered);
}

void OverlappedLaunch(cudaStream_t stream, int32_t* out, bool wait) {
  worker::cuda::LaunchKernel("OverlappedKernel", OverlappedKernel, 1, 32, 0, stream, out, wait);
}

void SumWithExitedThreads(cudaStream_t stream, const int32_t* in, int threads, int live, int32_t* out) {
  ExitedKernel<<<1, threads, 0, stream>>>(in, live, out);
}

void ShuffleAfterLanesExited(cudaStream_t stream, int32_t* out) { ShuffleAfterExitKernel<<<1, 32, 0, stream>>>(out); }

void LaunchWithThreads(cudaStream_t stream, int threads, int32_t* out) {
  CountKernel<<<1, threads, 0, stream>>>(out);
}

void MissingBarrier(cudaStream_t stream, int n, int32_t* out) { MissingBarrierKernel<<<2, n, 0, stream>>>(out); }

void VectorLoad(cudaStream_t stream, const char* p, uint32_t* out) { VectorLoadKernel<<<1, 1, 0, stream>>>(p, out); }

void AsyncCopies(cudaStream_t stream, const int32_t* in, int mode, int32_t* out) {
  AsyncCopyKernel<<<4, 32, 0, stream>>>(in, mode, out);
}

cudaError_t DynamicShared(cudaStream_t stream, size_t bytes, bool allow, uint32_t* out) {
  if (allow) worker::cuda::AllowDynamicSharedMemory(reinterpret_cast<const void*>(&DynamicSharedKernel), bytes);
  DynamicSharedKernel<<<2, 32, bytes, stream>>>(static_cast<int>(bytes / 4), out);
  return cudaGetLastError();
}

void ReadTheBlockBefore(cudaStream_t stream, int blocks, int32_t* out) {
  ReadTheBlockBeforeKernel<<<blocks, 1, 0, stream>>>(out);
}

void AddOne(cudaStream_t stream, int32_t* out, int n) { AddOneKernel<<<(n + 127) / 128, 128, 0, stream>>>(out, n); }

void Arithmetic(cudaStream_t stream, const float* a, const float* b, const float* c, int n, float* fused,
                float* expf_, float* fast_exp, float* rsqrt) {
  ArithmeticKernel<<<(n + 127) / 128, 128, 0, stream>>>(a, b, c, n, fused, expf_, fast_exp, rsqrt);
}

}  // namespace shoal::simt_selftest
