#include "operator/autoscaler.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace shoal::op {
namespace {

// One trigger: `total` load against `target` per replica at `current` replicas.
int Propose(double total, double target, int current, std::string* why, const char* name) {
  const double exact = total / target;
  const double ratio = current > 0 ? exact / current : (exact > 0 ? 2.0 : 1.0);
  int proposal = std::abs(ratio - 1.0) <= kScaleTolerance ? current : static_cast<int>(std::ceil(exact - 1e-9));
  *why += fmt::format("{}{} {:.2f}/{:g} per replica -> {}", why->empty() ? "" : ", ", name, total, target, proposal);
  return proposal;
}

}  // namespace

ScalingDecision DecideScale(const AutoscalingSpec& spec, int current, const ScalingMetrics& m, int64_t now,
                            std::deque<Recommendation>* history) {
  ScalingDecision out;
  int recommended = -1;
  std::string why;
  if (spec.target_qps_per_replica > 0 && m.total_qps) {
    recommended = std::max(recommended, Propose(*m.total_qps, spec.target_qps_per_replica, current, &why, "qps"));
  }
  if (spec.target_queue_depth_per_replica > 0 && m.total_waiting && m.counted_groups > 0) {
    recommended = std::max(recommended, Propose(*m.total_waiting, spec.target_queue_depth_per_replica,
                                                m.counted_groups, &why, "queue depth"));
  }
  if (spec.target_kv_cache_utilization > 0 && m.mean_kv_usage && m.counted_groups > 0) {
    recommended = std::max(recommended, Propose(*m.mean_kv_usage * m.counted_groups, spec.target_kv_cache_utilization,
                                                m.counted_groups, &why, "kv cache"));
  }
  if (recommended < 0) {
    out.desired = std::clamp(current, spec.min_replicas, spec.max_replicas);
    out.recommended = out.desired;
    out.limited = out.desired != current;
    out.reason = "no metrics; holding";
    return out;
  }
  out.active = true;
  const int clamped = std::clamp(recommended, spec.min_replicas, spec.max_replicas);
  out.limited = clamped != recommended;
  if (out.limited) {
    why += fmt::format("; limited to {} by {}", clamped, recommended > clamped ? "maxReplicas" : "minReplicas");
  }
  out.recommended = clamped;
  history->push_back({now, clamped});
  const int64_t keep = std::max(spec.scale_up_stabilization_seconds, spec.scale_down_stabilization_seconds);
  while (!history->empty() && history->front().time < now - keep) history->pop_front();

  int desired = clamped;
  if (clamped > current) {
    // Scale up to the lowest recommendation in the up window (at least current).
    int lowest = clamped;
    for (const auto& r : *history) {
      if (r.time >= now - spec.scale_up_stabilization_seconds) lowest = std::min(lowest, r.replicas);
    }
    desired = std::max(current, lowest);
  } else if (clamped < current) {
    int highest = clamped;
    for (const auto& r : *history) {
      if (r.time >= now - spec.scale_down_stabilization_seconds) highest = std::max(highest, r.replicas);
    }
    desired = std::min(current, highest);
    if (m.loading_groups > 0 && desired < current) {
      desired = current;
      why += "; holding while groups load";
    }
  }
  // min/max always win over stabilization (e.g. the user lowered maxReplicas).
  desired = std::clamp(desired, spec.min_replicas, spec.max_replicas);
  if (desired != clamped && desired == current) why += fmt::format("; stabilized at {}", current);
  out.desired = desired;
  out.reason = why;
  return out;
}

}  // namespace shoal::op
