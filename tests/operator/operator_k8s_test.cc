// shoal-operator against a real API server (tests/k8s/ control plane, kwok pods): the
// binary runs as a child process; the test drives the cluster and reads it back.
#include <set>

#include <gtest/gtest.h>

#include "operator/api_types.h"
#include "tests/operator/deployment_builder.h"
#include "tests/operator/k8s_support.h"

namespace shoal::op {
namespace {

using nlohmann::json;
using testing::DeploymentBuilder;
using testing::K8sTest;
using testing::Kubectl;
using testing::OperatorProcess;
using testing::WaitFor;
namespace res = kube::resources;

class OperatorK8sTest : public K8sTest {
 protected:
  // A deployment whose pods land on the kwok CPU nodes.
  DeploymentBuilder Deployment(const std::string& name = "ds") {
    DeploymentBuilder b(name, ns_);
    b.Set("/spec/worker/image", "shoal-worker:test").Set("/spec/router/image", "shoal-router:test");
    return b;
  }
  void Create(const DeploymentBuilder& b) {
    json obj = b.Build();
    obj["metadata"].erase("uid");
    obj["metadata"].erase("generation");
    auto created = client_->Post(kDeepSeekDeployments.CollectionPath(ns_), obj);
    ASSERT_TRUE(created.ok()) << created.status();
  }
  json Dsd(const std::string& name = "ds") {
    auto got = Get(kDeepSeekDeployments, name);
    return got.ok() ? *got : json::object();
  }
  std::string Condition(const json& dsd, const std::string& type, std::string* reason = nullptr) {
    for (const auto& c : dsd.value("status", json::object()).value("conditions", json::array())) {
      if (c.value("type", "") == type) {
        if (reason) *reason = c.value("reason", "");
        return c.value("status", "");
      }
    }
    return "";
  }
  // Pod name -> uid of one group.
  std::map<std::string, std::string> GroupPods(const std::string& name, int group) {
    std::map<std::string, std::string> out;
    for (const auto& pod : List(res::kPods, fmt::format("shoal.dev/deployment={},shoal.dev/group={}", name, group))) {
      if (pod["metadata"].contains("deletionTimestamp")) continue;
      out[kube::NameOf(pod)] = pod["metadata"]["uid"];
    }
    return out;
  }
  bool GroupReady(const std::string& name, int group, int pods) {
    int ready = 0;
    for (const auto& pod : List(res::kPods, fmt::format("shoal.dev/deployment={},shoal.dev/group={}", name, group))) {
      if (pod["metadata"].contains("deletionTimestamp")) continue;
      for (const auto& c : pod.value("status", json::object()).value("conditions", json::array())) {
        if (c["type"] == "Ready" && c["status"] == "True") ready++;
      }
    }
    return ready == pods;
  }
  bool Available(const std::string& name = "ds") { return Condition(Dsd(name), "Available") == "True"; }
  int Restarts(const std::string& name, int group) {
    auto groups = Dsd(name).value("status", json::object()).value("groups", json::array());
    return group < static_cast<int>(groups.size()) ? groups[group].value("restarts", 0) : -1;
  }
  // Marks a pod Failed through the status subresource (what the kubelet reports when a
  // container dies; kwok leaves unscheduled pods alone).
  void FailPod(const std::string& pod) {
    auto patched = client_->Patch(res::kPods.ObjectPath(ns_, pod) + "/status",
                                  {{"status", {{"phase", "Failed"}, {"reason", "Error"}}}});
    ASSERT_TRUE(patched.ok()) << patched.status();
  }
  void DeletePod(const std::string& pod) {
    ASSERT_TRUE(client_->Delete(res::kPods.ObjectPath(ns_, pod)).ok());
  }
};

TEST_F(OperatorK8sTest, ChildrenAppearWithTheRightSpec) {
  OperatorProcess op(ns_, "op-a", false);
  Create(Deployment().Tensor(2).Replicas(2));
  ASSERT_TRUE(WaitFor([&] { return Get(res::kStatefulSets, "ds-g1").ok(); }, std::chrono::seconds(30)));
  auto sts = *Get(res::kStatefulSets, "ds-g0");
  EXPECT_EQ(sts["spec"]["replicas"], 2);
  EXPECT_EQ(sts["spec"]["podManagementPolicy"], "Parallel");
  EXPECT_EQ(sts["spec"]["serviceName"], "ds-workers");
  EXPECT_EQ(sts["metadata"]["ownerReferences"][0]["kind"], "DeepSeekDeployment");
  EXPECT_EQ(sts["metadata"]["ownerReferences"][0]["uid"], Dsd()["metadata"]["uid"]);
  std::map<std::string, json> env;
  for (const auto& e : sts["spec"]["template"]["spec"]["containers"][0]["env"]) env[e["name"]] = e;
  EXPECT_EQ(env["SHOAL_GROUP"]["value"], "0");
  EXPECT_EQ(env["SHOAL_PODS_PER_GROUP"]["value"], "2");
  EXPECT_EQ(env["SHOAL_LEADER_ADDR"]["value"], fmt::format("ds-g0-0.ds-workers.{}.svc:50051", ns_));
  EXPECT_TRUE(Get(res::kServices, "ds-workers").ok());
  EXPECT_TRUE(Get(res::kServices, "ds-leaders").ok());
  EXPECT_TRUE(Get(res::kServices, "ds").ok());
  EXPECT_TRUE(Get(res::kConfigMaps, "ds-engine").ok());
  auto router = Get(res::kDeployments, "ds");
  ASSERT_TRUE(router.ok());
  EXPECT_EQ((*router)["spec"]["template"]["spec"]["containers"][0]["args"][0],
            fmt::format("--upstream-dns=ds-leaders.{}.svc:50051", ns_));
  // Owned through server-side apply by our field manager.
  bool managed = false;
  for (const auto& m : sts["metadata"]["managedFields"]) managed |= m.value("manager", "") == "shoal-operator";
  EXPECT_TRUE(managed);
}

TEST_F(OperatorK8sTest, ReadyPodsMakeItAvailableAndFillTheColumns) {
  OperatorProcess op(ns_, "op-a", false);
  Create(Deployment().Tensor(2).Replicas(2));
  // Available needs replicas - maxUnavailableGroups (here 1) ready groups; wait for both.
  ASSERT_TRUE(WaitFor([&] { return Available() && Dsd()["status"].value("readyReplicas", 0) == 2; },
                      std::chrono::seconds(60)))
      << Dsd().dump(2);
  auto status = Dsd()["status"];
  EXPECT_EQ(status["readyReplicas"], 2);
  EXPECT_EQ(status["replicas"], 2);
  EXPECT_EQ(status["observedGeneration"], Dsd()["metadata"]["generation"]);
  EXPECT_EQ(status["endpoint"], fmt::format("ds.{}.svc:50051", ns_));
  EXPECT_EQ(Condition(Dsd(), "Degraded"), "False");
  EXPECT_TRUE(WaitFor([&] { return Condition(Dsd(), "Progressing") == "False"; }, std::chrono::seconds(20)));
  std::string table = Kubectl("get dsd ds -n " + ns_ + " --no-headers");
  // NAME REPLICAS READY ... : the printer columns read the status we wrote.
  EXPECT_NE(table.find("ds "), std::string::npos) << table;
  EXPECT_NE(table.find(" 2 "), std::string::npos) << table;
  std::string ready = Kubectl("get dsd ds -n " + ns_ + " -o jsonpath={.status.readyReplicas}");
  EXPECT_EQ(ready, "2");
}

TEST_F(OperatorK8sTest, DeletingOnePodRecreatesItsWholeGroup) {
  OperatorProcess op(ns_, "op-a", false);
  Create(Deployment().Tensor(2).Replicas(2));
  ASSERT_TRUE(WaitFor([&] { return Available() && GroupReady("ds", 0, 2) && GroupReady("ds", 1, 2); },
                      std::chrono::seconds(60)));
  // Let the operator record the started group before the fault.
  ASSERT_TRUE(WaitFor([&] { return !kube::AnnotationOf(*Get(res::kStatefulSets, "ds-g0"), "shoal.dev/started-pods").empty(); },
                      std::chrono::seconds(20)));
  auto before0 = GroupPods("ds", 0);
  auto before1 = GroupPods("ds", 1);
  ASSERT_EQ(before0.size(), 2u);
  DeletePod("ds-g0-1");
  // Rank 0 was healthy, yet it is replaced too: the whole group restarts.
  ASSERT_TRUE(WaitFor([&] {
    auto now = GroupPods("ds", 0);
    return now.size() == 2 && now["ds-g0-0"] != before0["ds-g0-0"] && now["ds-g0-1"] != before0["ds-g0-1"];
  }, std::chrono::seconds(40)));
  EXPECT_EQ(GroupPods("ds", 1), before1);  // the other group is untouched
  EXPECT_TRUE(WaitFor([&] { return Restarts("ds", 0) == 1 && Available(); }, std::chrono::seconds(40)));
  std::string events = Kubectl("get events -n " + ns_ + " --field-selector reason=GroupRestarted -o name");
  EXPECT_FALSE(events.empty());
}

// A group whose pods cannot be scheduled (no node matches) sees one pod fail.
TEST_F(OperatorK8sTest, PendingGroupIsNotRestartedUnderRecreateGroupAfterStart) {
  OperatorProcess op(ns_, "op-a", false);
  Create(Deployment().Tensor(2).RestartPolicy("RecreateGroupAfterStart").Set("/spec/worker/nodeSelector",
                                                                               json{{"shoal.dev/none", "x"}}));
  ASSERT_TRUE(WaitFor([&] { return GroupPods("ds", 0).size() == 2; }, std::chrono::seconds(30)));
  auto before = GroupPods("ds", 0);
  FailPod("ds-g0-1");
  std::this_thread::sleep_for(std::chrono::seconds(5));
  EXPECT_EQ(GroupPods("ds", 0)["ds-g0-0"], before["ds-g0-0"]);  // the group was not recreated
  EXPECT_EQ(Restarts("ds", 0), 0);
}

// The control for the test above: the same failure under RecreateGroupOnPodRestart does
// recreate the pending group.
TEST_F(OperatorK8sTest, PendingGroupIsRestartedUnderRecreateGroupOnPodRestart) {
  OperatorProcess op(ns_, "op-a", false);
  Create(Deployment().Tensor(2).Set("/spec/worker/nodeSelector", json{{"shoal.dev/none", "x"}}));
  ASSERT_TRUE(WaitFor([&] { return GroupPods("ds", 0).size() == 2; }, std::chrono::seconds(30)));
  auto before = GroupPods("ds", 0);
  FailPod("ds-g0-1");
  EXPECT_TRUE(WaitFor([&] {
    auto now = GroupPods("ds", 0);
    return now.count("ds-g0-0") && now["ds-g0-0"] != before["ds-g0-0"];
  }, std::chrono::seconds(30)));
  EXPECT_TRUE(WaitFor([&] { return Restarts("ds", 0) == 1; }, std::chrono::seconds(20)));
}

TEST_F(OperatorK8sTest, GroupThatKeepsFailingStopsAtItsRestartBudget) {
  OperatorProcess op(ns_, "op-a", false);
  Create(Deployment().Tensor(2).MaxGroupRestarts(2));
  for (int round = 0; round < 3; ++round) {
    ASSERT_TRUE(WaitFor([&] {
      auto sts = Get(res::kStatefulSets, "ds-g0");
      return sts.ok() && GroupReady("ds", 0, 2) &&
             !kube::AnnotationOf(*sts, "shoal.dev/started-pods").empty();
    }, std::chrono::seconds(60))) << "round " << round;
    DeletePod("ds-g0-1");
    if (round < 2) {
      ASSERT_TRUE(WaitFor([&] { return Restarts("ds", 0) == round + 1; }, std::chrono::seconds(30)));
    }
  }
  std::string reason;
  ASSERT_TRUE(WaitFor([&] { return Condition(Dsd(), "Degraded", &reason) == "True"; }, std::chrono::seconds(30)))
      << Dsd().dump(2);
  EXPECT_EQ(reason, "GroupFailed");
  EXPECT_EQ(Dsd()["status"]["groups"][0]["phase"], "Failed");
  // No more restarts: rank 0 keeps its pod even when another pod goes.
  auto pods = GroupPods("ds", 0);
  DeletePod("ds-g0-1");
  std::this_thread::sleep_for(std::chrono::seconds(4));
  EXPECT_EQ(GroupPods("ds", 0)["ds-g0-0"], pods["ds-g0-0"]);
  EXPECT_EQ(Restarts("ds", 0), 2);
  EXPECT_FALSE(Kubectl("get events -n " + ns_ + " --field-selector reason=GroupFailed -o name").empty());
}

TEST_F(OperatorK8sTest, VolcanoGetsOnePodGroupPerGroupWithMinMember) {
  // The PodGroup CRD as Volcano installs it (schema trimmed to what we write).
  const std::string crd = R"(apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: podgroups.scheduling.volcano.sh}
spec:
  group: scheduling.volcano.sh
  names: {kind: PodGroup, plural: podgroups, singular: podgroup, shortNames: [pg]}
  scope: Namespaced
  versions:
  - name: v1beta1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              minMember: {type: integer, format: int32}
              queue: {type: string}
          status: {type: object, x-kubernetes-preserve-unknown-fields: true}
)";
  int rc = 0;
  std::string out = testing::Shell("echo '" + crd + "' | kubectl --kubeconfig " + testing::KubeconfigPath() +
                                   " apply --server-side -f - 2>&1", &rc);
  ASSERT_EQ(rc, 0) << out;
  Kubectl("wait --for=condition=Established --timeout=30s crd/podgroups.scheduling.volcano.sh");
  OperatorProcess op(ns_, "op-a", false);
  Create(Deployment().Tensor(4).Pipeline(2).GpusPerPod(2).Replicas(2).SchedulerName("volcano"));
  for (int g : {0, 1}) {
    const std::string name = fmt::format("ds-g{}", g);
    ASSERT_TRUE(WaitFor([&] { return client_->Get(res::kVolcanoPodGroups.ObjectPath(ns_, name)).ok(); },
                        std::chrono::seconds(30)));
    auto pg = *client_->Get(res::kVolcanoPodGroups.ObjectPath(ns_, name));
    EXPECT_EQ(pg["spec"]["minMember"], 4) << name;
    EXPECT_EQ(pg["metadata"]["ownerReferences"][0]["name"], "ds");
    auto sts = *Get(res::kStatefulSets, name);
    EXPECT_EQ(sts["spec"]["template"]["metadata"]["annotations"]["scheduling.k8s.io/group-name"], name);
    EXPECT_EQ(sts["spec"]["template"]["spec"]["schedulerName"], "volcano");
  }
}

TEST_F(OperatorK8sTest, SpecEditRollsGroupsOneAtATime) {
  OperatorProcess op(ns_, "op-a", false);
  Create(Deployment().Tensor(2).Replicas(3));
  ASSERT_TRUE(WaitFor([&] { return Available() && Condition(Dsd(), "Progressing") == "False"; },
                      std::chrono::seconds(90)));
  std::map<int, std::map<std::string, std::string>> before;
  for (int g = 0; g < 3; ++g) before[g] = GroupPods("ds", g);
  auto patched = client_->Patch(kDeepSeekDeployments.ObjectPath(ns_, "ds"),
                                {{"spec", {{"worker", {{"image", "shoal-worker:v2"}}}}}});
  ASSERT_TRUE(patched.ok()) << patched.status();
  // Watch the roll: never more than one group down at once; the order is 2, 1, 0.
  std::vector<int> order;
  int max_down = 0;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (order.size() < 3 && std::chrono::steady_clock::now() < end) {
    int down = 0;
    for (int g = 0; g < 3; ++g) {
      if (!GroupReady("ds", g, 2)) down++;
      auto now = GroupPods("ds", g);
      bool replaced = !now.empty();
      for (const auto& [pod, uid] : now) replaced &= before[g][pod] != uid;
      if (replaced && std::find(order.begin(), order.end(), g) == order.end()) order.push_back(g);
    }
    max_down = std::max(max_down, down);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(order, (std::vector<int>{2, 1, 0}));
  EXPECT_LE(max_down, 1);
  ASSERT_TRUE(WaitFor([&] { return Available() && Condition(Dsd(), "Progressing") == "False"; },
                      std::chrono::seconds(60)));
  auto sts = *Get(res::kStatefulSets, "ds-g0");
  EXPECT_EQ(sts["spec"]["template"]["spec"]["containers"][0]["image"], "shoal-worker:v2");
  EXPECT_EQ(Restarts("ds", 0), 0);  // a roll is not a failure
}

TEST_F(OperatorK8sTest, ScaleDownRemovesTheHighestGroupsFirst) {
  OperatorProcess op(ns_, "op-a", false);
  Create(Deployment().Replicas(4));
  ASSERT_TRUE(WaitFor([&] { return Get(res::kStatefulSets, "ds-g3").ok() && Available(); }, std::chrono::seconds(60)));
  auto scaled = client_->Patch(kDeepSeekDeployments.ObjectPath(ns_, "ds") + "/scale", {{"spec", {{"replicas", 2}}}});
  ASSERT_TRUE(scaled.ok()) << scaled.status();
  ASSERT_TRUE(WaitFor([&] { return !Get(res::kStatefulSets, "ds-g3").ok() && !Get(res::kStatefulSets, "ds-g2").ok(); },
                      std::chrono::seconds(30)));
  EXPECT_TRUE(Get(res::kStatefulSets, "ds-g0").ok());
  EXPECT_TRUE(Get(res::kStatefulSets, "ds-g1").ok());
  EXPECT_TRUE(WaitFor([&] { return Dsd()["status"].value("replicas", 0) == 2; }, std::chrono::seconds(20)));
}

TEST_F(OperatorK8sTest, TwoReplicasElectOneLeaderAndHandOver) {
  OperatorProcess a(ns_, "op-a", true);
  ASSERT_TRUE(a.child().WaitForLine("controller started", std::chrono::seconds(30)));
  OperatorProcess b(ns_, "op-b", true);
  std::this_thread::sleep_for(std::chrono::seconds(3));
  auto lease = client_->Get(res::kLeases.ObjectPath(ns_, "shoal-operator"));
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ((*lease)["spec"]["holderIdentity"], "op-a");
  EXPECT_NE(a.Metrics().find("shoal_operator_is_leader 1"), std::string::npos);
  EXPECT_NE(b.Metrics().find("shoal_operator_is_leader 0"), std::string::npos);
  EXPECT_FALSE(b.child().WaitForLine("controller started", std::chrono::milliseconds(100)));
  // The leader stops (SIGTERM releases the Lease): the standby takes over and reconciles.
  a.Stop();
  ASSERT_TRUE(b.child().WaitForLine("controller started", std::chrono::seconds(15)));
  EXPECT_EQ((*client_->Get(res::kLeases.ObjectPath(ns_, "shoal-operator")))["spec"]["holderIdentity"], "op-b");
  Create(Deployment());
  EXPECT_TRUE(WaitFor([&] { return Get(res::kStatefulSets, "ds-g0").ok(); }, std::chrono::seconds(30)));
}

// Kills the apiserver under a running operator: the operator must keep going, relist,
// and converge on what changed meanwhile. (RUN_SERIAL: nothing else may use the cluster.)
TEST_F(OperatorK8sTest, RecoversAfterTheApiServerRestarts) {
  OperatorProcess op(ns_, "op-a", true, {"--lease-duration=60", "--renew-deadline=50"});
  Create(Deployment().Replicas(1));
  ASSERT_TRUE(WaitFor([&] { return Available(); }, std::chrono::seconds(60)));
  int rc = 0;
  std::string out = testing::Shell(testing::SourceDir() + "/tests/k8s/control_plane.sh restart-apiserver 2>&1", &rc);
  ASSERT_EQ(rc, 0) << out;
  auto scaled = client_->Patch(kDeepSeekDeployments.ObjectPath(ns_, "ds") + "/scale", {{"spec", {{"replicas", 2}}}});
  ASSERT_TRUE(scaled.ok()) << scaled.status();
  EXPECT_TRUE(WaitFor([&] { return Dsd()["status"].value("readyReplicas", 0) == 2 && Available(); },
                      std::chrono::seconds(90)))
      << Dsd().dump(2);
  EXPECT_FALSE(op.child().Wait(std::chrono::milliseconds(10)).has_value());  // still running
}

}  // namespace
}  // namespace shoal::op
