#pragma once
// What a worker process does as part of a group, for shoal-worker's main: the leader
// builds its CausalLM as a GroupCausalLM (joining the group first), a follower loads its
// shard and runs FollowerLoop until the leader stops it or the group breaks.
#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/model/loaded_model.h"
#include "worker/parallel/group_causal_lm.h"

namespace shoal::worker {

// Exit statuses of a rank.
inline constexpr int kExitGroupStopped = 0;  // the leader shut the group down cleanly
inline constexpr int kExitStartupFailed = 1;
inline constexpr int kExitGroupFailed = 3;   // a rank or link was lost: restart the group

// Leader: joins the group (waiting for every rank), builds its own shard with the tensor
// group and wraps it. `on_failure` runs once if the group breaks later.
absl::StatusOr<std::unique_ptr<CausalLM>> CreateGroupLeaderModel(const GroupOptions& options, const LoadedModel& model,
                                                                 ThreadPool* pool, CausalLMOptions lm_options,
                                                                 GroupCausalLM::FailureCallback on_failure);

// Follower: the whole life of rank options.rank > 0 on the model at `model_path`. When
// `health_address` is set (host:port; port 0 = any), it answers grpc.health.v1 there:
// SERVING once the rank is in the group (a pod's readiness probe). Returns the process
// exit status. After SIGTERM it keeps serving steps for up to `stop_wait` (the leader's
// drain: give it the same --shutdown-grace plus a margin) for the leader's STOP.
// `lm_options` as the leader's (device, dtypes); the tensor group is filled in, and on
// CUDA with cuda_device < 0 the GPU is the rank's (ResolveCudaDevice); the leader's too.
int RunFollower(const GroupOptions& options, const std::string& model_path, int num_threads, CausalLMOptions lm_options,
                const std::string& health_address = "",
                std::chrono::milliseconds stop_wait = std::chrono::seconds(30));

}  // namespace shoal::worker
