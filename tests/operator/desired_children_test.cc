// Desired children as tables of expected JSON: each row builds a deployment, renders one
// child, and lists the fields that child must carry.
#include "operator/desired_children.h"

#include <functional>

#include <gtest/gtest.h>

#include "tests/operator/deployment_builder.h"
#include "tests/operator/json_subset.h"

namespace shoal::op {
namespace {

using nlohmann::json;
using testing::DeploymentBuilder;
using testing::JsonContains;

const json kOwner = json::array({{{"apiVersion", "shoal.dev/v1alpha1"},
                                  {"kind", "DeepSeekDeployment"},
                                  {"name", "ds"},
                                  {"uid", "uid-1"},
                                  {"controller", true},
                                  {"blockOwnerDeletion", true}}});

struct ChildRow {
  std::string name;
  DeploymentBuilder deployment;
  std::function<json(const DeploymentSpec&)> render;
  json expected;
};

std::vector<ChildRow> Rows() {
  return {
      {"GroupStatefulSetRunsPodsPerGroupInParallelOnDelete",
       DeploymentBuilder().Tensor(2).GpusPerPod(1),
       [](const DeploymentSpec& d) { return DesiredGroupStatefulSet(d, 0, {}); },
       {{"apiVersion", "apps/v1"},
        {"kind", "StatefulSet"},
        {"metadata",
         {{"name", "ds-g0"},
          {"namespace", "models"},
          {"labels", {{"app.kubernetes.io/name", "shoal"}, {"shoal.dev/deployment", "ds"}, {"shoal.dev/group", "0"}}},
          {"annotations", {{"shoal.dev/incarnation", "0"}, {"shoal.dev/restarts", "0"}, {"shoal.dev/started-pods", ""}}},
          {"ownerReferences", kOwner}}},
        {"spec",
         {{"replicas", 2},
          {"serviceName", "ds-workers"},
          {"podManagementPolicy", "Parallel"},
          {"updateStrategy", {{"type", "OnDelete"}}},
          {"selector", {{"matchLabels", {{"shoal.dev/deployment", "ds"}, {"shoal.dev/group", "0"}}}}},
          {"template",
           {{"metadata",
             {{"labels",
               {{"shoal.dev/deployment", "ds"}, {"shoal.dev/group", "0"}, {"shoal.dev/group-restarts", "0"},
                {"app.kubernetes.io/component", "worker-group"}}}}},
            {"spec",
             {{"containers",
               json::array({{{"name", "worker"},
                             {"image", "ghcr.io/shoal-dev/shoal-worker:latest"},
                             {"resources", {{"limits", {{"nvidia.com/gpu", 1}}}}},
                             {"envFrom", json::array({{{"configMapRef", {{"name", "ds-engine"}}}}})},
                             {"env",
                              json::array({{{"name", "SHOAL_DEPLOYMENT"}, {"value", "ds"}},
                                           {{"name", "SHOAL_GROUP"}, {"value", "0"}},
                                           {{"name", "SHOAL_POD_RANK"},
                                            {"valueFrom",
                                             {{"fieldRef",
                                               {{"fieldPath", "metadata.labels['apps.kubernetes.io/pod-index']"}}}}}},
                                           {{"name", "SHOAL_PODS_PER_GROUP"}, {"value", "2"}},
                                           {{"name", "SHOAL_LEADER_ADDR"},
                                            {"value", "ds-g0-0.ds-workers.models.svc:50051"}},
                                           {{"name", "SHOAL_TENSOR_PARALLEL"}, {"value", "2"}},
                                           {{"name", "SHOAL_PIPELINE_PARALLEL"}, {"value", "1"}},
                                           {{"name", "SHOAL_MODEL_URI"}, {"value", "file:///models/m.gguf"}}})}}})}}}}}}}}},
      {"LaterGroupNamesItselfAndItsLeader",
       DeploymentBuilder().Tensor(4).Pipeline(2).GpusPerPod(2),
       [](const DeploymentSpec& d) { return DesiredGroupStatefulSet(d, 3, {}); },
       {{"metadata", {{"name", "ds-g3"}}},
        {"spec", {{"replicas", 4}, {"selector", {{"matchLabels", {{"shoal.dev/group", "3"}}}}}}}}},
      {"GroupRecordLivesInAnnotationsAndIncarnationLabel",
       DeploymentBuilder(),
       [](const DeploymentSpec& d) {
         GroupRecord r;
         r.incarnation = 7;
         r.restarts = 2;
         r.started_pods = {"a", "b"};
         r.ready_since = 1700000000;
         return DesiredGroupStatefulSet(d, 1, r);
       },
       {{"metadata",
         {{"annotations",
           {{"shoal.dev/incarnation", "7"}, {"shoal.dev/restarts", "2"}, {"shoal.dev/started-pods", "a,b"},
            {"shoal.dev/failed", ""}, {"shoal.dev/ready-since", "1700000000"}}}}},
        {"spec", {{"replicas", 1}, {"template", {{"metadata", {{"labels", {{"shoal.dev/group-restarts", "7"}}}}}}}}}}},
      {"WorkersServiceIsHeadlessAndPublishesNotReady",
       DeploymentBuilder(),
       [](const DeploymentSpec& d) { return DesiredWorkersService(d); },
       {{"kind", "Service"},
        {"metadata", {{"name", "ds-workers"}, {"ownerReferences", kOwner}}},
        {"spec",
         {{"clusterIP", "None"},
          {"publishNotReadyAddresses", true},
          {"selector", {{"shoal.dev/deployment", "ds"}, {"app.kubernetes.io/component", "worker-group"}}}}}}},
      {"LeadersServiceSelectsRankZeroReadyOnly",
       DeploymentBuilder(),
       [](const DeploymentSpec& d) { return DesiredLeadersService(d); },
       {{"metadata", {{"name", "ds-leaders"}}},
        {"spec",
         {{"clusterIP", "None"},
          {"publishNotReadyAddresses", false},
          {"selector",
           {{"shoal.dev/deployment", "ds"}, {"app.kubernetes.io/component", "worker-group"},
            {"apps.kubernetes.io/pod-index", "0"}}},
          {"ports", json::array({{{"name", "grpc"}, {"port", 50051}}})}}}}},
      {"RouterDeploymentDiscoversLeadersByDns",
       DeploymentBuilder().Set("/spec/router/replicas", 2),
       [](const DeploymentSpec& d) { return DesiredRouterDeployment(d); },
       {{"kind", "Deployment"},
        {"metadata", {{"name", "ds"}, {"labels", {{"shoal.dev/role", "router"}}}, {"ownerReferences", kOwner}}},
        {"spec",
         {{"replicas", 2},
          {"template",
           {{"spec",
             {{"containers",
               json::array({{{"name", "router"},
                             {"args", json::array({"--upstream-dns=ds-leaders.models.svc:50051", "--host=0.0.0.0",
                                                   "--port=50051", "--http-port=8080",
                                                   "--metrics-port=9090"})}}})}}}}}}}}},
      {"RouterServiceExposesGrpcHttpMetrics",
       DeploymentBuilder().Set("/spec/router/serviceType", "LoadBalancer"),
       [](const DeploymentSpec& d) { return DesiredRouterService(d); },
       {{"metadata", {{"name", "ds"}}},
        {"spec",
         {{"type", "LoadBalancer"},
          {"selector", {{"shoal.dev/deployment", "ds"}, {"shoal.dev/role", "router"}}},
          {"ports", json::array({{{"name", "grpc"}, {"port", 50051}}, {{"name", "http"}, {"port", 8080}},
                                 {{"name", "metrics"}, {"port", 9090}}})}}}}},
      {"ConfigMapCarriesEngineSettings",
       DeploymentBuilder().Set("/spec/engine/maxNumSeqs", 64).Set("/spec/engine/enablePrefixCaching", false),
       [](const DeploymentSpec& d) { return DesiredConfigMap(d); },
       {{"metadata", {{"name", "ds-engine"}}},
        {"data",
         {{"SHOAL_MAX_NUM_SEQS", "64"}, {"SHOAL_ENABLE_PREFIX_CACHING", "false"},
          {"SHOAL_MODEL_PATH", "/models/m.gguf"}, {"SHOAL_SERVED_NAME", "m"}}}}},
      {"VolcanoPodGroupHasMinMemberPodsPerGroup",
       DeploymentBuilder().Tensor(4).Pipeline(2).GpusPerPod(2).SchedulerName("volcano"),
       [](const DeploymentSpec& d) { return DesiredPodGroup(d, 1); },
       {{"apiVersion", "scheduling.volcano.sh/v1beta1"},
        {"kind", "PodGroup"},
        {"metadata", {{"name", "ds-g1"}, {"ownerReferences", kOwner}}},
        {"spec", {{"minMember", 4}}}}},
      {"VolcanoPodsNameTheirPodGroup",
       DeploymentBuilder().Tensor(2).GpusPerPod(1).SchedulerName("volcano"),
       [](const DeploymentSpec& d) { return DesiredGroupStatefulSet(d, 1, {}); },
       {{"spec",
         {{"template",
           {{"metadata", {{"annotations", {{"scheduling.k8s.io/group-name", "ds-g1"}}}}},
            {"spec", {{"schedulerName", "volcano"}}}}}}}}},
      {"SchedulerPluginsPodGroupAndPodLabel",
       DeploymentBuilder().Tensor(2).SchedulerName("scheduler-plugins-scheduler"),
       [](const DeploymentSpec& d) {
         return json{{"pg", DesiredPodGroup(d, 0)}, {"sts", DesiredGroupStatefulSet(d, 0, {})}};
       },
       {{"pg", {{"apiVersion", "scheduling.x-k8s.io/v1alpha1"}, {"spec", {{"minMember", 2}}}}},
        {"sts",
         {{"spec", {{"template", {{"metadata", {{"labels", {{"scheduling.x-k8s.io/pod-group", "ds-g0"}}}}}}}}}}}}},
      {"PvcModelIsMountedReadOnly",
       DeploymentBuilder().ModelUri("pvc://weights/deepseek/r1"),
       [](const DeploymentSpec& d) { return DesiredGroupStatefulSet(d, 0, {}); },
       {{"spec",
         {{"template",
           {{"spec",
             {{"volumes", json::array({{{"name", "model"},
                                        {"persistentVolumeClaim", {{"claimName", "weights"}, {"readOnly", true}}}}})},
              {"containers",
               json::array({{{"volumeMounts", json::array({{{"mountPath", "/models/weights"}}})}}})}}}}}}}}},
  };
}

TEST(DesiredChildren, MatchTableOfExpectedJson) {
  for (const auto& row : Rows()) {
    SCOPED_TRACE(row.name);
    EXPECT_TRUE(JsonContains(row.render(row.deployment.Spec()), row.expected));
  }
}

// Pod-level settings the CR carries reach the pods: the GPU limit beside a user's own
// memory limit (not replaced by it), pull policy, service account, router resources.
TEST(DesiredChildren, PodSettingsFromTheSpecReachThePods) {
  const auto d = DeploymentBuilder()
                     .Tensor(8)
                     .GpusPerPod(8)
                     .Set("/spec/worker/resources", json{{"limits", {{"memory", "500Gi"}}}})
                     .Set("/spec/worker/imagePullPolicy", "Always")
                     .Set("/spec/worker/serviceAccountName", "model-reader")
                     .Set("/spec/router/resources", json{{"requests", {{"cpu", "2"}}}})
                     .Spec();
  const json pod = DesiredGroupStatefulSet(d, 0, {})["spec"]["template"]["spec"];
  EXPECT_EQ(pod["containers"][0]["resources"]["limits"], (json{{"memory", "500Gi"}, {"nvidia.com/gpu", 8}}));
  EXPECT_EQ(pod["containers"][0]["imagePullPolicy"], "Always");
  EXPECT_EQ(pod["serviceAccountName"], "model-reader");
  const json router = DesiredRouterDeployment(d)["spec"]["template"]["spec"]["containers"][0];
  EXPECT_EQ(router["resources"], (json{{"requests", {{"cpu", "2"}}}}));
  // A GPU limit the user set stays theirs.
  const auto own = DeploymentBuilder().Tensor(8).GpusPerPod(8).Set("/spec/worker/resources", json{{"limits", {{"nvidia.com/gpu", 4}}}}).Spec();
  EXPECT_EQ(DesiredGroupStatefulSet(own, 0, {})["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], 4);
}

TEST(DesiredChildren, NoPodGroupWithoutGangScheduler) {
  EXPECT_TRUE(DesiredPodGroup(DeploymentBuilder().Tensor(2).Spec(), 0).empty());
  EXPECT_TRUE(DesiredPodGroup(DeploymentBuilder().SchedulerName("default-scheduler").Spec(), 0).empty());
}

TEST(DesiredChildren, PodGroupMinMemberIsNeverOneForMultiPodGroups) {
  for (int tensor : {2, 4, 8}) {
    auto pg = DesiredPodGroup(DeploymentBuilder().Tensor(tensor).SchedulerName("volcano").Spec(), 0);
    EXPECT_EQ(pg["spec"]["minMember"], tensor);
  }
}

TEST(DesiredChildren, SpecHashFollowsTheTemplateNotTheReplicaCount) {
  const std::string base = GroupSpecHash(DeploymentBuilder().Spec());
  EXPECT_EQ(base, GroupSpecHash(DeploymentBuilder().Replicas(5).Spec()));
  EXPECT_EQ(base, GroupSpecHash(DeploymentBuilder().Set("/spec/autoscaling/maxReplicas", 3).Spec()));
  EXPECT_NE(base, GroupSpecHash(DeploymentBuilder().Image("other:1").Spec()));
  EXPECT_NE(base, GroupSpecHash(DeploymentBuilder().Set("/spec/engine/maxNumSeqs", 8).Spec()));
}

TEST(DesiredChildren, StatefulSetRoundTripsItsGroupRecord) {
  GroupRecord r;
  r.incarnation = 3;
  r.restarts = 1;
  r.started_pods = {"u1", "u2"};
  r.failed_spec_hash = "abc";
  r.ready_since = 42;
  EXPECT_EQ(GroupRecordOf(DesiredGroupStatefulSet(DeploymentBuilder().Spec(), 0, r)), r);
  EXPECT_EQ(GroupRecordOf(json::object()), GroupRecord{});
}

TEST(DesiredChildren, WorkerPodSelectorMatchesTemplateLabels) {
  auto d = DeploymentBuilder().Spec();
  EXPECT_EQ(WorkerPodSelector(d), "shoal.dev/deployment=ds,app.kubernetes.io/component=worker-group");
}

}  // namespace
}  // namespace shoal::op
