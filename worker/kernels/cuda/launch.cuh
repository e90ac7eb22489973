#pragma once
// Kernel launches that may overlap the tail of the kernel before them on the stream
// (Hopper's programmatic dependent launch). A decode step is hundreds of short kernels;
// between two of them the GPU otherwise drains the first grid, then launches the second
// and schedules its blocks, about a microsecond each time. Launched with
// cudaLaunchAttributeProgrammaticStreamSerialization, the next grid's blocks are placed
// while the previous grid's last blocks still run, and wait inside the kernel
// (WaitForPriorKernel, griddepcontrol.wait) until that grid has finished and its writes are
// visible. Included by .cu files only.
//
// The rule that makes it safe: every kernel launched through LaunchKernel calls
// WaitForPriorKernel() before it reads or writes memory another kernel touches (its first
// statement, in every kernel here), in every thread, early exits included. Then each
// grid finishes only after the one before it, so the order of the whole stream holds.
// The SIMT emulator ends the process naming the kernel when a thread of such a launch
// exits without the wait. SHOAL_CUDA_PDL=0 in the environment launches every kernel the
// plain way (the wait is then a no-op). Graph capture keeps the overlap (programmatic
// edges).
#include <cuda_runtime.h>

#include <utility>

#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/device.h"

namespace shoal::worker::cuda {

// The first thing each kernel does: waits until the previous kernel on the stream has
// finished and its writes are visible (a no-op when the launch did not overlap it), then
// lets the next kernel's blocks be placed (they wait in turn).
__device__ __forceinline__ void WaitForPriorKernel() {
#if defined(SHOAL_SIMT)
  ::shoal::simt::WaitForPriorGrid();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// A kernel's dynamic shared memory (its launch's shared_bytes) as an array of uint4, 16-byte
// aligned, which the kernel views as its own arrays: SHOAL_DYNAMIC_SHARED(name). One type
// for every kernel, as CUDA wants one declaration of the extern array per source file.
// Above 48 KB the host calls AllowDynamicSharedMemory (device.h) before the launch.
#if defined(SHOAL_SIMT)
#define SHOAL_DYNAMIC_SHARED(name) uint4* name = static_cast<uint4*>(::shoal::simt::DynamicShared())
#else
#define SHOAL_DYNAMIC_SHARED(name) extern __shared__ uint4 name[]
#endif

// kernel<<<grid, block, shared_bytes, stream>>>(args...), overlapping the previous kernel
// on a created stream where OverlappedLaunches() (device.h: sm_90 or newer, earlier GPUs
// have no griddepcontrol; SHOAL_CUDA_PDL not "0"); `name` names the kernel in the
// emulator's messages. A bad configuration ends the process (as SHOAL_CUDA_CHECK_LAUNCH
// after a plain launch).
template <typename... P, typename... A>
void LaunchKernel(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t shared_bytes,
                  cudaStream_t stream, A&&... args) {
#if defined(SHOAL_SIMT)
  ::shoal::simt::LaunchConfig{grid, block, shared_bytes, stream, /*overlapped=*/true}.Run(name, kernel,
                                                                                          std::forward<A>(args)...);
  SHOAL_CUDA_CHECK_LAUNCH();
#else
  (void)name;
  cudaLaunchAttribute overlap[1];
  overlap[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  overlap[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = overlap;
  // Created streams only (the model's, graph captures): the legacy stream, which
  // synchronizes with every other blocking stream, keeps plain launches.
  config.numAttrs = stream != nullptr && OverlappedLaunches() ? 1 : 0;
  SHOAL_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<A>(args)...));
#endif
}

}  // namespace shoal::worker::cuda
