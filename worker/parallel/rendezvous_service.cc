#include "worker/parallel/rendezvous_service.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <thread>
#include <vector>

namespace shoal::worker {

void RendezvousService::Configure(GroupLayout layout, std::string run_id, v1::JoinResponse settings) {
  std::lock_guard lock(mu_);
  layout_ = std::move(layout);
  run_id_ = std::move(run_id);
  settings_ = std::move(settings);
  joined_[0] = "leader";
  configured_ = true;
  cv_.notify_all();
}

absl::Status RendezvousService::AwaitJoins(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  const int world = layout_.world_size();
  if (cv_.wait_for(lock, timeout, [&] { return static_cast<int>(joined_.size()) == world; })) {
    return absl::OkStatus();
  }
  std::vector<std::string> missing;
  for (int r = 0; r < world; ++r) {
    if (!joined_.contains(r)) missing.push_back(layout_.Describe(r));
  }
  join_failed_ = true;
  join_error_ = fmt::format("group of {} ranks did not assemble within {} ms: missing {}", world, timeout.count(),
                            fmt::join(missing, ", "));
  cv_.notify_all();
  return absl::DeadlineExceededError(join_error_);
}

void RendezvousService::SetOnRankLost(std::function<void(int, const std::string&)> fn) {
  std::lock_guard lock(mu_);
  on_lost_ = std::move(fn);
}

std::optional<std::pair<int, std::string>> RendezvousService::lost_rank() const {
  std::lock_guard lock(mu_);
  return lost_;
}

void RendezvousService::SetStopping() {
  std::lock_guard lock(mu_);
  stopping_ = true;
  cv_.notify_all();
}

grpc::Status RendezvousService::Join(grpc::ServerContext* ctx, const v1::JoinRequest* req, v1::JoinResponse* resp) {
  std::unique_lock lock(mu_);
  // A follower may come before the leader has loaded the model and knows the layout.
  while (!configured_) {
    if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "join cancelled");
    cv_.wait_for(lock, std::chrono::milliseconds(100));
  }
  const int world = layout_.world_size();
  if (req->rank() <= 0 || req->rank() >= world) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        fmt::format("rank {} is outside this group's followers 1..{}", req->rank(), world - 1));
  }
  if (req->world_size() != 0 && req->world_size() != world) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        fmt::format("rank {} was told the group has {} ranks; the leader runs {} (tensor {} x pipeline {})",
                                    req->rank(), req->world_size(), world, layout_.tensor, layout_.pipeline));
  }
  if (joined_.contains(req->rank())) {
    return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                        fmt::format("rank {} already joined from {}; a restarted rank needs a restarted group",
                                    req->rank(), joined_[req->rank()]));
  }
  joined_[req->rank()] = req->host();
  spdlog::info("group join rank={} host={} joined={}/{}", req->rank(), req->host(), joined_.size(), world);
  cv_.notify_all();
  // Cancellation is noticed by polling (nothing notifies the cv when a client goes away).
  // A follower that gave up before the group was complete gives its rank back, so the
  // same rank restarted (a pod's container restart) can join again.
  while (!join_failed_ && static_cast<int>(joined_.size()) != world) {
    if (ctx->IsCancelled()) {
      joined_.erase(req->rank());
      spdlog::info("group join rank={} host={} gave up before the group was complete", req->rank(), req->host());
      return grpc::Status(grpc::StatusCode::CANCELLED, "join cancelled");
    }
    cv_.wait_for(lock, std::chrono::milliseconds(100));
  }
  if (join_failed_) return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, join_error_);
  *resp = settings_;
  resp->set_run_id(run_id_);
  return grpc::Status::OK;
}

grpc::Status RendezvousService::StoreSet(grpc::ServerContext*, const v1::StoreSetRequest* req, v1::StoreSetResponse*) {
  std::lock_guard lock(mu_);
  store_[req->key()] = req->value();
  cv_.notify_all();
  return grpc::Status::OK;
}

grpc::Status RendezvousService::StoreGet(grpc::ServerContext* ctx, const v1::StoreGetRequest* req,
                                         v1::StoreGetResponse* resp) {
  std::unique_lock lock(mu_);
  auto all_there = [&] {
    for (const std::string& k : req->keys()) {
      if (!store_.contains(k)) return false;
    }
    return true;
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(req->timeout_ms());
  while (!all_there()) {
    if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "store wait cancelled");
    if (cv_.wait_until(lock, std::min(deadline, std::chrono::steady_clock::now() + std::chrono::milliseconds(100))) ==
            std::cv_status::timeout &&
        std::chrono::steady_clock::now() >= deadline) {
      for (const std::string& k : req->keys()) {
        if (!store_.contains(k)) {
          return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                              fmt::format("key '{}' was not published within {} ms", k, req->timeout_ms()));
        }
      }
    }
  }
  for (const std::string& k : req->keys()) resp->add_values(store_[k]);
  return grpc::Status::OK;
}

// Holds the stream open until the follower goes away (its process died or its host is
// unreachable: gRPC cancels the call) or the server shuts down.
grpc::Status RendezvousService::Attend(grpc::ServerContext* ctx, const v1::AttendRequest* req,
                                       grpc::ServerWriter<v1::AttendEvent>* writer) {
  const int rank = req->rank();
  std::string host;
  {
    std::lock_guard lock(mu_);
    host = joined_.contains(rank) ? joined_[rank] : "?";
  }
  v1::AttendEvent hello;
  hello.set_note("attending");
  writer->Write(hello);
  while (!ctx->IsCancelled()) {
    std::unique_lock lock(mu_);
    if (stopping_) return grpc::Status::OK;
    cv_.wait_for(lock, std::chrono::milliseconds(50));
  }
  std::function<void(int, const std::string&)> on_lost;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return grpc::Status::CANCELLED;
    if (!lost_) {
      lost_ = std::make_pair(rank, host);
      on_lost = on_lost_;
    }
  }
  spdlog::error("group rank_lost={} host={} ({})", rank, host, layout_.Describe(rank));
  if (on_lost) on_lost(rank, host);
  return grpc::Status::CANCELLED;
}

}  // namespace shoal::worker
