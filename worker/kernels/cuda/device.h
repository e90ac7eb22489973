#pragma once
// Finding a GPU, and device and pinned host memory with an owner.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

namespace shoal::worker::cuda {

// The number of usable GPUs; 0 with *why_not saying why there are none ("no GPU: …", no
// driver or no device): the cuda tests skip on that, a worker asked to use CUDA fails.
// Plain values rather than absl::Status: the kernels depend on the CUDA toolkit alone,
// so they also build on a GPU machine that has nothing else installed.
int CudaDeviceCount(std::string* why_not);

// "NVIDIA H200 (sm_90, 139.8 GiB)" for logs and benchmark output.
std::string DeviceDescription(int device);
// Whether kernels launch overlapping the one before them on the stream (launch.cuh):
// sm_90 or newer and SHOAL_CUDA_PDL not "0"; decided once per process.
bool OverlappedLaunches();
// Whether attention may run on the tensor cores (AttentionCores::kBest, attention.h):
// false when SHOAL_CUDA_ATTENTION_CORES is "f32", so a whole model can be timed on the
// f32-core kernels too; decided once per process.
bool AttentionOnTensorCores();
// Lets `kernel` (a __global__ function) launch with `bytes` of dynamic shared memory on the
// current device: above 48 KB a kernel must opt in (cudaFuncSetAttribute), once per device,
// remembered here so a launch pays for it once; a size the device refuses ends the process.
void AllowDynamicSharedMemory(const void* kernel, size_t bytes);

// The device's PCI bus id ("0000:17:00.0"), which tells two ranks on one machine whether
// they share a GPU whatever each one's CUDA_VISIBLE_DEVICES numbering; "" on error.
std::string PciBusId(int device);

// cudaMalloc'd bytes, freed with the buffer. Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  // Like the constructor, but false (and *out untouched) instead of ending the process when
  // the device has no room: a model or KV cache too big for the GPU is an error to report.
  static bool TryAllocate(size_t bytes, DeviceBuffer* out);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }
  void CopyFromHost(const void* host, size_t bytes);  // synchronous
  void CopyToHost(void* host, size_t bytes) const;    // synchronous

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host memory (cudaMallocHost), freed with the buffer: staging for
// cudaMemcpyAsync, which copies pageable memory synchronously through a bounce buffer.
// Move-only.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t bytes);
  ~PinnedBuffer();
  PinnedBuffer(PinnedBuffer&& other) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Free and total bytes of the current device (cudaMemGetInfo), for sizing the KV cache.
void DeviceMemory(size_t* free_bytes, size_t* total_bytes);

}  // namespace shoal::worker::cuda
