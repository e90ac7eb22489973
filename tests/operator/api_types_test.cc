#include "operator/api_types.h"

#include <gtest/gtest.h>

#include "operator/deployment_status.h"
#include "tests/operator/deployment_builder.h"

namespace shoal::op {
namespace {

using testing::DeploymentBuilder;

TEST(ParseDeployment, DefaultsMatchTheDesign) {
  auto d = DeploymentBuilder().Spec();
  EXPECT_EQ(d.tensor, 1);
  EXPECT_EQ(d.pipeline, 1);
  EXPECT_EQ(d.replicas, 1);
  EXPECT_EQ(d.PodsPerGroup(), 1);
  EXPECT_EQ(d.rollout.max_unavailable_groups, 1);
  EXPECT_EQ(d.max_group_restarts, 5);
  EXPECT_EQ(d.restart_policy, RestartPolicy::kRecreateGroupOnPodRestart);
  EXPECT_EQ(d.autoscaling.scale_down_stabilization_seconds, 300);
  EXPECT_EQ(d.served_name, "m");
}

TEST(ParseDeployment, PodsPerGroupIsRanksOverGpusPerPod) {
  EXPECT_EQ(DeploymentBuilder().Tensor(8).Pipeline(2).GpusPerPod(8).Spec().PodsPerGroup(), 2);
  EXPECT_EQ(DeploymentBuilder().Tensor(4).Pipeline(1).GpusPerPod(0).Spec().PodsPerGroup(), 4);
}

TEST(ParseDeployment, ErrorsNameTheField) {
  struct Row {
    DeploymentBuilder b;
    std::string message;
  };
  const Row rows[] = {
      {DeploymentBuilder().Tensor(0), "spec.parallelism.tensor must be >= 1"},
      {DeploymentBuilder().Tensor(3).GpusPerPod(2), "spec.parallelism.gpusPerPod 2 must divide tensor*pipeline = 3"},
      {DeploymentBuilder().Set("/spec/parallelism/tensor", "two"), "spec.parallelism.tensor must be an integer"},
      {DeploymentBuilder().RestartPolicy("Always"), "spec.restartPolicy \"Always\""},
      {DeploymentBuilder().Set("/spec/autoscaling/enabled", true).Set("/spec/autoscaling/minReplicas", 5).Set(
           "/spec/autoscaling/maxReplicas", 2),
       "minReplicas (5) <= maxReplicas (2)"},
  };
  for (const auto& row : rows) {
    auto parsed = ParseDeployment(row.b.Build(), {});
    ASSERT_FALSE(parsed.ok()) << row.message;
    EXPECT_NE(std::string(parsed.status().message()).find(row.message), std::string::npos)
        << parsed.status().message();
  }
}

TEST(ComputeStatus, AvailableWhenGroupsAndRouterReady) {
  auto d = DeploymentBuilder().Replicas(2).Spec();
  StatusInputs in;
  in.replicas = 2;
  in.groups.resize(2);
  in.groups[0].phase = in.groups[1].phase = GroupPhase::kReady;
  in.groups[0].ready_pods = in.groups[1].ready_pods = 1;
  in.router_ready = 1;
  auto status = ComputeStatus(d, in, {}, "2026-01-01T00:00:00Z");
  EXPECT_EQ(status["readyReplicas"], 2);
  EXPECT_EQ(status["replicas"], 2);
  EXPECT_EQ(status["observedGeneration"], 1);
  EXPECT_EQ(status["endpoint"], "ds.models.svc:50051");
  std::map<std::string, std::string> conditions;
  for (const auto& c : status["conditions"]) conditions[c["type"]] = c["status"];
  EXPECT_EQ(conditions["Available"], "True");
  EXPECT_EQ(conditions["Progressing"], "False");
  EXPECT_EQ(conditions["Degraded"], "False");
  EXPECT_EQ(conditions["ScalingActive"], "False");
}

TEST(ComputeStatus, FailedGroupIsDegradedAndTransitionTimeIsKept) {
  auto d = DeploymentBuilder().Spec();
  StatusInputs in;
  in.replicas = 1;
  in.groups.resize(1);
  in.groups[0].phase = GroupPhase::kFailed;
  auto first = ComputeStatus(d, in, {}, "T1");
  auto second = ComputeStatus(d, in, first, "T2");
  for (const auto& c : second["conditions"]) {
    if (c["type"] == "Degraded") {
      EXPECT_EQ(c["status"], "True");
      EXPECT_EQ(c["reason"], "GroupFailed");
      EXPECT_EQ(c["lastTransitionTime"], "T1");
    }
  }
  EXPECT_EQ(first, ComputeStatus(d, in, first, "T1"));
}

}  // namespace
}  // namespace shoal::op
