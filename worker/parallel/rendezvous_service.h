#pragma once
// The leader's side of group rendezvous (shoal.v1.GroupRendezvous): collects Joins until
// every rank arrived, serves the key-value store Gloo's ranks exchange addresses through,
// and watches each follower's Attend stream so that a dead rank is known by number the
// moment its connection breaks.
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "shoal/v1/group.grpc.pb.h"
#include "worker/parallel/group_layout.h"

namespace shoal::worker {

class RendezvousService final : public v1::GroupRendezvous::Service {
 public:
  // Registered on a gRPC server before the model is loaded (followers may call early and
  // wait); Configure hands it the layout once the leader knows the model.
  RendezvousService() = default;
  void Configure(GroupLayout layout, std::string run_id, v1::JoinResponse settings);

  // Blocks until ranks 1..world-1 joined; DEADLINE_EXCEEDED naming the missing ranks.
  absl::Status AwaitJoins(std::chrono::milliseconds timeout);
  // Called once per follower whose Attend stream ended while the group was not stopping.
  void SetOnRankLost(std::function<void(int rank, const std::string& host)> fn);
  // The first rank lost, if any (and where it ran).
  std::optional<std::pair<int, std::string>> lost_rank() const;
  // From now on broken Attend streams are expected (clean shutdown).
  void SetStopping();

  grpc::Status Join(grpc::ServerContext* ctx, const v1::JoinRequest* req, v1::JoinResponse* resp) override;
  grpc::Status StoreSet(grpc::ServerContext* ctx, const v1::StoreSetRequest* req, v1::StoreSetResponse* resp) override;
  grpc::Status StoreGet(grpc::ServerContext* ctx, const v1::StoreGetRequest* req, v1::StoreGetResponse* resp) override;
  grpc::Status Attend(grpc::ServerContext* ctx, const v1::AttendRequest* req,
                      grpc::ServerWriter<v1::AttendEvent>* writer) override;

 private:
  bool configured_ = false;
  GroupLayout layout_;
  std::string run_id_;
  v1::JoinResponse settings_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<int, std::string> joined_;  // rank -> host
  bool join_failed_ = false;
  std::string join_error_;
  std::map<std::string, std::string> store_;
  bool stopping_ = false;
  std::optional<std::pair<int, std::string>> lost_;
  std::function<void(int, const std::string&)> on_lost_;
};

}  // namespace shoal::worker
