#pragma once
// One rank's membership in a group: how it learns who it is (flags or the operator's
// env vars), joins the leader's rendezvous, and connects its collectives: one
// communicator over the whole group (step broadcast, pipeline send/recv, health probe)
// and one over the tensor ranks of its own pipeline stage (the all-reduces inside a layer).
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "shoal/v1/group.grpc.pb.h"
#include "worker/parallel/communicator.h"
#include "worker/parallel/group_layout.h"
#include "worker/parallel/tensor_transport.h"

namespace shoal::worker {

class RendezvousService;

// The environment the operator sets on every pod of a group (DESIGN.md), named once.
inline constexpr char kEnvGroup[] = "SHOAL_GROUP";                 // group index, for logs
inline constexpr char kEnvPodRank[] = "SHOAL_POD_RANK";            // this rank; 0 = leader
inline constexpr char kEnvPodsPerGroup[] = "SHOAL_PODS_PER_GROUP";  // ranks in the group
inline constexpr char kEnvLeaderAddr[] = "SHOAL_LEADER_ADDR";       // host:port of the leader's rendezvous
inline constexpr char kEnvTensorParallel[] = "SHOAL_TENSOR_PARALLEL";
inline constexpr char kEnvPipelineParallel[] = "SHOAL_PIPELINE_PARALLEL";

struct GroupOptions {
  int group = 0;
  int rank = 0;
  int world_size = 0;          // 0 = tensor * pipeline (leader) / whatever the leader says (follower)
  std::string leader_address;  // host:port of the leader's GroupRendezvous
  // The address this rank's collectives listen on; with SHOAL_LEADER_ADDR on another host,
  // ApplyGroupEnv makes it this machine's hostname.
  std::string host = "127.0.0.1";
  // The leader decides these and hands them to the followers at Join.
  int tensor = 1;
  int pipeline = 1;
  std::vector<int64_t> pipeline_layers;  // layers per stage; empty = balanced
  int micro_batches = 0;                 // per step in the pipeline; 0 = pipeline
  // Fewer micro-batches when a step has few tokens: each micro-batch reads the stage's
  // weights again, so small decode steps run whole (see bench/README.md).
  int min_micro_batch_tokens = 16;
  // Leader: the GroupRendezvous service already registered on the caller's gRPC server
  // (shoal-worker's, when SHOAL_LEADER_ADDR points at its serving port); null = Join
  // serves one itself on leader_address's port.
  RendezvousService* rendezvous = nullptr;
  // This rank's GPU, when its shard runs on one (the group runtime fills these from the
  // model options): the device index and CudaDeviceIdentity's "hostname/PCI bus id".
  int cuda_device = -1;
  std::string gpu_identity;
  // Tensor collectives over NCCL where the stage's ranks all can (tensor_transport.h), or
  // always over Gloo (--tensor-collectives gloo).
  bool allow_nccl = true;
  std::chrono::milliseconds join_timeout{120000};
  std::chrono::milliseconds collective_timeout{30000};
  std::chrono::milliseconds probe_interval{2000};

  bool grouped() const { return world_size > 1 || tensor * pipeline > 1 || rank > 0; }
};

// Overrides options from SHOAL_GROUP / SHOAL_POD_RANK / SHOAL_PODS_PER_GROUP /
// SHOAL_LEADER_ADDR where they are set; INVALID_ARGUMENT names a malformed one.
absl::Status ApplyGroupEnv(GroupOptions* options);
// The port of options.leader_address, or -1.
int LeaderPort(const GroupOptions& options);

class GroupMember {
 public:
  // Leader (rank 0): serves the rendezvous on leader_address's port, waits for every rank
  // (DEADLINE_EXCEEDED naming the missing ones), then connects. Follower: dials the leader
  // (retrying while it is not up yet), learns the layout, connects.
  static absl::StatusOr<std::unique_ptr<GroupMember>> Join(const GroupOptions& options, int64_t num_layers);
  ~GroupMember();

  int rank() const { return rank_; }
  bool is_leader() const { return rank_ == 0; }
  const GroupLayout& layout() const { return layout_; }
  ShardSpec shard() const { return layout_.shard_of(rank_); }
  Communicator& world() { return *world_; }
  Communicator& tensor_group() { return *tensor_; }
  // "nccl", or "gloo" with why the stage's tensor collectives are not on NCCL.
  const std::string& tensor_transport() const { return tensor_transport_; }
  std::chrono::milliseconds collective_timeout() const { return collective_timeout_; }
  std::chrono::milliseconds probe_interval() const { return probe_interval_; }
  int micro_batches() const { return micro_batches_; }
  int min_micro_batch_tokens() const { return min_micro_batch_tokens_; }
  const std::string& run_id() const { return run_id_; }

  // Leader: the first follower whose connection to the leader broke, and its host.
  std::optional<std::pair<int, std::string>> lost_rank() const;
  // Leader: called (on a gRPC thread) when a follower's connection breaks.
  // Follower: called (on the attendance thread) when the leader's does.
  void SetOnPeerLost(std::function<void(const std::string& what)> fn);
  // A clean shutdown is under way: broken connections are expected from now on.
  void SetStopping();

 private:
  GroupMember() = default;
  absl::Status Connect(const GroupOptions& options);
  // Publishes this tensor rank's device through the store and reads every rank's.
  absl::StatusOr<std::vector<TensorRankDevice>> ExchangeTensorDevices(const std::string& prefix, int tp_rank,
                                                                             int tensor, const TensorRankDevice& me,
                                                                             std::chrono::milliseconds timeout);
  void Attend();

  int rank_ = 0;
  GroupLayout layout_;
  std::string run_id_;
  std::chrono::milliseconds collective_timeout_{30000};
  std::chrono::milliseconds probe_interval_{2000};
  int micro_batches_ = 1;
  int min_micro_batch_tokens_ = 1;
  RendezvousService* service_ = nullptr;                   // leader
  std::unique_ptr<RendezvousService> owned_service_;      // leader, when it serves its own
  std::unique_ptr<grpc::Server> server_;                  // leader, when it serves its own
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<class GrpcStore> store_;
  std::unique_ptr<Communicator> world_, tensor_;
  std::string tensor_transport_;
  // Follower: the Attend stream, held for life.
  std::unique_ptr<grpc::ClientContext> attend_ctx_;
  std::thread attend_thread_;
  std::function<void(const std::string&)> on_peer_lost_;
  std::mutex mu_;
  bool stopping_ = false;
};

}  // namespace shoal::worker
