#pragma once
// Host wrappers of the SIMT emulator's self-test kernels (simt_selftest_kernels.cu).
#include <cuda_runtime_api.h>

#include <cstdint>

namespace shoal::simt_selftest {

// out[b] = the sum of in[b * n .. b * n + n) by one block of n threads through shared
// memory and __syncthreads (n a power of two, at most 1024).
void BlockSums(cudaStream_t stream, const int32_t* in, int n, int blocks, int32_t* out);
// out[i] = the sum of its warp's values by a shuffle butterfly; scan[i] = the inclusive
// prefix sum within the warp by __shfl_up_sync; gathered[i] = the value of lane
// (7 * lane + 3) % 32 of its warp by __shfl_sync.
void WarpSumsAndScans(cudaStream_t stream, const int32_t* in, int n, int32_t* out, int32_t* scan, int32_t* gathered);
// Threads at or past `live` return at once; the others reduce through __syncthreads.
void SumWithExitedThreads(cudaStream_t stream, const int32_t* in, int threads, int live, int32_t* out);
// A full-mask shuffle after half the warp returned (the emulator ends the process).
void ShuffleAfterLanesExited(cudaStream_t stream, int32_t* out);
// A launch of `threads` threads per block (over 1024 is a bad configuration).
void LaunchWithThreads(cudaStream_t stream, int threads, int32_t* out);
// Each of two blocks of n threads: thread t writes s[t] = t + 1, then reads s[(t + 1) % n]
// with no barrier between (a race); out[b * n + t] is what it read.
void MissingBarrier(cudaStream_t stream, int n, int32_t* out);
// A 16-byte vector load from `p` (which faults on a GPU unless p is 16-byte aligned).
void VectorLoad(cudaStream_t stream, const char* p, uint32_t* out);
// out[t] = t + 1 for t < 32, launched through LaunchKernel (overlapping the kernel before
// it on a Hopper GPU); wait: whether the kernel calls WaitForPriorKernel first (without,
// the emulator ends the process).
void OverlappedLaunch(cudaStream_t stream, int32_t* out, bool wait);
// Four blocks of 32 threads, thread t copying in[4t .. 4t + 3] into shared memory by
// cp.async (async_copy.cuh). mode 0: waits, then out[32 b + t] = in[4 ((t + 1) % 32)]
// after a barrier; 1: out[32 b + t] is its copy's first word read before the wait (-1
// where the copy has not landed); 2: exits without waiting (the emulator ends the process).
void AsyncCopies(cudaStream_t stream, const int32_t* in, int mode, int32_t* out);
// Two blocks of 32 threads over `bytes` of dynamic shared memory (allow: opted in to more
// than 48 KB through AllowDynamicSharedMemory first): out[64 b + t] = t + 2 (mod 32 + 1),
// a neighbour's write, and out[64 b + 32 + t] a word no thread wrote. The launch's error.
cudaError_t DynamicShared(cudaStream_t stream, size_t bytes, bool allow, uint32_t* out);
// One block of one thread per element: out[b] = b + 1 + out[b - 1] as block b finds it (a
// read of another block's write in the same grid, which a GPU does not order).
void ReadTheBlockBefore(cudaStream_t stream, int blocks, int32_t* out);
// out[i] += 1 for i < n.
void AddOne(cudaStream_t stream, int32_t* out, int n);
// For each i < n, one thread: fused[i] = a[i] * b[i] + c[i] as written (nvcc fuses it by
// default), expf_[i] = expf(a[i]), fast_exp[i] = __expf(a[i]), rsqrt[i] = rsqrtf(b[i]).
void Arithmetic(cudaStream_t stream, const float* a, const float* b, const float* c, int n, float* fused,
                float* expf_, float* fast_exp, float* rsqrt);

}  // namespace shoal::simt_selftest
