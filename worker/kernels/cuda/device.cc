#include "worker/kernels/cuda/device.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <tuple>
#include <utility>

#include "worker/kernels/cuda/cuda_check.h"

namespace shoal::worker::cuda {

int CudaDeviceCount(std::string* why_not) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls do not report it again
    *why_not = std::string("no GPU: ") + cudaGetErrorString(err) + " (" + cudaGetErrorName(err) + ")";
    return 0;
  }
  if (n == 0) *why_not = "no GPU: the driver reports 0 devices";
  return n;
}

std::string DeviceDescription(int device) {
  cudaDeviceProp p{};
  SHOAL_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  char text[320];
  std::snprintf(text, sizeof(text), "%s (sm_%d%d, %.1f GiB)", p.name, p.major, p.minor,
                static_cast<double>(p.totalGlobalMem) / (1ull << 30));
  return text;
}

bool AttentionOnTensorCores() {
  static const bool tensor = [] {
    const char* env = std::getenv("SHOAL_CUDA_ATTENTION_CORES");
    return env == nullptr || std::strcmp(env, "f32") != 0;
  }();
  return tensor;
}

void AllowDynamicSharedMemory(const void* kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return;
  int device = 0;
  SHOAL_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  static std::set<std::tuple<const void*, int, size_t>> allowed;
  std::lock_guard lock(mutex);
  if (!allowed.emplace(kernel, device, bytes).second) return;
  SHOAL_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

bool OverlappedLaunches() {
  static const bool overlapped = [] {
    const char* env = std::getenv("SHOAL_CUDA_PDL");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return major >= 9;
  }();
  return overlapped;
}

std::string PciBusId(int device) {
  char id[64] = {};
  if (cudaDeviceGetPCIBusId(id, sizeof(id), device) != cudaSuccess) {
    cudaGetLastError();  // not sticky, but leave no error behind for the next check
    return "";
  }
  return id;
}

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes > 0) SHOAL_CUDA_CHECK(cudaMalloc(&data_, bytes));
}

bool DeviceBuffer::TryAllocate(size_t bytes, DeviceBuffer* out) {
  DeviceBuffer b;
  if (bytes > 0) {
    const cudaError_t err = cudaMalloc(&b.data_, bytes);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // not sticky, but clear it so the next check does not see it
      return false;
    }
    SHOAL_CUDA_CHECK(err);
  }
  b.bytes_ = bytes;
  *out = std::move(b);
  return true;
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) cudaFree(data_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::CopyFromHost(const void* host, size_t bytes) {
  SHOAL_CUDA_CHECK(cudaMemcpy(data_, host, bytes, cudaMemcpyHostToDevice));
}

void DeviceBuffer::CopyToHost(void* host, size_t bytes) const {
  SHOAL_CUDA_CHECK(cudaMemcpy(host, data_, bytes, cudaMemcpyDeviceToHost));
}

PinnedBuffer::PinnedBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes > 0) SHOAL_CUDA_CHECK(cudaMallocHost(&data_, bytes));
}

PinnedBuffer::~PinnedBuffer() {
  if (data_ != nullptr) cudaFreeHost(data_);
}

PinnedBuffer::PinnedBuffer(PinnedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFreeHost(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceMemory(size_t* free_bytes, size_t* total_bytes) {
  SHOAL_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
}

}  // namespace shoal::worker::cuda
