#pragma once
// The autoscaling decision as a pure function, HPA-style.
//
//   per trigger:  QPS         desired = ceil(total_qps / targetQPSPerReplica)
//                 queue depth desired = ceil(total_waiting / targetQueueDepthPerReplica)
//                 KV cache    desired = ceil(counted · mean_kv_usage / targetKVCacheUtilization)
//   a trigger within 10% of its target at the current size proposes the current size;
//   recommendation = max over triggers, clamped to [minReplicas, maxReplicas];
//   stabilization: the result is the lowest recommendation of the scale-up window when
//   above the current size, the highest of the scale-down window when below (so a brief
//   spike does not add groups when the up window is set, and a brief dip never removes
//   them); groups still in their initial cooldown (not Ready, or Ready for less than
//   initialCooldownSeconds) contribute no worker metrics, and while any group is loading
//   the size does not go down.
#include <cstdint>
#include <deque>
#include <optional>
#include <string>

#include "operator/api_types.h"

namespace shoal::op {

struct ScalingMetrics {
  std::optional<double> total_qps;            // requests/s over all routers; nullopt = unavailable
  std::optional<double> total_waiting;        // waiting sequences summed over counted groups' leaders
  std::optional<double> mean_kv_usage;        // 0..1 mean over counted groups' leaders
  int counted_groups = 0;                     // Ready and past the cooldown
  int loading_groups = 0;                     // existing but not counted
};

struct Recommendation {
  int64_t time = 0;   // unix seconds
  int replicas = 0;
};

struct ScalingDecision {
  int desired = 0;
  int recommended = 0;           // before stabilization
  bool limited = false;          // clamped by min or max
  bool active = false;           // some trigger had data
  std::string reason;            // "qps 42.0/5 per replica → 9"
};

// `history` holds earlier recommendations (this function appends the new one and drops
// those older than both windows).
ScalingDecision DecideScale(const AutoscalingSpec& spec, int current, const ScalingMetrics& metrics, int64_t now,
                            std::deque<Recommendation>* history);

constexpr double kScaleTolerance = 0.1;

}  // namespace shoal::op
