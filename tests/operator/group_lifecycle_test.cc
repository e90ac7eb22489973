#include "operator/group_lifecycle.h"

#include <gtest/gtest.h>

#include "tests/operator/deployment_builder.h"

namespace shoal::op {
namespace {

using testing::DeploymentBuilder;

PodObservation Pod(const std::string& name, const std::string& uid, bool ready, int incarnation = 0) {
  PodObservation p;
  p.name = name;
  p.uid = uid;
  p.ready = ready;
  p.incarnation = incarnation;
  p.spec_hash = "h1";
  return p;
}

GroupRecord Started(std::vector<std::string> uids, int incarnation = 0, int restarts = 0) {
  GroupRecord r;
  r.started_pods = std::move(uids);
  r.incarnation = incarnation;
  r.restarts = restarts;
  r.ready_since = 100;
  return r;
}

const DeploymentSpec kTwoPods = DeploymentBuilder().Tensor(2).Spec();
const DeploymentSpec kTwoPodsAfterStart = DeploymentBuilder().Tensor(2).RestartPolicy("RecreateGroupAfterStart").Spec();

TEST(DecideGroup, AllPodsReadyStartsTheGroupAndRecordsTheirUids) {
  auto g = DecideGroup(kTwoPods, "h1", {}, {Pod("ds-g0-1", "u2", true), Pod("ds-g0-0", "u1", true)}, 500);
  EXPECT_EQ(g.phase, GroupPhase::kReady);
  EXPECT_FALSE(g.recreate);
  EXPECT_EQ(g.record.started_pods, (std::vector<std::string>{"u1", "u2"}));
  EXPECT_EQ(g.record.ready_since, 500);
  EXPECT_EQ(g.ready_pods, 2);
}

TEST(DecideGroup, PartlyReadyGroupIsPendingAndNotStarted) {
  auto g = DecideGroup(kTwoPods, "h1", {}, {Pod("ds-g0-0", "u1", true), Pod("ds-g0-1", "u2", false)}, 500);
  EXPECT_EQ(g.phase, GroupPhase::kPending);
  EXPECT_FALSE(g.record.started());
}

TEST(DecideGroup, FailedPodRecreatesTheWholeGroup) {
  auto failed = Pod("ds-g0-1", "u2", false);
  failed.failed = true;
  auto g = DecideGroup(kTwoPods, "h1", Started({"u1", "u2"}), {Pod("ds-g0-0", "u1", true), failed}, 500);
  EXPECT_TRUE(g.recreate);
  EXPECT_EQ(g.phase, GroupPhase::kRestarting);
  EXPECT_EQ(g.record.incarnation, 1);
  EXPECT_EQ(g.record.restarts, 1);
  EXPECT_FALSE(g.record.started());
  EXPECT_EQ(g.pods_to_delete, (std::vector<std::string>{"ds-g0-0", "ds-g0-1"}));
  EXPECT_NE(g.reason.find("ds-g0-1 failed"), std::string::npos);
}

TEST(DecideGroup, ReplacedPodAfterStartRecreatesTheGroup) {
  auto g = DecideGroup(kTwoPods, "h1", Started({"u1", "u2"}), {Pod("ds-g0-0", "u1", true), Pod("ds-g0-1", "u9", false)},
                       500);
  EXPECT_TRUE(g.recreate);
  EXPECT_NE(g.reason.find("ds-g0-1 was replaced"), std::string::npos);
}

TEST(DecideGroup, MissingPodAfterStartRecreatesTheGroup) {
  auto g = DecideGroup(kTwoPods, "h1", Started({"u1", "u2"}), {Pod("ds-g0-0", "u1", true)}, 500);
  EXPECT_TRUE(g.recreate);
  EXPECT_EQ(g.pods_to_delete, (std::vector<std::string>{"ds-g0-0"}));
}

TEST(DecideGroup, ContainerRestartRecreatesTheGroup) {
  auto restarted = Pod("ds-g0-0", "u1", true);
  restarted.container_restarts = 1;
  auto g = DecideGroup(kTwoPods, "h1", Started({"u1", "u2"}), {restarted, Pod("ds-g0-1", "u2", true)}, 500);
  EXPECT_TRUE(g.recreate);
}

TEST(DecideGroup, OnPodRestartRecreatesEvenBeforeStart) {
  auto failed = Pod("ds-g0-1", "u2", false);
  failed.failed = true;
  auto g = DecideGroup(kTwoPods, "h1", {}, {Pod("ds-g0-0", "u1", false), failed}, 500);
  EXPECT_TRUE(g.recreate);
}

TEST(DecideGroup, AfterStartLeavesAPendingGroupAlone) {
  auto failed = Pod("ds-g0-1", "u2", false);
  failed.failed = true;
  auto g = DecideGroup(kTwoPodsAfterStart, "h1", {}, {Pod("ds-g0-0", "u1", false), failed}, 500);
  EXPECT_FALSE(g.recreate);
  EXPECT_TRUE(g.pods_to_delete.empty());
  EXPECT_EQ(g.phase, GroupPhase::kPending);
}

TEST(DecideGroup, AfterStartRecreatesOnceStarted) {
  auto g = DecideGroup(kTwoPodsAfterStart, "h1", Started({"u1", "u2"}),
                       {Pod("ds-g0-0", "u1", true), Pod("ds-g0-1", "u7", false)}, 500);
  EXPECT_TRUE(g.recreate);
}

TEST(DecideGroup, SpentBudgetMarksTheGroupFailedInsteadOfLooping) {
  auto spec = DeploymentBuilder().Tensor(2).MaxGroupRestarts(2).Spec();
  auto g = DecideGroup(spec, "h1", Started({"u1", "u2"}, 2, 2), {Pod("ds-g0-0", "u1", true, 2), Pod("ds-g0-1", "u3", false, 2)},
                       500);
  EXPECT_FALSE(g.recreate);
  EXPECT_TRUE(g.newly_failed);
  EXPECT_EQ(g.phase, GroupPhase::kFailed);
  EXPECT_EQ(g.record.failed_spec_hash, "h1");
  EXPECT_TRUE(g.pods_to_delete.empty());
  // The next reconcile keeps it failed and quiet.
  auto again = DecideGroup(spec, "h1", g.record, {Pod("ds-g0-0", "u1", true, 2), Pod("ds-g0-1", "u4", false, 2)}, 600);
  EXPECT_EQ(again.phase, GroupPhase::kFailed);
  EXPECT_FALSE(again.recreate);
  EXPECT_FALSE(again.newly_failed);
}

TEST(DecideGroup, SpecChangeLiftsASpentBudget) {
  GroupRecord r = Started({"u1", "u2"}, 5, 5);
  r.failed_spec_hash = "h0";
  auto g = DecideGroup(kTwoPods, "h1", r, {Pod("ds-g0-0", "u1", true, 5), Pod("ds-g0-1", "u2", true, 5)}, 500);
  EXPECT_NE(g.phase, GroupPhase::kFailed);
  EXPECT_EQ(g.record.restarts, 0);
  EXPECT_TRUE(g.record.failed_spec_hash.empty());
}

TEST(RollGroup, RollingToANewSpecStartsAFreshRestartBudget) {
  auto old = Pod("ds-g0-0", "u1", true, 4);
  old.spec_hash = "h0";
  auto other = Pod("ds-g0-1", "u2", true, 4);
  other.spec_hash = "h0";
  auto g = DecideGroup(kTwoPods, "h1", Started({"u1", "u2"}, 4, 3), {old, other}, 500);
  ASSERT_TRUE(g.outdated);
  RollGroup(&g, {old, other});
  EXPECT_TRUE(g.recreate);
  EXPECT_EQ(g.record.incarnation, 5);
  EXPECT_EQ(g.record.restarts, 0);
  EXPECT_EQ(g.pods_to_delete, (std::vector<std::string>{"ds-g0-0", "ds-g0-1"}));
}

TEST(DecideGroup, PodsOfAnOlderIncarnationAreDeletedAndIgnored) {
  GroupRecord r;
  r.incarnation = 3;
  auto g = DecideGroup(kTwoPods, "h1", r, {Pod("ds-g0-0", "old", true, 2), Pod("ds-g0-1", "u2", true, 3)}, 500);
  EXPECT_FALSE(g.recreate);
  EXPECT_EQ(g.pods_to_delete, (std::vector<std::string>{"ds-g0-0"}));
  EXPECT_EQ(g.ready_pods, 1);
  EXPECT_EQ(g.phase, GroupPhase::kPending);
}

TEST(DecideGroup, OlderSpecHashMarksTheGroupOutdated) {
  auto old = Pod("ds-g0-0", "u1", true);
  old.spec_hash = "h0";
  auto g = DecideGroup(kTwoPods, "h1", Started({"u1", "u2"}), {old, Pod("ds-g0-1", "u2", true)}, 500);
  EXPECT_TRUE(g.outdated);
  EXPECT_FALSE(g.recreate);
}

GroupDecision Group(GroupPhase phase, bool outdated) {
  GroupDecision g;
  g.phase = phase;
  g.outdated = outdated;
  return g;
}

TEST(PlanRollout, RollsOneReadyGroupAtATimeHighestFirst) {
  auto d = DeploymentBuilder().Spec();
  std::vector<GroupDecision> groups(4, Group(GroupPhase::kReady, true));
  auto plan = PlanRollout(d, 4, groups);
  EXPECT_TRUE(plan.in_progress);
  EXPECT_EQ(plan.group_count, 4);
  EXPECT_EQ(plan.groups_to_roll, (std::vector<int>{3}));
  // While group 3 is down, nothing else goes.
  groups[3] = Group(GroupPhase::kUpdating, false);
  EXPECT_TRUE(PlanRollout(d, 4, groups).groups_to_roll.empty());
  groups[3] = Group(GroupPhase::kReady, false);
  EXPECT_EQ(PlanRollout(d, 4, groups).groups_to_roll, (std::vector<int>{2}));
}

TEST(PlanRollout, MaxUnavailableTwoRollsTwo) {
  auto d = DeploymentBuilder().MaxUnavailable(2).Spec();
  std::vector<GroupDecision> groups(4, Group(GroupPhase::kReady, true));
  EXPECT_EQ(PlanRollout(d, 4, groups).groups_to_roll, (std::vector<int>{3, 2}));
}

TEST(PlanRollout, UnavailableOutdatedGroupsRollForFree) {
  auto d = DeploymentBuilder().Spec();
  std::vector<GroupDecision> groups(3, Group(GroupPhase::kReady, true));
  groups[0] = Group(GroupPhase::kPending, true);
  // Group 0 is down already: it rolls, and it uses up the budget for the Ready ones.
  EXPECT_EQ(PlanRollout(d, 3, groups).groups_to_roll, (std::vector<int>{0}));
}

TEST(PlanRollout, PartitionKeepsLowGroupsOnTheOldSpec) {
  auto d = DeploymentBuilder().MaxUnavailable(4).Partition(2).Spec();
  std::vector<GroupDecision> groups(4, Group(GroupPhase::kReady, true));
  EXPECT_EQ(PlanRollout(d, 4, groups).groups_to_roll, (std::vector<int>{3, 2}));
  groups[2].outdated = groups[3].outdated = false;
  auto plan = PlanRollout(d, 4, groups);
  EXPECT_FALSE(plan.in_progress);
  EXPECT_TRUE(plan.groups_to_roll.empty());
}

TEST(PlanRollout, SurgeAddsGroupsWhileRollingAndReadySurgeWidensTheBudget) {
  auto d = DeploymentBuilder().MaxUnavailable(0).MaxSurge(1).Spec();
  std::vector<GroupDecision> groups(2, Group(GroupPhase::kReady, true));
  auto plan = PlanRollout(d, 2, groups);
  EXPECT_EQ(plan.group_count, 3);
  EXPECT_TRUE(plan.groups_to_roll.empty());  // the surge group is not Ready yet
  groups.push_back(Group(GroupPhase::kReady, false));
  EXPECT_EQ(PlanRollout(d, 2, groups).groups_to_roll, (std::vector<int>{1}));
  // The last group is recreated but still loading: the surge group stays.
  for (auto& g : groups) g.outdated = false;
  groups[1].phase = GroupPhase::kUpdating;
  EXPECT_EQ(PlanRollout(d, 2, groups).group_count, 3);
  EXPECT_TRUE(PlanRollout(d, 2, groups).in_progress);
  // Done rolling once it is Ready: back to two groups.
  groups[1].phase = GroupPhase::kReady;
  EXPECT_EQ(PlanRollout(d, 2, groups).group_count, 2);
}

}  // namespace
}  // namespace shoal::op
