#include "worker/models/causal_lm.h"

#include <fmt/format.h>
#include <unistd.h>

#include "worker/models/deepseek.h"
#include "worker/models/llama.h"
#ifdef SHOAL_HAVE_CUDA
#include "worker/kernels/cuda/device.h"
#include "worker/models/cuda/cuda_causal_lm.h"
#endif

namespace shoal::worker {
namespace {

absl::StatusOr<std::unique_ptr<CausalLM>> CreateOnCuda(const LoadedModel& model, const ShardSpec& shard,
                                                       const CausalLMOptions& options) {
#ifdef SHOAL_HAVE_CUDA
  auto lm = CreateCudaCausalLM(model, shard, options);
  if (!lm.ok()) return lm.status();
  return std::unique_ptr<CausalLM>(std::move(*lm));
#else
  return absl::FailedPreconditionError(
      fmt::format("{}: device cuda: this build has no CUDA backend (built without CUDA; configure with "
                  "-DCUDAToolkit_ROOT, see scripts/setup_cuda.sh)",
                  model.path));
#endif
}

}  // namespace

int VisibleCudaDevices() {
#ifdef SHOAL_HAVE_CUDA
  std::string why_not;
  return cuda::CudaDeviceCount(&why_not);
#else
  return 0;
#endif
}

std::string CudaDeviceIdentity(int device) {
#ifdef SHOAL_HAVE_CUDA
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  const std::string bus = cuda::PciBusId(device);
  // Without its bus id a GPU is named by its index here: ranks that may share one then
  // look alike and stay on Gloo, the safe side.
  return bus.empty() ? fmt::format("{}/device-{}", host, device) : fmt::format("{}/{}", host, bus);
#else
  (void)device;
  return "";
#endif
}

void ResolveCudaDevice(int rank, CausalLMOptions* o) {
  if (o->device != Device::kCuda || o->cuda_device >= 0) return;
  const int devices = VisibleCudaDevices();
  o->cuda_device = devices > 0 ? rank % devices : 0;
}

absl::StatusOr<std::unique_ptr<CausalLM>> CreateCausalLM(const LoadedModel& model,
                                                         const ShardSpec& shard,
                                                         ThreadPool* pool,
                                                         const CausalLMOptions& options) {
  if (options.device == Device::kCuda) return CreateOnCuda(model, shard, options);
  switch (model.config.arch) {
    case Arch::kLlama:
    case Arch::kQwen2:  // llama plus q/k/v biases, which the config announces
      return CreateLlama(model, shard, pool, options);
    case Arch::kDeepseekV2:
    case Arch::kDeepseekV3:  // V3 differs in routing (sigmoid + noaux_tc), which the config announces
      return CreateDeepseek(model, shard, pool, options);
  }
  return absl::UnimplementedError(
      fmt::format("{}: architecture '{}' has no CPU implementation", model.path, model.config.arch_name));
}

}  // namespace shoal::worker
