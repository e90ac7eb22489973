#pragma once
// The objects a DeepSeekDeployment should own, computed as pure functions of the typed
// spec (and, for a group, its lifecycle record): no API server, no clock. The reconciler
// server-side-applies exactly what these return; tests pin them as tables of JSON.
//
//   <name>-engine   ConfigMap   engine settings as SHOAL_* env (envFrom of every worker)
//   <name>-workers  Service     headless, every rank, not-ready addresses published (rendezvous DNS)
//   <name>-leaders  Service     headless, pod rank 0 of each group when Ready (router discovery)
//   <name>-g<i>     StatefulSet one per group, Parallel, OnDelete, ordinal = pod rank
//   <name>-g<i>     PodGroup    with a gang scheduler: minMember = pods per group
//   <name>          Deployment + Service   the router (gRPC 50051, HTTP 8080, metrics 9090)
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "operator/api_types.h"

namespace shoal::op {

// What the operator remembers about a group, kept in its StatefulSet's annotations so a
// restarted operator picks up where it left off.
struct GroupRecord {
  int incarnation = 0;              // bumped on every recreate (restart or roll); pods carry it as a label
  int restarts = 0;                 // restarts counted against maxGroupRestarts since the last spec change
  std::vector<std::string> started_pods;  // pod UIDs once all were Ready together; empty = not started
  std::string failed_spec_hash;     // non-empty: the group spent its budget under this spec
  int64_t ready_since = 0;          // unix seconds the group became Ready (autoscaler cooldown)

  bool started() const { return !started_pods.empty(); }
  bool operator==(const GroupRecord&) const = default;
};

// Reads the record from a StatefulSet's annotations and incarnation label (absent = zero record).
GroupRecord GroupRecordOf(const nlohmann::json& stateful_set);

// Stable 64-bit FNV-1a of a JSON document, as 16 hex digits.
std::string JsonHash(const nlohmann::json& doc);

nlohmann::json OwnerReference(const DeploymentSpec& d);
nlohmann::json CommonLabels(const DeploymentSpec& d);

nlohmann::json DesiredConfigMap(const DeploymentSpec& d);
nlohmann::json DesiredWorkersService(const DeploymentSpec& d);
nlohmann::json DesiredLeadersService(const DeploymentSpec& d);
// The worker pod template of group `group` without incarnation; its JsonHash is the
// group's spec hash (a change rolls the group).
nlohmann::json WorkerPodTemplate(const DeploymentSpec& d, int group);
std::string GroupSpecHash(const DeploymentSpec& d);
nlohmann::json DesiredGroupStatefulSet(const DeploymentSpec& d, int group, const GroupRecord& record);
// Empty object when the spec names no gang scheduler.
nlohmann::json DesiredPodGroup(const DeploymentSpec& d, int group);
nlohmann::json DesiredRouterDeployment(const DeploymentSpec& d);
nlohmann::json DesiredRouterService(const DeploymentSpec& d);

// Label selector of the groups' worker pods (status.selector, for the scale subresource).
std::string WorkerPodSelector(const DeploymentSpec& d);

}  // namespace shoal::op
