#include "router/balancer.h"

#include <fmt/format.h>

#include <algorithm>

namespace shoal::router {
namespace {

bool Serves(const GroupInfo& group, const std::string& model) {
  if (model.empty() || group.models.empty()) return true;
  return std::find(group.models.begin(), group.models.end(), model) != group.models.end();
}

}  // namespace

Balancer::Balancer(BalancerOptions options) : options_(options), affinity_(options.affinity_capacity) {}

absl::StatusOr<std::optional<uint64_t>> Balancer::PickLocked(const RouteRequest& request) {
  std::vector<GroupLoad> loads;
  std::vector<uint64_t> ids;
  int healthy = 0, serving = 0, candidates = 0;
  std::vector<std::string> served_models;
  for (const auto& [id, group] : groups_) {
    const GroupInfo& info = group.info;
    const bool excluded =
        std::find(request.excluded_groups.begin(), request.excluded_groups.end(), id) != request.excluded_groups.end();
    if (info.healthy) {
      ++healthy;
      for (const auto& m : info.models) {
        if (std::find(served_models.begin(), served_models.end(), m) == served_models.end()) served_models.push_back(m);
      }
    }
    const bool serves = info.healthy && Serves(info, request.model);
    if (serves) ++serving;
    if (serves && !excluded) ++candidates;
    GroupLoad load;
    load.inflight_requests = info.inflight_requests;
    load.inflight_tokens = info.inflight_tokens;
    load.waiting_sequences = info.stats.waiting_sequences();
    load.kv_cache_usage_ratio = info.stats.kv_cache_usage_ratio();
    load.matched_prefix_blocks = affinity_.MatchedBlocks(request.prefix_hashes, id);
    load.eligible = serves && !excluded && info.inflight_requests < options_.max_inflight_per_group;
    loads.push_back(load);
    ids.push_back(id);
  }
  if (healthy == 0) {
    return absl::UnavailableError(
        fmt::format("no healthy upstream group ({} known, 0 healthy)", groups_.size()));
  }
  if (serving == 0) {
    std::string list;
    for (const auto& m : served_models) list += (list.empty() ? "" : ", ") + m;
    return absl::NotFoundError(fmt::format("model '{}' is not served here; served models: {}", request.model, list));
  }
  if (candidates == 0) {
    return absl::UnavailableError(
        fmt::format("no other healthy group serves model '{}' ({} tried)", request.model,
                    request.excluded_groups.size()));
  }
  if (inflight_ >= options_.max_inflight) return std::optional<uint64_t>();
  const int pick = PickGroup(loads, static_cast<int>(request.prefix_hashes.size()), options_.weights, rotation_++);
  if (pick < 0) return std::optional<uint64_t>();  // every candidate is at its limit
  return std::optional<uint64_t>(ids[pick]);
}

Lease Balancer::AdmitLocked(const RouteRequest& request, uint64_t group_id) {
  GroupInfo& info = groups_.at(group_id).info;
  info.inflight_requests += 1;
  info.inflight_tokens += request.estimated_tokens;
  inflight_ += 1;
  affinity_.Record(request.prefix_hashes, group_id);
  return Lease{group_id, info.endpoint, request.estimated_tokens};
}

Balancer::Admission Balancer::Acquire(RouteRequest request, AdmitCallback on_admit) {
  std::lock_guard<std::mutex> lock(mu_);
  Admission admission;
  auto pick = PickLocked(request);
  if (!pick.ok()) {
    admission.kind = Admission::kRejected;
    admission.status = pick.status();
    return admission;
  }
  // FIFO: a request that could start now still waits behind earlier waiters.
  if (pick->has_value() && queue_.empty()) {
    admission.kind = Admission::kAdmitted;
    admission.lease = AdmitLocked(request, **pick);
    return admission;
  }
  if (static_cast<int>(queue_.size()) >= options_.max_queued) {
    admission.kind = Admission::kRejected;
    admission.status = absl::ResourceExhaustedError(fmt::format(
        "router is at capacity: {} requests in flight (limit {} in all, {} per group) and {} waiting (limit {}); "
        "retry later",
        inflight_, options_.max_inflight, options_.max_inflight_per_group, queue_.size(), options_.max_queued));
    return admission;
  }
  admission.kind = Admission::kQueued;
  admission.waiter_id = next_waiter_id_++;
  queue_.push_back(Waiter{admission.waiter_id, std::move(request), std::move(on_admit),
                          std::chrono::steady_clock::now()});
  return admission;
}

bool Balancer::CancelWaiter(uint64_t waiter_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = std::find_if(queue_.begin(), queue_.end(), [&](const Waiter& w) { return w.id == waiter_id; });
  if (it == queue_.end()) return false;
  queue_.erase(it);
  return true;
}

void Balancer::DrainQueueLocked(std::vector<std::pair<AdmitCallback, Lease>>& ready) {
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (inflight_ >= options_.max_inflight) return;
    auto pick = PickLocked(it->request);
    // An error (say, every group unhealthy for a moment) keeps the waiter queued: groups
    // come back, and max_queue_wait bounds the wait.
    if (pick.ok() && pick->has_value()) {
      ready.emplace_back(std::move(it->on_admit), AdmitLocked(it->request, **pick));
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
}

void Balancer::DrainAndRun(std::unique_lock<std::mutex>& lock) {
  std::vector<std::pair<AdmitCallback, Lease>> ready;
  DrainQueueLocked(ready);
  lock.unlock();
  for (auto& [callback, lease] : ready) callback(std::move(lease));
}

void Balancer::Release(const Lease& lease) {
  std::unique_lock<std::mutex> lock(mu_);
  inflight_ -= 1;
  auto it = groups_.find(lease.group_id);
  if (it != groups_.end()) {
    it->second.info.inflight_requests -= 1;
    it->second.info.inflight_tokens -= lease.tokens;
  }
  DrainAndRun(lock);
}

void Balancer::ConsumeTokens(Lease& lease, int64_t tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  tokens = std::min(tokens, lease.tokens);
  if (tokens <= 0) return;
  lease.tokens -= tokens;
  auto it = groups_.find(lease.group_id);
  if (it != groups_.end()) it->second.info.inflight_tokens -= tokens;
}

void Balancer::ExpireWaiters(std::chrono::steady_clock::time_point now) {
  std::vector<Waiter> expired;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (now - it->enqueued >= options_.max_queue_wait) {
        expired.push_back(std::move(*it));
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& waiter : expired) {
    waiter.on_admit(absl::ResourceExhaustedError(fmt::format(
        "no group had a free slot within {} ms (router queue wait limit); retry later",
        options_.max_queue_wait.count())));
  }
}

void Balancer::UpsertGroup(uint64_t id, const std::string& endpoint) {
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, inserted] = groups_.try_emplace(id);
  if (inserted) {
    it->second.info.id = id;
    it->second.info.endpoint = endpoint;
  }
}

void Balancer::RemoveGroup(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  groups_.erase(id);
  affinity_.ForgetGroup(id);
}

void Balancer::SetHealthy(uint64_t id, bool healthy) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = groups_.find(id);
  if (it == groups_.end()) return;
  it->second.info.healthy = healthy;
  if (healthy) {
    DrainAndRun(lock);
  }
}

void Balancer::SetStats(uint64_t id, const v1::WorkerStats& stats) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = groups_.find(id);
  if (it != groups_.end()) it->second.info.stats = stats;
}

void Balancer::SetModels(uint64_t id, std::vector<std::string> models) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = groups_.find(id);
  if (it == groups_.end()) return;
  it->second.info.models = std::move(models);
  DrainAndRun(lock);
}

std::vector<GroupInfo> Balancer::Groups() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<GroupInfo> out;
  for (const auto& [id, group] : groups_) out.push_back(group.info);
  return out;
}

bool Balancer::AnyHealthy() const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, group] : groups_) {
    if (group.info.healthy) return true;
  }
  return false;
}

int64_t Balancer::inflight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return inflight_;
}

size_t Balancer::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

}  // namespace shoal::router
