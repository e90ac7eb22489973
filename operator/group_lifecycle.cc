#include "operator/group_lifecycle.h"

#include <algorithm>
#include <cstdlib>
#include <set>

#include <fmt/format.h>

namespace shoal::op {

PodObservation ObservePod(const nlohmann::json& pod) {
  PodObservation p;
  p.name = kube::NameOf(pod);
  const auto& meta = pod.value("metadata", nlohmann::json::object());
  p.uid = meta.value("uid", "");
  p.terminating = meta.contains("deletionTimestamp") && !meta["deletionTimestamp"].is_null();
  p.incarnation = std::atoi(kube::LabelOf(pod, kLabelGroupRestarts).c_str());
  p.spec_hash = kube::LabelOf(pod, kLabelSpecHash);
  const auto& status = pod.value("status", nlohmann::json::object());
  p.failed = status.value("phase", "") == "Failed";
  for (const auto& c : status.value("conditions", nlohmann::json::array())) {
    if (c.value("type", "") == "Ready") p.ready = c.value("status", "") == "True";
  }
  for (const auto& cs : status.value("containerStatuses", nlohmann::json::array())) {
    p.container_restarts += cs.value("restartCount", 0);
  }
  return p;
}

const char* GroupPhaseName(GroupPhase phase) {
  switch (phase) {
    case GroupPhase::kPending: return "Pending";
    case GroupPhase::kReady: return "Ready";
    case GroupPhase::kRestarting: return "Restarting";
    case GroupPhase::kFailed: return "Failed";
    case GroupPhase::kUpdating: return "Updating";
  }
  return "Unknown";
}

namespace {

void Recreate(GroupDecision* out, const std::vector<PodObservation>& pods) {
  out->recreate = true;
  out->record.incarnation++;
  out->record.started_pods.clear();
  out->record.ready_since = 0;
  out->phase = GroupPhase::kRestarting;
  out->ready_pods = 0;
  out->pods_to_delete.clear();
  for (const auto& p : pods) {
    if (!p.terminating) out->pods_to_delete.push_back(p.name);
  }
}

}  // namespace

GroupDecision DecideGroup(const DeploymentSpec& d, const std::string& spec_hash, const GroupRecord& record,
                          const std::vector<PodObservation>& pods, int64_t now_unix) {
  GroupDecision out;
  out.record = record;
  const int want = d.PodsPerGroup();

  // A spec change lifts a spent budget: the user changed something, try again.
  if (!out.record.failed_spec_hash.empty() && out.record.failed_spec_hash != spec_hash) {
    out.record.failed_spec_hash.clear();
    out.record.restarts = 0;
  }

  std::vector<PodObservation> current;
  for (const auto& p : pods) {
    if (p.incarnation != record.incarnation) {
      if (!p.terminating) out.pods_to_delete.push_back(p.name);  // stale: left from a recreate
      continue;
    }
    current.push_back(p);
  }
  for (const auto& p : current) {
    if (p.ready && !p.terminating) out.ready_pods++;
    if (!p.spec_hash.empty() && p.spec_hash != spec_hash) out.outdated = true;
  }

  if (!out.record.failed_spec_hash.empty()) {
    out.phase = GroupPhase::kFailed;
    return out;
  }

  // Failure signals among the current incarnation.
  std::string failure;
  const std::set<std::string> started(record.started_pods.begin(), record.started_pods.end());
  for (const auto& p : current) {
    if (p.failed) {
      failure = fmt::format("pod {} failed", p.name);
    } else if (p.container_restarts > 0) {
      failure = fmt::format("pod {} restarted ({} container restarts)", p.name, p.container_restarts);
    } else if (p.terminating && record.started()) {
      failure = fmt::format("pod {} is being deleted", p.name);
    } else if (record.started() && !started.count(p.uid)) {
      failure = fmt::format("pod {} was replaced", p.name);
    }
    if (!failure.empty()) break;
  }
  if (failure.empty() && record.started() && static_cast<int>(current.size()) < want) {
    failure = fmt::format("{} of {} pods are gone", want - static_cast<int>(current.size()), want);
  }
  const bool policy_allows =
      d.restart_policy == RestartPolicy::kRecreateGroupOnPodRestart || record.started();
  if (!failure.empty() && policy_allows) {
    if (record.restarts >= d.max_group_restarts) {
      out.record.failed_spec_hash = spec_hash;
      out.newly_failed = true;
      out.phase = GroupPhase::kFailed;
      out.reason = fmt::format("{}; restart budget of {} spent", failure, d.max_group_restarts);
      return out;
    }
    out.record.restarts++;
    out.reason = failure;
    Recreate(&out, current);
    for (const auto& p : pods) {  // stale pods go too
      if (p.incarnation != record.incarnation && !p.terminating) out.pods_to_delete.push_back(p.name);
    }
    return out;
  }

  const bool all_ready = static_cast<int>(current.size()) == want && out.ready_pods == want;
  if (all_ready && !record.started()) {
    for (const auto& p : current) out.record.started_pods.push_back(p.uid);
    std::sort(out.record.started_pods.begin(), out.record.started_pods.end());
    out.record.ready_since = now_unix;
  }
  out.phase = all_ready ? GroupPhase::kReady : GroupPhase::kPending;
  return out;
}

void RollGroup(GroupDecision* decision, const std::vector<PodObservation>& pods) {
  std::vector<PodObservation> current;
  for (const auto& p : pods) {
    if (p.incarnation == decision->record.incarnation) current.push_back(p);
  }
  std::vector<std::string> stale = decision->pods_to_delete;
  Recreate(decision, current);
  // A new spec starts a fresh restart budget: failures of the old one say nothing of it.
  decision->record.restarts = 0;
  decision->pods_to_delete.insert(decision->pods_to_delete.end(), stale.begin(), stale.end());
  decision->phase = GroupPhase::kUpdating;
  decision->outdated = false;
  decision->reason = "spec changed";
}

RolloutPlan PlanRollout(const DeploymentSpec& d, int replicas, const std::vector<GroupDecision>& groups) {
  RolloutPlan plan;
  std::vector<int> outdated;
  for (int i = std::min<int>(replicas, groups.size()) - 1; i >= std::max(0, d.rollout.partition); --i) {
    if (groups[i].outdated && !groups[i].recreate) outdated.push_back(i);  // highest first
  }
  // Surge groups stay until every group is Ready on the new spec, not only recreated:
  // the last rolled group is still loading its model when nothing is outdated any more.
  const int surge_running = std::max<int>(0, static_cast<int>(groups.size()) - replicas);
  bool all_ready = true;
  for (int i = 0; i < std::min<int>(replicas, groups.size()); ++i) all_ready &= groups[i].phase == GroupPhase::kReady;
  const bool finishing = outdated.empty() && d.rollout.max_surge_groups > 0 && surge_running > 0 && !all_ready;
  plan.in_progress = !outdated.empty() || finishing;
  const int surge = plan.in_progress ? std::min<int>(d.rollout.max_surge_groups,
                                                     finishing ? surge_running : static_cast<int>(outdated.size()))
                                     : 0;
  plan.group_count = replicas + surge;
  int unavailable = 0;
  for (int i = 0; i < std::min<int>(replicas, groups.size()); ++i) {
    if (groups[i].phase != GroupPhase::kReady) unavailable++;
  }
  int surge_ready = 0;
  for (int i = replicas; i < std::min<int>(replicas + surge, groups.size()); ++i) {
    if (groups[i].phase == GroupPhase::kReady) surge_ready++;
  }
  int max_unavailable = d.rollout.max_unavailable_groups;
  if (max_unavailable == 0 && d.rollout.max_surge_groups == 0) max_unavailable = 1;  // else nothing could move
  int budget = max_unavailable + surge_ready - unavailable;
  for (int i : outdated) {
    if (groups[i].phase != GroupPhase::kReady) {
      plan.groups_to_roll.push_back(i);  // already down: replacing it costs nothing
    } else if (budget > 0) {
      plan.groups_to_roll.push_back(i);
      budget--;
    }
  }
  return plan;
}

}  // namespace shoal::op
