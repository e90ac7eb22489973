#pragma once
// Group lifecycle as pure decisions over what the informers observed: when a group is
// recreated (restart policies, restart budget), when it counts as started and Ready, and
// which groups a rolling update may replace next.
//
// A group is recreated by bumping its incarnation (a pod-template label) and deleting
// its pods; the StatefulSet brings them back at the new incarnation, so pods of an older
// incarnation are recognisably stale even while a lagging cache still shows them.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "operator/api_types.h"
#include "operator/desired_children.h"

namespace shoal::op {

struct PodObservation {
  std::string name;
  std::string uid;
  int incarnation = 0;
  std::string spec_hash;
  bool ready = false;
  bool failed = false;         // phase Failed
  bool terminating = false;    // deletionTimestamp set
  int container_restarts = 0;  // sum over containers
};

// Reads what the lifecycle needs from a Pod object.
PodObservation ObservePod(const nlohmann::json& pod);

enum class GroupPhase { kPending, kReady, kRestarting, kFailed, kUpdating };
const char* GroupPhaseName(GroupPhase phase);

struct GroupDecision {
  GroupRecord record;                   // what to write back (may equal the input)
  GroupPhase phase = GroupPhase::kPending;
  int ready_pods = 0;
  bool outdated = false;                // current pods run an older spec hash
  bool recreate = false;                // delete `pods_to_delete`: the whole group comes back
  bool newly_failed = false;            // the budget ran out just now
  std::vector<std::string> pods_to_delete;
  std::string reason;                   // why it restarts or failed (for the Event)
};

// Idea: pods of an older incarnation are stale (delete them, ignore them). Among current
// pods a failure is a Failed phase, a container restart, a pod being deleted that we did
// not delete, or — once the group has started — a pod whose UID is not one of the
// started set (a replacement). A failure recreates the group when the policy allows it
// (RecreateGroupAfterStart: only after start) and the budget is not spent; a spent
// budget marks the group failed instead, until the spec changes.
GroupDecision DecideGroup(const DeploymentSpec& d, const std::string& spec_hash, const GroupRecord& record,
                          const std::vector<PodObservation>& pods, int64_t now_unix);

// A recreate for a roll (new spec), not counted against the restart budget.
void RollGroup(GroupDecision* decision, const std::vector<PodObservation>& pods);

struct RolloutPlan {
  int group_count = 0;            // StatefulSets to keep: replicas plus surge while rolling
  std::vector<int> groups_to_roll;
  bool in_progress = false;
};

// Idea: groups at index >= partition running an older spec are rolled, highest index
// first. Groups already unavailable roll for free; a Ready group may be taken down
// while unavailable groups stay within maxUnavailableGroups plus the surge groups that
// are Ready. While rolling, maxSurgeGroups extra groups run the new spec.
RolloutPlan PlanRollout(const DeploymentSpec& d, int replicas, const std::vector<GroupDecision>& groups);

}  // namespace shoal::op
