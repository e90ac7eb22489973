#include "operator/deployment_status.h"

#include <cmath>

#include <fmt/format.h>

#include "operator/desired_children.h"

namespace shoal::op {

using nlohmann::json;

void SetCondition(json* conditions, const json& previous_conditions, const std::string& type, bool status,
                  const std::string& reason, const std::string& message, const std::string& now,
                  int64_t generation) {
  const std::string value = status ? "True" : "False";
  std::string transition = now;
  if (previous_conditions.is_array()) {
    for (const auto& c : previous_conditions) {
      if (c.value("type", "") == type && c.value("status", "") == value) {
        transition = c.value("lastTransitionTime", now);
      }
    }
  }
  conditions->push_back({{"type", type},
                         {"status", value},
                         {"reason", reason},
                         {"message", message},
                         {"lastTransitionTime", transition},
                         {"observedGeneration", generation}});
}

json ComputeStatus(const DeploymentSpec& d, const StatusInputs& in, const json& previous, const std::string& now) {
  json status = json::object();
  const json prev_conditions = previous.is_object() ? previous.value("conditions", json::array()) : json::array();
  status["observedGeneration"] = d.generation;
  int existing = 0, ready = 0, failed = 0;
  json groups = json::array();
  for (size_t i = 0; i < in.groups.size(); ++i) {
    const auto& g = in.groups[i];
    if (static_cast<int>(i) < in.replicas) {
      existing++;
      if (g.phase == GroupPhase::kReady) ready++;
    }
    if (g.phase == GroupPhase::kFailed) failed++;
    groups.push_back({{"index", i},
                      {"phase", GroupPhaseName(g.phase)},
                      {"readyPods", g.ready_pods},
                      {"restarts", g.record.restarts}});
  }
  status["replicas"] = existing;
  status["readyReplicas"] = ready;
  status["desiredReplicas"] = in.replicas;
  if (in.current_qps) status["currentQPS"] = std::round(*in.current_qps * 100) / 100;
  if (!in.last_scale_time.empty()) status["lastScaleTime"] = in.last_scale_time;
  status["selector"] = WorkerPodSelector(d);
  status["endpoint"] = fmt::format("{}.{}.svc:{}", RouterName(d.name), d.ns, kRouterGrpcPort);
  status["groups"] = groups;

  json conditions = json::array();
  const int64_t gen = d.generation;
  if (!in.invalid_spec.empty()) {
    SetCondition(&conditions, prev_conditions, kConditionAvailable, false, kReasonInvalidSpec, in.invalid_spec, now, gen);
    SetCondition(&conditions, prev_conditions, kConditionProgressing, false, kReasonInvalidSpec, in.invalid_spec, now, gen);
    SetCondition(&conditions, prev_conditions, kConditionDegraded, true, kReasonInvalidSpec, in.invalid_spec, now, gen);
    status["conditions"] = conditions;
    return status;
  }
  const int need = std::max(1, in.replicas - std::max(0, d.rollout.max_unavailable_groups));
  const bool available = in.replicas > 0 && ready >= need && in.router_ready > 0;
  SetCondition(&conditions, prev_conditions, kConditionAvailable, available,
               available ? "GroupsReady" : (in.replicas == 0 ? "ScaledToZero" : "GroupsNotReady"),
               fmt::format("{}/{} groups ready, {} router pods ready", ready, in.replicas, in.router_ready), now, gen);
  const bool converged = ready == in.replicas && !in.rollout_in_progress &&
                         static_cast<int>(in.groups.size()) == in.replicas;
  std::string progress_reason = in.rollout_in_progress ? "RollingUpdate" : (converged ? "Converged" : "GroupsStarting");
  SetCondition(&conditions, prev_conditions, kConditionProgressing, !converged, progress_reason,
               converged ? "all groups ready at the current spec"
                         : fmt::format("{} of {} groups ready", ready, in.replicas),
               now, gen);
  std::string degraded_reason = "AsExpected";
  std::string degraded_message = "no failed groups";
  bool degraded = false;
  if (failed > 0) {
    degraded = true;
    degraded_reason = kReasonGroupFailed;
    degraded_message = fmt::format("{} group(s) exhausted maxGroupRestarts={}; edit the spec to retry", failed,
                                   d.max_group_restarts);
  } else if (!in.apply_error.empty()) {
    degraded = true;
    degraded_reason = kReasonApplyFailed;
    degraded_message = in.apply_error;
  }
  SetCondition(&conditions, prev_conditions, kConditionDegraded, degraded, degraded_reason, degraded_message, now, gen);
  if (in.scaling) {
    SetCondition(&conditions, prev_conditions, kConditionScalingActive, in.scaling->active,
                 in.scaling->active ? "ValidMetrics" : "MetricsUnavailable", in.scaling->reason, now, gen);
    SetCondition(&conditions, prev_conditions, kConditionScalingLimited, in.scaling->limited,
                 in.scaling->limited ? "OutOfRange" : "InRange", in.scaling->reason, now, gen);
  } else {
    SetCondition(&conditions, prev_conditions, kConditionScalingActive, false, "AutoscalingDisabled",
                 "spec.autoscaling.enabled is false; replicas come from spec.replicas (scale subresource)", now, gen);
    SetCondition(&conditions, prev_conditions, kConditionScalingLimited, false, "AutoscalingDisabled", "", now, gen);
  }
  status["conditions"] = conditions;
  return status;
}

}  // namespace shoal::op
