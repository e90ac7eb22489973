#pragma once
// Communicator over NCCL for GPU groups. The spans passed to it point to device memory of
// the rank's current CUDA device. NCCL itself never times out, so every call waits on its
// stream by polling, and past the timeout (or on an asynchronous NCCL error) aborts the
// communicator and returns an error, which keeps the interface's "never hang" promise.
// The unique id comes from the leader through the group store (rank 0 creates it with
// NewUniqueId and publishes it; the others read it).
#include <cuda_runtime.h>
#include <nccl.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/parallel/communicator.h"

namespace gloo::rendezvous {
class Store;
}

namespace shoal::worker {

// Whether libnccl loads here (nccl_library.h); *why_not says why not.
bool NcclAvailable(std::string* why_not);

class NcclCommunicator final : public Communicator {
 public:
  // FAILED_PRECONDITION "no NCCL: ..." where libnccl does not load.
  static absl::StatusOr<ncclUniqueId> NewUniqueId();
  // The communicator lives on `cuda_device`, which every call makes current first.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(const ncclUniqueId& id, int rank,
                                                                  std::vector<int> group_ranks,
                                                                  std::chrono::milliseconds timeout,
                                                                  int cuda_device);
  // The unique id through the group's store (the leader's gRPC GroupRendezvous): member 0
  // creates it and publishes it under `key`, the others wait for it.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> CreateThroughStore(gloo::rendezvous::Store& store,
                                                                              const std::string& key, int rank,
                                                                              std::vector<int> group_ranks,
                                                                              std::chrono::milliseconds timeout,
                                                                              int cuda_device);
  ~NcclCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(group_ranks_.size()); }
  int group_rank(int rank) const override { return group_ranks_.at(rank); }

  absl::Status AllReduceSum(std::span<float> data) override;
  absl::Status AllGather(std::span<const float> in, std::span<float> out) override;
  absl::Status Broadcast(std::span<std::byte> data, int root) override;
  absl::Status SendAsync(std::span<const std::byte> data, int dst, uint64_t tag) override;
  absl::Status WaitSends() override;
  absl::Status Recv(std::span<std::byte> data, int src, uint64_t tag) override;
  absl::Status Barrier() override;
  bool device_memory() const override { return true; }
  void SetTimeout(std::chrono::milliseconds timeout) override { timeout_ = timeout; }
  std::chrono::milliseconds timeout() const override { return timeout_; }

 private:
  NcclCommunicator() = default;
  // Makes device_ current; the broken state if the communicator already failed.
  absl::Status UseDevice();
  // Waits for the stream with the timeout; aborts the communicator on error or expiry.
  absl::Status Sync(const char* op);
  absl::Status Check(ncclResult_t r, const char* op);
  // After an enqueueing call: waits (bounded) while it is still ncclInProgress.
  absl::Status Enqueued(ncclResult_t r, const char* op);

  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  int device_ = 0;
  int rank_ = 0;
  std::vector<int> group_ranks_;
  std::chrono::milliseconds timeout_{30000};
  float* scratch_ = nullptr;  // one float for Barrier
  absl::Status broken_;
};

}  // namespace shoal::worker
