#include "worker/parallel/group_runtime.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <thread>

#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "shoal/v1/group.grpc.pb.h"
#include "worker/common/status_macros.h"
#include "worker/kernels/cpu/thread_pool.h"

namespace shoal::worker {
namespace {

// The group options with this rank's GPU, so the stage can choose NCCL or Gloo.
GroupOptions WithDevice(GroupOptions options, const CausalLMOptions& lm) {
  if (lm.device == Device::kCuda) {
    options.cuda_device = lm.cuda_device;
    options.gpu_identity = CudaDeviceIdentity(lm.cuda_device);
  }
  return options;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CausalLM>> CreateGroupLeaderModel(const GroupOptions& options, const LoadedModel& model,
                                                                 ThreadPool* pool, CausalLMOptions lm_options,
                                                                 GroupCausalLM::FailureCallback on_failure) {
  ResolveCudaDevice(options.rank, &lm_options);
  ASSIGN_OR_RETURN(std::unique_ptr<GroupMember> member,
                   GroupMember::Join(WithDevice(options, lm_options), model.config.num_layers));
  lm_options.tensor_group = &member->tensor_group();
  ASSIGN_OR_RETURN(std::unique_ptr<CausalLM> local, CreateCausalLM(model, member->shard(), pool, lm_options));
  spdlog::info("group leader shard weight_bytes={} kv_bytes_per_token={}", local->WeightBytes(),
               local->KvBytesPerBlock(1));
  ASSIGN_OR_RETURN(std::unique_ptr<GroupCausalLM> group, GroupCausalLM::Create(std::move(member), std::move(local)));
  group->SetOnFailure(std::move(on_failure));
  return std::unique_ptr<CausalLM>(std::move(group));
}

int RunFollower(const GroupOptions& options, const std::string& model_path, int num_threads, CausalLMOptions lm_options,
                const std::string& health_address, std::chrono::milliseconds stop_wait) {
  // SIGTERM reaches every pod of a group at once, but the leader is still draining its
  // streams and needs this rank until it says STOP: note the signal, keep serving steps,
  // and leave on our own only if STOP has not come within the grace period. Blocked before
  // any thread exists, so all of them inherit the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::thread([signals, rank = options.rank, stop_wait] {
    int sig = 0;
    sigwait(&signals, &sig);
    spdlog::info("group follower rank={} signal={} waiting for the leader's STOP", rank, sig);
    std::this_thread::sleep_for(stop_wait);
    // No STOP: the group did not end cleanly, whatever the signal meant.
    spdlog::warn("group follower rank={} no STOP from the leader within {} ms; exiting with status {}", rank,
                 stop_wait.count(), kExitGroupFailed);
    std::fflush(nullptr);
    std::_Exit(kExitGroupFailed);
  }).detach();
  std::unique_ptr<grpc::Server> health;
  // gRPC's built-in health service needs one synchronous service beside it to be polled;
  // a follower's GroupRendezvous is that one (every method UNIMPLEMENTED: only the leader
  // serves the rendezvous).
  v1::GroupRendezvous::Service unserved_rendezvous;
  if (!health_address.empty()) {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(health_address, grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&unserved_rendezvous);
    health = builder.BuildAndStart();
    if (health == nullptr || port == 0) {
      spdlog::error("group rank={} cannot listen on {} for health (port in use?)", options.rank, health_address);
      return kExitStartupFailed;
    }
    health->GetHealthCheckService()->SetServingStatus(false);
    spdlog::info("group follower rank={} health_port={}", options.rank, port);
  }
  auto model = LoadModel(model_path);
  if (!model.ok()) {
    spdlog::error("group rank={} model load failed: {}", options.rank, model.status().ToString());
    return kExitStartupFailed;
  }
  ResolveCudaDevice(options.rank, &lm_options);
  auto member = GroupMember::Join(WithDevice(options, lm_options), model->config.num_layers);
  if (!member.ok()) {
    spdlog::error("group rank={} join failed: {}", options.rank, member.status().ToString());
    return kExitStartupFailed;
  }
  ThreadPool pool(num_threads);
  lm_options.tensor_group = &(*member)->tensor_group();
  auto local = CreateCausalLM(*model, (*member)->shard(), &pool, lm_options);
  if (!local.ok()) {
    spdlog::error("group rank={} model build failed: {}", options.rank, local.status().ToString());
    return kExitStartupFailed;
  }
  spdlog::info("group follower rank={} weight_bytes={} ready", options.rank, (*local)->WeightBytes());
  if (health) health->GetHealthCheckService()->SetServingStatus(true);
  absl::Status st = FollowerLoop(**member, **local);
  if (st.ok()) {
    spdlog::info("group follower rank={} stopped by the leader", options.rank);
    if (health) health->Shutdown(std::chrono::system_clock::now());
    return kExitGroupStopped;
  }
  spdlog::error("group follower rank={} failed: {}", options.rank, st.ToString());
  // The communicators may hold sockets to a wedged peer; nothing here is worth a clean
  // teardown that could block.
  std::fflush(nullptr);
  std::_Exit(kExitGroupFailed);
}

}  // namespace shoal::worker
