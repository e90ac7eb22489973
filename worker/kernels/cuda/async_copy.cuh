#pragma once
// Copies from global into shared memory that do not pass through registers (PTX cp.async,
// sm_80 and newer). A thread issues every 16-byte copy of its part of a tile before it
// waits for any, so a block has the whole tile in flight where a load-then-store loop has
// one or a few loads per thread (a decode step's attention reads its cache at the rate of
// the bytes in flight); with two buffers the next tile streams in while the tensor cores
// work on this one. Device code only (included by .cu files).
//
// The protocol: CopyAsync16 any number of times, CommitCopies to close them into a group,
// WaitCopies<N> until at most N of the thread's groups are still in flight; a thread's
// copies are then in shared memory for it, and for the block after a __syncthreads; a
// buffer other threads read must be behind a __syncthreads before copies into it are
// issued. The SIMT emulator lands a copy at the wait in some blocks and at the issue in
// others, so a read before the wait (or the barrier after it) and an overwrite before the
// readers' barrier both give wrong results there too.
#include <cstdint>

namespace shoal::worker::cuda {

// 16 bytes from src to dst (both 16-byte aligned; dst in shared memory). With read false
// dst is zero-filled and src is not read (pass any valid address).
__device__ __forceinline__ void CopyAsync16(void* dst, const void* src, bool read) {
#if defined(SHOAL_SIMT)
  ::shoal::simt::CopyAsync(dst, src, 16, read ? 16 : 0);
#elif defined(__CUDA_ARCH__)
  const auto to = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(to), "l"(src), "r"(read ? 16 : 0) : "memory");
#endif
}

// Closes the copies this thread issued since its last commit into a group (an empty group
// when there were none, so a loop can commit once per tile and wait by tile count).
__device__ __forceinline__ void CommitCopies() {
#if defined(SHOAL_SIMT)
  ::shoal::simt::CommitAsyncCopies();
#elif defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// Until at most kOutstanding of this thread's committed groups are in flight.
template <int kOutstanding>
__device__ __forceinline__ void WaitCopies() {
#if defined(SHOAL_SIMT)
  ::shoal::simt::WaitAsyncCopies(kOutstanding);
#elif defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;" ::"n"(kOutstanding) : "memory");
#endif
}

// One step of a two-tile pipeline, at the top of each tile's iteration: the next tile's
// copies go out (`load_next()`, which commits them, when `more` tiles follow; an empty
// group after the last, so the count stays one a tile), then this tile's are waited for
// (at most the newest group in flight) and the block meets, so every thread's copies of
// it are visible. The iteration ends with a __syncthreads before the next step's copies
// overwrite the tile it read.
template <typename LoadNext>
__device__ __forceinline__ void NextTileThenWait(bool more, LoadNext&& load_next) {
  if (more) {
    load_next();
  } else {
    CommitCopies();
  }
  WaitCopies<1>();
  __syncthreads();
}

}  // namespace shoal::worker::cuda
