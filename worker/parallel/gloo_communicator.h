#pragma once
// Communicator over Gloo's TCP transport (CPU collectives). Ranks find each other
// through a gloo::rendezvous::Store (ours is served by the group leader over gRPC, see
// grpc_store.h); each communicator's keys live under its own prefix, so one store serves
// the whole group and its tensor-parallel subgroups.
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/parallel/communicator.h"

namespace gloo {
class Context;
namespace transport {
class UnboundBuffer;
}
namespace rendezvous {
class Store;
}
}  // namespace gloo

namespace shoal::worker {

struct GlooOptions {
  std::string prefix;            // unique per communicator and run
  int rank = 0;                  // in this communicator
  std::vector<int> group_ranks;  // group rank of each member; size() = communicator size
  std::string hostname = "127.0.0.1";  // address this rank listens on for its peers
  std::chrono::milliseconds timeout{30000};
};

class GlooCommunicator final : public Communicator {
 public:
  // Connects the full mesh (blocks until every member did, or the timeout).
  static absl::StatusOr<std::unique_ptr<GlooCommunicator>> Create(gloo::rendezvous::Store& store,
                                                                   const GlooOptions& options);
  ~GlooCommunicator() override;

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
  void SetTimeout(std::chrono::milliseconds timeout) override { timeout_ = timeout; }
  std::chrono::milliseconds timeout() const override { return timeout_; }

 private:
  GlooCommunicator() = default;
  // Every op goes through here: Gloo reports failures by throwing; we turn them into a
  // Status once and remember that the communicator is broken.
  template <typename Fn>
  absl::Status Guarded(const char* op, Fn&& fn);

  std::shared_ptr<gloo::Context> context_;
  std::string prefix_;
  int rank_ = 0;
  std::vector<int> group_ranks_;
  std::chrono::milliseconds timeout_{30000};
  std::chrono::milliseconds connect_timeout_{30000};  // the transport's own, fixed at Create
  uint32_t next_tag_ = 1;
  absl::Status broken_;
  // A send in flight owns a copy of its bytes: a caller that fails half-way through a step
  // (and frees its buffers) must not leave Gloo sending from freed memory.
  struct PendingSend {
    std::vector<std::byte> bytes;
    std::unique_ptr<gloo::transport::UnboundBuffer> buffer;
  };
  std::vector<PendingSend> pending_sends_;
};

}  // namespace shoal::worker
