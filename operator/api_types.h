#pragma once
// The DeepSeekDeployment API as the operator sees it, and every name it writes into the
// cluster — label keys, injected env vars, condition types, event reasons — once.
//
// The model: a DeepSeekDeployment runs `replicas` groups; a group is one model replica of
// tensor × pipeline ranks spread over `pods_per_group` pods, run by one StatefulSet
// (`<name>-g<i>`) whose pod ordinal is the pod's rank within the group. Pod rank 0 is the
// group leader, which the router discovers through the `<name>-leaders` headless Service.
// A group lives and dies as a whole: when one of its pods fails, all are recreated.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "operator/kube/resource_type.h"

namespace shoal::op {

inline const kube::ResourceType kDeepSeekDeployments{"shoal.dev", "v1alpha1", "deepseekdeployments",
                                                     "DeepSeekDeployment"};
inline constexpr char kFieldManager[] = "shoal-operator";

// Labels on every child (and on pods through templates).
inline constexpr char kLabelName[] = "app.kubernetes.io/name";        // = "shoal"
inline constexpr char kLabelManagedBy[] = "app.kubernetes.io/managed-by";  // = "shoal-operator"
inline constexpr char kLabelDeployment[] = "shoal.dev/deployment";
inline constexpr char kLabelGroup[] = "shoal.dev/group";
inline constexpr char kLabelRole[] = "shoal.dev/role";                // leader | worker | router
inline constexpr char kLabelGroupRestarts[] = "shoal.dev/group-restarts";  // pods of an older incarnation carry a lower value
inline constexpr char kRoleLeader[] = "leader";
inline constexpr char kRoleWorker[] = "worker";
inline constexpr char kRoleRouter[] = "router";

// Annotations on a group's StatefulSet: the group's lifecycle record.
inline constexpr char kAnnotationRestarts[] = "shoal.dev/restarts";          // group restarts so far
inline constexpr char kAnnotationStartedPods[] = "shoal.dev/started-pods";   // pod UIDs when the group first was all Ready
inline constexpr char kAnnotationFailed[] = "shoal.dev/failed";              // "true" once the restart budget is spent
inline constexpr char kAnnotationReadySince[] = "shoal.dev/ready-since";     // unix seconds when the group became Ready
inline constexpr char kLabelSpecHash[] = "shoal.dev/spec-hash";    // pod label: hash of the template it was made from
inline constexpr char kAnnotationIncarnation[] = "shoal.dev/incarnation";  // recreations so far (restarts and rolls)
// Pod StatefulSet labels that we read.
inline constexpr char kLabelPodIndex[] = "apps.kubernetes.io/pod-index";
inline constexpr char kLabelRevisionHash[] = "controller-revision-hash";

// Env vars injected into worker pods.
inline constexpr char kEnvGroup[] = "SHOAL_GROUP";
inline constexpr char kEnvPodRank[] = "SHOAL_POD_RANK";
inline constexpr char kEnvPodsPerGroup[] = "SHOAL_PODS_PER_GROUP";
inline constexpr char kEnvLeaderAddr[] = "SHOAL_LEADER_ADDR";
inline constexpr char kEnvTensorParallel[] = "SHOAL_TENSOR_PARALLEL";
inline constexpr char kEnvPipelineParallel[] = "SHOAL_PIPELINE_PARALLEL";
inline constexpr char kEnvDeployment[] = "SHOAL_DEPLOYMENT";
inline constexpr char kEnvModelUri[] = "SHOAL_MODEL_URI";

// Ports.
inline constexpr int kWorkerGrpcPort = 50051;
inline constexpr int kWorkerMetricsPort = 9090;
inline constexpr int kRouterGrpcPort = 50051;
inline constexpr int kRouterHttpPort = 8080;
inline constexpr int kRouterMetricsPort = 9090;

// Conditions and reasons.
inline constexpr char kConditionAvailable[] = "Available";
inline constexpr char kConditionProgressing[] = "Progressing";
inline constexpr char kConditionDegraded[] = "Degraded";
inline constexpr char kConditionScalingActive[] = "ScalingActive";
inline constexpr char kConditionScalingLimited[] = "ScalingLimited";

inline constexpr char kReasonGroupRestarted[] = "GroupRestarted";
inline constexpr char kReasonGroupFailed[] = "GroupFailed";
inline constexpr char kReasonInvalidSpec[] = "InvalidSpec";
inline constexpr char kReasonScaled[] = "Scaled";
inline constexpr char kReasonRollingGroup[] = "RollingGroup";
inline constexpr char kReasonApplyFailed[] = "ApplyFailed";
inline constexpr char kReasonPodGroupUnavailable[] = "PodGroupUnavailable";

enum class RestartPolicy { kRecreateGroupOnPodRestart, kRecreateGroupAfterStart };
enum class GangScheduler { kNone, kVolcano, kSchedulerPlugins };

struct AutoscalingSpec {
  bool enabled = false;
  int min_replicas = 1;
  int max_replicas = 8;
  double target_qps_per_replica = 5;
  double target_queue_depth_per_replica = 0;  // 0 = trigger off
  double target_kv_cache_utilization = 0;     // 0 = trigger off
  int initial_cooldown_seconds = 300;
  int scale_up_stabilization_seconds = 0;
  int scale_down_stabilization_seconds = 300;
  std::string prometheus_url;  // optional: query this Prometheus for QPS instead of scraping routers
};

struct RolloutSpec {
  int max_unavailable_groups = 1;
  int max_surge_groups = 0;
  int partition = 0;  // groups with index < partition keep the old template
};

// The spec, typed and defaulted; the raw JSON pieces that pass through untouched
// (resources, env, tolerations, ...) stay JSON.
struct DeploymentSpec {
  std::string name;
  std::string ns;
  std::string uid;
  int64_t generation = 0;

  std::string model_uri;
  std::string served_name;
  std::string dtype = "auto";
  int max_model_len = 8192;

  int tensor = 1;
  int pipeline = 1;
  int gpus_per_pod = 0;
  int replicas = 1;
  AutoscalingSpec autoscaling;

  int max_num_seqs = 256;
  int max_num_batched_tokens = 8192;
  double kv_cache_memory_fraction = 0.9;
  bool enable_prefix_caching = true;

  std::string worker_image;
  std::string worker_image_pull_policy;      // empty = Kubernetes' default
  std::string worker_service_account_name;   // empty = the namespace's default
  nlohmann::json worker_resources = nlohmann::json::object();
  nlohmann::json worker_env = nlohmann::json::array();
  nlohmann::json worker_node_selector = nlohmann::json::object();
  nlohmann::json worker_tolerations = nlohmann::json::array();
  nlohmann::json worker_affinity = nlohmann::json::object();
  std::string scheduler_name;
  std::string priority_class_name;
  nlohmann::json worker_volumes = nlohmann::json::array();
  nlohmann::json worker_volume_mounts = nlohmann::json::array();

  int router_replicas = 1;
  std::string router_image;
  nlohmann::json router_resources = nlohmann::json::object();
  std::string router_service_type = "ClusterIP";
  std::string router_api_key_secret;  // Secret name; empty = no API keys
  std::string router_api_key_key = "keys";  // key in that Secret

  RolloutSpec rollout;
  RestartPolicy restart_policy = RestartPolicy::kRecreateGroupOnPodRestart;
  int max_group_restarts = 5;

  int PodsPerGroup() const {
    int ranks = tensor * pipeline;
    return gpus_per_pod > 0 ? (ranks + gpus_per_pod - 1) / gpus_per_pod : ranks;
  }
  GangScheduler Gang() const;
};

// Operator-wide defaults the CR may leave out.
struct OperatorDefaults {
  std::string worker_image = "ghcr.io/shoal-dev/shoal-worker:latest";
  std::string router_image = "ghcr.io/shoal-dev/shoal-router:latest";
};

// Reads a DeepSeekDeployment object; fields absent take the defaults above. Errors name
// the field ("spec.parallelism.tensor must be >= 1").
absl::StatusOr<DeploymentSpec> ParseDeployment(const nlohmann::json& object, const OperatorDefaults& defaults);

// Object names of the children.
std::string GroupStatefulSetName(const std::string& deployment, int group);
std::string WorkersServiceName(const std::string& deployment);   // headless, every rank
std::string LeadersServiceName(const std::string& deployment);   // headless, ready leaders (router discovery)
std::string RouterName(const std::string& deployment);           // router Deployment and Service
std::string ConfigMapName(const std::string& deployment);
std::string PodGroupName(const std::string& deployment, int group);

}  // namespace shoal::op
