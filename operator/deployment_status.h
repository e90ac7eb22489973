#pragma once
// The DeepSeekDeployment's status as a pure function of what the reconcile saw and did.
// Conditions keep their lastTransitionTime while their status does not change, so an
// unchanged world writes an unchanged status (and the reconciler skips the write).
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "operator/api_types.h"
#include "operator/autoscaler.h"
#include "operator/group_lifecycle.h"

namespace shoal::op {

struct StatusInputs {
  int replicas = 0;                      // groups wanted (spec or autoscaler)
  std::vector<GroupDecision> groups;     // index = group
  int router_ready = 0;
  bool rollout_in_progress = false;
  std::string invalid_spec;              // non-empty: the spec is rejected, with this message
  std::string apply_error;               // non-empty: the last apply failed
  std::optional<ScalingDecision> scaling;  // set when autoscaling is enabled
  std::optional<double> current_qps;
  std::string last_scale_time;           // RFC 3339, carried over unless we scaled now
};

// `previous` is the object's current status (for transition times); `now` RFC 3339.
nlohmann::json ComputeStatus(const DeploymentSpec& d, const StatusInputs& in, const nlohmann::json& previous,
                             const std::string& now);

// Sets or updates one condition in `conditions` (an array), keeping lastTransitionTime
// when the status is unchanged.
void SetCondition(nlohmann::json* conditions, const nlohmann::json& previous_conditions, const std::string& type,
                  bool status, const std::string& reason, const std::string& message, const std::string& now,
                  int64_t generation);

}  // namespace shoal::op
