#pragma once
// The router's view of its groups and its admission control, in memory and without I/O:
// which groups exist, which are healthy and what they serve, how much work each has in
// flight, and the bounded queue of requests waiting for a slot. Acquire picks a group with
// PickGroup (upstream_scoring.h) and returns a Lease; Release gives the slot back and
// admits waiters. The network side (UpstreamPool) feeds health, stats and model lists in.
//
// Load shedding: a request is admitted when the router has fewer than `max_inflight`
// requests in flight and some eligible group fewer than `max_inflight_per_group`; else it
// waits in a FIFO of at most `max_queued` entries for at most `max_queue_wait`; beyond
// that it is rejected at once with RESOURCE_EXHAUSTED.
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "router/prefix_affinity.h"
#include "router/upstream_scoring.h"
#include "shoal/v1/worker.pb.h"

namespace shoal::router {

struct BalancerOptions {
  int max_inflight = 1024;
  int max_inflight_per_group = 256;
  int max_queued = 1024;
  std::chrono::milliseconds max_queue_wait{30000};
  ScoringWeights weights;
  size_t affinity_capacity = 1 << 16;
};

// What routing needs from one request.
struct RouteRequest {
  std::string model;                     // "" = any group
  std::vector<uint64_t> prefix_hashes;   // PrefixBlockHashes
  int64_t estimated_tokens = 0;          // EstimateRequestTokens
  std::vector<uint64_t> excluded_groups; // groups that already failed this request
};

// One admitted request's slot on one group. Give it back with Release exactly once.
struct Lease {
  uint64_t group_id = 0;
  std::string endpoint;
  int64_t tokens = 0;  // still counted in the group's inflight_tokens
};

struct GroupInfo {
  uint64_t id = 0;
  std::string endpoint;
  bool healthy = false;
  int64_t inflight_requests = 0;
  int64_t inflight_tokens = 0;
  v1::WorkerStats stats;
  std::vector<std::string> models;  // empty = not known yet
};

class Balancer {
 public:
  explicit Balancer(BalancerOptions options);

  // Called at most once, from whichever thread admits or expires the waiter.
  using AdmitCallback = std::function<void(absl::StatusOr<Lease>)>;
  struct Admission {
    enum Kind { kAdmitted, kQueued, kRejected };
    Kind kind = kRejected;
    Lease lease;             // kAdmitted
    absl::Status status;     // kRejected: UNAVAILABLE, NOT_FOUND or RESOURCE_EXHAUSTED
    uint64_t waiter_id = 0;  // kQueued: `on_admit` runs later unless CancelWaiter wins
  };
  Admission Acquire(RouteRequest request, AdmitCallback on_admit);
  // True when the waiter was still queued (its callback will never run).
  bool CancelWaiter(uint64_t waiter_id);
  void Release(const Lease& lease);
  // `tokens` of the lease's work are done (first token: the prompt; then each output).
  void ConsumeTokens(Lease& lease, int64_t tokens);
  // Rejects waiters queued longer than max_queue_wait.
  void ExpireWaiters(std::chrono::steady_clock::time_point now);

  void UpsertGroup(uint64_t id, const std::string& endpoint);
  void RemoveGroup(uint64_t id);
  void SetHealthy(uint64_t id, bool healthy);
  void SetStats(uint64_t id, const v1::WorkerStats& stats);
  void SetModels(uint64_t id, std::vector<std::string> models);

  std::vector<GroupInfo> Groups() const;
  bool AnyHealthy() const;
  int64_t inflight() const;
  size_t queued() const;

 private:
  struct Group {
    GroupInfo info;
  };
  struct Waiter {
    uint64_t id;
    RouteRequest request;
    AdmitCallback on_admit;
    std::chrono::steady_clock::time_point enqueued;
  };
  // A group id when the request can start now, nullopt when it must wait, or an error
  // when no group could ever take it.
  absl::StatusOr<std::optional<uint64_t>> PickLocked(const RouteRequest& request);
  Lease AdmitLocked(const RouteRequest& request, uint64_t group_id);
  // Admits queued waiters that fit now; their callbacks go to `ready`.
  void DrainQueueLocked(std::vector<std::pair<AdmitCallback, Lease>>& ready);
  void DrainAndRun(std::unique_lock<std::mutex>& lock);

  const BalancerOptions options_;
  mutable std::mutex mu_;
  std::map<uint64_t, Group> groups_;
  PrefixAffinityTable affinity_;
  std::deque<Waiter> queue_;
  int64_t inflight_ = 0;
  uint64_t next_waiter_id_ = 1;
  uint64_t rotation_ = 0;
};

}  // namespace shoal::router
