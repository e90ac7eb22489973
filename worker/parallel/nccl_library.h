#pragma once
// libnccl loaded with dlopen on first use rather than linked, as cuBLAS is (gemm.h): a
// worker binary then starts on machines without NCCL (CPU nodes, GPU nodes whose image
// lacks it, the GPU test bundle, which is too small for NVIDIA's 200 MB wheel) and
// reports why a GPU group falls back to Gloo instead of failing to load.
#include <nccl.h>

#include <string>

namespace shoal::worker {

// The NCCL entry points NcclCommunicator uses, resolved from the loaded library.
struct NcclLibrary {
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRankConfig) comm_init_rank_config = nullptr;
  decltype(&ncclCommGetAsyncError) comm_get_async_error = nullptr;
  decltype(&ncclCommAbort) comm_abort = nullptr;
  decltype(&ncclCommDestroy) comm_destroy = nullptr;
  decltype(&ncclGetErrorString) get_error_string = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclAllGather) all_gather = nullptr;
  decltype(&ncclBroadcast) broadcast = nullptr;
  decltype(&ncclSend) send = nullptr;
  decltype(&ncclRecv) recv = nullptr;
};

// libnccl.so.2 (the executable's RUNPATH or LD_LIBRARY_PATH), loaded once; null with
// *why_not ("no NCCL: ...") when it or an entry point is missing.
const NcclLibrary* LoadNccl(std::string* why_not);

}  // namespace shoal::worker
