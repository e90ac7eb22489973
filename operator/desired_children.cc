#include "operator/desired_children.h"

#include <cstdlib>

#include <fmt/format.h>

#include "absl/strings/str_split.h"

namespace shoal::op {
namespace {

using nlohmann::json;

constexpr char kComponentLabel[] = "app.kubernetes.io/component";
constexpr char kComponentWorker[] = "worker-group";
constexpr char kComponentRouter[] = "router";
constexpr char kVolcanoGroupAnnotation[] = "scheduling.k8s.io/group-name";
constexpr char kSchedulerPluginsGroupLabel[] = "scheduling.x-k8s.io/pod-group";

json Metadata(const DeploymentSpec& d, const std::string& name, json labels) {
  return {{"name", name}, {"namespace", d.ns}, {"labels", std::move(labels)},
          {"ownerReferences", json::array({OwnerReference(d)})}};
}

json WithLabels(json base, const json& extra) {
  for (auto it = extra.begin(); it != extra.end(); ++it) base[it.key()] = it.value();
  return base;
}

// Where the worker finds its weights: file:///p → /p; pvc://claim/p → the claim mounted
// at /models/claim, so /models/claim/p; anything else passes through for the worker.
std::string ModelPath(const DeploymentSpec& d) {
  const std::string& uri = d.model_uri;
  if (uri.rfind("file://", 0) == 0) return uri.substr(7);
  if (uri.rfind("pvc://", 0) == 0) return "/models/" + uri.substr(6);
  return uri;
}

std::string PvcClaim(const DeploymentSpec& d) {
  if (d.model_uri.rfind("pvc://", 0) != 0) return "";
  std::string rest = d.model_uri.substr(6);
  return rest.substr(0, rest.find('/'));
}

json EnvVar(const std::string& name, const std::string& value) { return {{"name", name}, {"value", value}}; }

}  // namespace

GroupRecord GroupRecordOf(const json& sts) {
  GroupRecord r;
  r.incarnation = std::atoi(kube::AnnotationOf(sts, kAnnotationIncarnation).c_str());
  r.restarts = std::atoi(kube::AnnotationOf(sts, kAnnotationRestarts).c_str());
  std::string started = kube::AnnotationOf(sts, kAnnotationStartedPods);
  if (!started.empty()) {
    for (auto part : absl::StrSplit(started, ',')) r.started_pods.emplace_back(part);
  }
  r.failed_spec_hash = kube::AnnotationOf(sts, kAnnotationFailed);
  r.ready_since = std::strtoll(kube::AnnotationOf(sts, kAnnotationReadySince).c_str(), nullptr, 10);
  return r;
}

std::string JsonHash(const json& doc) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : doc.dump()) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return fmt::format("{:016x}", h);
}

json OwnerReference(const DeploymentSpec& d) {
  return {{"apiVersion", kDeepSeekDeployments.ApiVersion()},
          {"kind", kDeepSeekDeployments.kind},
          {"name", d.name},
          {"uid", d.uid},
          {"controller", true},
          {"blockOwnerDeletion", true}};
}

json CommonLabels(const DeploymentSpec& d) {
  return {{kLabelName, "shoal"}, {kLabelManagedBy, kFieldManager}, {kLabelDeployment, d.name}};
}

std::string WorkerPodSelector(const DeploymentSpec& d) {
  return fmt::format("{}={},{}={}", kLabelDeployment, d.name, kComponentLabel, kComponentWorker);
}

json DesiredConfigMap(const DeploymentSpec& d) {
  return {{"apiVersion", "v1"},
          {"kind", "ConfigMap"},
          {"metadata", Metadata(d, ConfigMapName(d.name), CommonLabels(d))},
          {"data",
           {{"SHOAL_SERVED_NAME", d.served_name},
            {"SHOAL_MODEL_PATH", ModelPath(d)},
            {"SHOAL_DTYPE", d.dtype},
            {"SHOAL_MAX_MODEL_LEN", std::to_string(d.max_model_len)},
            {"SHOAL_MAX_NUM_SEQS", std::to_string(d.max_num_seqs)},
            {"SHOAL_MAX_NUM_BATCHED_TOKENS", std::to_string(d.max_num_batched_tokens)},
            {"SHOAL_KV_CACHE_MEMORY_FRACTION", fmt::format("{}", d.kv_cache_memory_fraction)},
            {"SHOAL_ENABLE_PREFIX_CACHING", d.enable_prefix_caching ? "true" : "false"}}}};
}

json DesiredWorkersService(const DeploymentSpec& d) {
  return {{"apiVersion", "v1"},
          {"kind", "Service"},
          {"metadata", Metadata(d, WorkersServiceName(d.name), WithLabels(CommonLabels(d), {{kLabelRole, kRoleWorker}}))},
          {"spec",
           {{"clusterIP", "None"},
            {"publishNotReadyAddresses", true},  // ranks rendezvous before the group is Ready
            {"selector", {{kLabelDeployment, d.name}, {kComponentLabel, kComponentWorker}}},
            {"ports", json::array({{{"name", "grpc"}, {"port", kWorkerGrpcPort}, {"targetPort", kWorkerGrpcPort}}})}}}};
}

json DesiredLeadersService(const DeploymentSpec& d) {
  return {{"apiVersion", "v1"},
          {"kind", "Service"},
          {"metadata", Metadata(d, LeadersServiceName(d.name), WithLabels(CommonLabels(d), {{kLabelRole, kRoleLeader}}))},
          {"spec",
           {{"clusterIP", "None"},
            {"publishNotReadyAddresses", false},  // the router only sees groups that are Ready
            {"selector", {{kLabelDeployment, d.name}, {kComponentLabel, kComponentWorker}, {kLabelPodIndex, "0"}}},
            {"ports", json::array({{{"name", "grpc"}, {"port", kWorkerGrpcPort}, {"targetPort", kWorkerGrpcPort}}})}}}};
}

json WorkerPodTemplate(const DeploymentSpec& d, int group) {
  const std::string leader = fmt::format("{}-0.{}.{}.svc:{}", GroupStatefulSetName(d.name, group),
                                         WorkersServiceName(d.name), d.ns, kWorkerGrpcPort);
  json env = json::array({
      EnvVar(kEnvDeployment, d.name),
      EnvVar(kEnvGroup, std::to_string(group)),
      {{"name", kEnvPodRank},
       {"valueFrom", {{"fieldRef", {{"fieldPath", fmt::format("metadata.labels['{}']", kLabelPodIndex)}}}}}},
      EnvVar(kEnvPodsPerGroup, std::to_string(d.PodsPerGroup())),
      EnvVar(kEnvLeaderAddr, leader),
      EnvVar(kEnvTensorParallel, std::to_string(d.tensor)),
      EnvVar(kEnvPipelineParallel, std::to_string(d.pipeline)),
      EnvVar(kEnvModelUri, d.model_uri),
  });
  for (const auto& e : d.worker_env) env.push_back(e);
  json container = {
      {"name", "worker"},
      {"image", d.worker_image},
      {"args", json::array({"--model=$(SHOAL_MODEL_PATH)", "--served-name=$(SHOAL_SERVED_NAME)",
                            "--host=0.0.0.0", fmt::format("--port={}", kWorkerGrpcPort),
                            fmt::format("--metrics-port={}", kWorkerMetricsPort),
                            "--max-num-seqs=$(SHOAL_MAX_NUM_SEQS)",
                            "--max-num-batched-tokens=$(SHOAL_MAX_NUM_BATCHED_TOKENS)",
                            "--max-model-len=$(SHOAL_MAX_MODEL_LEN)"})},
      {"env", env},
      {"envFrom", json::array({{{"configMapRef", {{"name", ConfigMapName(d.name)}}}}})},
      {"ports", json::array({{{"name", "grpc"}, {"containerPort", kWorkerGrpcPort}},
                             {{"name", "metrics"}, {"containerPort", kWorkerMetricsPort}}})},
      {"readinessProbe", {{"grpc", {{"port", kWorkerGrpcPort}}}, {"periodSeconds", 5}}},
      {"resources", d.worker_resources}};
  if (!d.enable_prefix_caching) container["args"].push_back("--no-prefix-caching");
  if (!d.worker_image_pull_policy.empty()) container["imagePullPolicy"] = d.worker_image_pull_policy;
  // The group's GPUs, unless the user set this limit themselves (other limits, such as
  // memory, do not replace it).
  if (d.gpus_per_pod > 0 && !(container["resources"].contains("limits") &&
                              container["resources"]["limits"].contains("nvidia.com/gpu"))) {
    container["resources"]["limits"]["nvidia.com/gpu"] = d.gpus_per_pod;
  }
  json volumes = d.worker_volumes;
  json mounts = d.worker_volume_mounts;
  if (std::string claim = PvcClaim(d); !claim.empty()) {
    volumes.push_back({{"name", "model"}, {"persistentVolumeClaim", {{"claimName", claim}, {"readOnly", true}}}});
    mounts.push_back({{"name", "model"}, {"mountPath", "/models/" + claim}, {"readOnly", true}});
  }
  if (!mounts.empty()) container["volumeMounts"] = mounts;
  json labels = WithLabels(CommonLabels(d), {{kLabelGroup, std::to_string(group)}, {kComponentLabel, kComponentWorker}});
  json metadata = {{"labels", labels},
                   {"annotations", {{"shoal.dev/engine-hash", JsonHash(DesiredConfigMap(d)["data"])}}}};
  json pod_spec = {{"containers", json::array({container})}};
  if (!d.scheduler_name.empty()) pod_spec["schedulerName"] = d.scheduler_name;
  if (!d.priority_class_name.empty()) pod_spec["priorityClassName"] = d.priority_class_name;
  // The pods' identity for pulling weights (hf://, object stores) with workload identity.
  if (!d.worker_service_account_name.empty()) pod_spec["serviceAccountName"] = d.worker_service_account_name;
  if (!d.worker_node_selector.empty()) pod_spec["nodeSelector"] = d.worker_node_selector;
  if (!d.worker_tolerations.empty()) pod_spec["tolerations"] = d.worker_tolerations;
  if (!d.worker_affinity.empty()) pod_spec["affinity"] = d.worker_affinity;
  if (!volumes.empty()) pod_spec["volumes"] = volumes;
  switch (d.Gang()) {
    case GangScheduler::kVolcano:
      metadata["annotations"][kVolcanoGroupAnnotation] = PodGroupName(d.name, group);
      break;
    case GangScheduler::kSchedulerPlugins:
      metadata["labels"][kSchedulerPluginsGroupLabel] = PodGroupName(d.name, group);
      break;
    case GangScheduler::kNone:
      break;
  }
  return {{"metadata", metadata}, {"spec", pod_spec}};
}

std::string GroupSpecHash(const DeploymentSpec& d) { return JsonHash(WorkerPodTemplate(d, 0)); }

json DesiredGroupStatefulSet(const DeploymentSpec& d, int group, const GroupRecord& record) {
  json labels = WithLabels(CommonLabels(d), {{kLabelGroup, std::to_string(group)}});
  json metadata = Metadata(d, GroupStatefulSetName(d.name, group), labels);
  std::string started;
  for (const auto& uid : record.started_pods) started += (started.empty() ? "" : ",") + uid;
  metadata["annotations"] = {{kAnnotationIncarnation, std::to_string(record.incarnation)},
                             {kAnnotationRestarts, std::to_string(record.restarts)},
                             {kAnnotationStartedPods, started},
                             {kAnnotationFailed, record.failed_spec_hash},
                             {kAnnotationReadySince, std::to_string(record.ready_since)}};
  json tmpl = WorkerPodTemplate(d, group);
  tmpl["metadata"]["labels"][kLabelGroupRestarts] = std::to_string(record.incarnation);
  tmpl["metadata"]["labels"][kLabelSpecHash] = GroupSpecHash(d);
  return {{"apiVersion", "apps/v1"},
          {"kind", "StatefulSet"},
          {"metadata", metadata},
          {"spec",
           {{"replicas", d.PodsPerGroup()},
            {"serviceName", WorkersServiceName(d.name)},
            {"podManagementPolicy", "Parallel"},
            // The operator decides when a group's pods go (restarts, rolls): a group is
            // replaced as a whole, never pod by pod.
            {"updateStrategy", {{"type", "OnDelete"}}},
            {"selector", {{"matchLabels", {{kLabelDeployment, d.name}, {kLabelGroup, std::to_string(group)}}}}},
            {"template", tmpl}}}};
}

json DesiredPodGroup(const DeploymentSpec& d, int group) {
  json labels = WithLabels(CommonLabels(d), {{kLabelGroup, std::to_string(group)}});
  switch (d.Gang()) {
    case GangScheduler::kVolcano:
      return {{"apiVersion", kube::resources::kVolcanoPodGroups.ApiVersion()},
              {"kind", "PodGroup"},
              {"metadata", Metadata(d, PodGroupName(d.name, group), labels)},
              {"spec", {{"minMember", d.PodsPerGroup()}}}};
    case GangScheduler::kSchedulerPlugins:
      return {{"apiVersion", kube::resources::kSchedulerPluginsPodGroups.ApiVersion()},
              {"kind", "PodGroup"},
              {"metadata", Metadata(d, PodGroupName(d.name, group), labels)},
              {"spec", {{"minMember", d.PodsPerGroup()}, {"scheduleTimeoutSeconds", 600}}}};
    case GangScheduler::kNone:
      break;
  }
  return json::object();
}

json DesiredRouterDeployment(const DeploymentSpec& d) {
  json labels = WithLabels(CommonLabels(d), {{kLabelRole, kRoleRouter}, {kComponentLabel, kComponentRouter}});
  json args = json::array({fmt::format("--upstream-dns={}.{}.svc:{}", LeadersServiceName(d.name), d.ns, kWorkerGrpcPort),
                           "--host=0.0.0.0", fmt::format("--port={}", kRouterGrpcPort),
                           fmt::format("--http-port={}", kRouterHttpPort),
                           fmt::format("--metrics-port={}", kRouterMetricsPort)});
  json container = {
      {"name", "router"},
      {"image", d.router_image},
      {"args", args},
      {"ports", json::array({{{"name", "grpc"}, {"containerPort", kRouterGrpcPort}},
                             {{"name", "http"}, {"containerPort", kRouterHttpPort}},
                             {{"name", "metrics"}, {"containerPort", kRouterMetricsPort}}})},
      {"readinessProbe", {{"httpGet", {{"path", "/readyz"}, {"port", kRouterHttpPort}}}, {"periodSeconds", 5}}}};
  if (!d.router_resources.empty()) container["resources"] = d.router_resources;
  json pod_spec = {{"containers", json::array()}};
  if (!d.router_api_key_secret.empty()) {
    container["args"].push_back("--api-key-file=/etc/shoal/api-keys/" + d.router_api_key_key);
    container["volumeMounts"] = json::array({{{"name", "api-keys"}, {"mountPath", "/etc/shoal/api-keys"}, {"readOnly", true}}});
    pod_spec["volumes"] = json::array({{{"name", "api-keys"}, {"secret", {{"secretName", d.router_api_key_secret}}}}});
  }
  pod_spec["containers"].push_back(container);
  json selector = {{kLabelDeployment, d.name}, {kLabelRole, kRoleRouter}};
  return {{"apiVersion", "apps/v1"},
          {"kind", "Deployment"},
          {"metadata", Metadata(d, RouterName(d.name), labels)},
          {"spec",
           {{"replicas", d.router_replicas},
            {"selector", {{"matchLabels", selector}}},
            {"template", {{"metadata", {{"labels", labels}}}, {"spec", pod_spec}}}}}};
}

json DesiredRouterService(const DeploymentSpec& d) {
  json labels = WithLabels(CommonLabels(d), {{kLabelRole, kRoleRouter}});
  return {{"apiVersion", "v1"},
          {"kind", "Service"},
          {"metadata", Metadata(d, RouterName(d.name), labels)},
          {"spec",
           {{"type", d.router_service_type},
            {"selector", {{kLabelDeployment, d.name}, {kLabelRole, kRoleRouter}}},
            {"ports", json::array({{{"name", "grpc"}, {"port", kRouterGrpcPort}, {"targetPort", kRouterGrpcPort}},
                                   {{"name", "http"}, {"port", kRouterHttpPort}, {"targetPort", kRouterHttpPort}},
                                   {{"name", "metrics"}, {"port", kRouterMetricsPort}, {"targetPort", kRouterMetricsPort}}})}}}};
}

}  // namespace shoal::op
