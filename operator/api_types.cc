#include "operator/api_types.h"

#include <fmt/format.h>

namespace shoal::op {
namespace {

using nlohmann::json;

const json& Field(const json& obj, const char* key) {
  static const json kNull;
  if (!obj.is_object()) return kNull;
  auto it = obj.find(key);
  return it == obj.end() ? kNull : *it;
}

// Reads an integer field; absent keeps `*out`. Errors name the full field path.
absl::Status ReadInt(const json& obj, const char* key, const std::string& path, int* out) {
  const json& v = Field(obj, key);
  if (v.is_null()) return absl::OkStatus();
  if (!v.is_number_integer()) return absl::InvalidArgumentError(fmt::format("{}.{} must be an integer", path, key));
  *out = v.get<int>();
  return absl::OkStatus();
}

absl::Status ReadDouble(const json& obj, const char* key, const std::string& path, double* out) {
  const json& v = Field(obj, key);
  if (v.is_null()) return absl::OkStatus();
  if (v.is_number()) {
    *out = v.get<double>();
    return absl::OkStatus();
  }
  if (v.is_string()) {  // quantity-like "0.8"
    try {
      *out = std::stod(v.get<std::string>());
      return absl::OkStatus();
    } catch (...) {
    }
  }
  return absl::InvalidArgumentError(fmt::format("{}.{} must be a number", path, key));
}

absl::Status ReadBool(const json& obj, const char* key, const std::string& path, bool* out) {
  const json& v = Field(obj, key);
  if (v.is_null()) return absl::OkStatus();
  if (!v.is_boolean()) return absl::InvalidArgumentError(fmt::format("{}.{} must be a boolean", path, key));
  *out = v.get<bool>();
  return absl::OkStatus();
}

absl::Status ReadString(const json& obj, const char* key, const std::string& path, std::string* out) {
  const json& v = Field(obj, key);
  if (v.is_null()) return absl::OkStatus();
  if (!v.is_string()) return absl::InvalidArgumentError(fmt::format("{}.{} must be a string", path, key));
  *out = v.get<std::string>();
  return absl::OkStatus();
}

void ReadJson(const json& obj, const char* key, json* out) {
  const json& v = Field(obj, key);
  if (!v.is_null()) *out = v;
}

#define SHOAL_READ(call)                \
  do {                                  \
    absl::Status s_ = (call);           \
    if (!s_.ok()) return s_;            \
  } while (0)

absl::StatusOr<DeploymentSpec> Parse(const json& object, const OperatorDefaults& defaults) {
  DeploymentSpec d;
  const json& meta = Field(object, "metadata");
  d.name = meta.value("name", "");
  d.ns = meta.value("namespace", "");
  d.uid = meta.value("uid", "");
  d.generation = meta.value("generation", int64_t{0});
  const json& spec = Field(object, "spec");

  const json& model = Field(spec, "model");
  SHOAL_READ(ReadString(model, "uri", "spec.model", &d.model_uri));
  SHOAL_READ(ReadString(model, "servedName", "spec.model", &d.served_name));
  SHOAL_READ(ReadString(model, "dtype", "spec.model", &d.dtype));
  SHOAL_READ(ReadInt(model, "maxModelLen", "spec.model", &d.max_model_len));
  if (d.served_name.empty()) d.served_name = d.name;

  const json& par = Field(spec, "parallelism");
  SHOAL_READ(ReadInt(par, "tensor", "spec.parallelism", &d.tensor));
  SHOAL_READ(ReadInt(par, "pipeline", "spec.parallelism", &d.pipeline));
  SHOAL_READ(ReadInt(par, "gpusPerPod", "spec.parallelism", &d.gpus_per_pod));
  SHOAL_READ(ReadInt(spec, "replicas", "spec", &d.replicas));

  const json& as = Field(spec, "autoscaling");
  AutoscalingSpec& a = d.autoscaling;
  SHOAL_READ(ReadBool(as, "enabled", "spec.autoscaling", &a.enabled));
  SHOAL_READ(ReadInt(as, "minReplicas", "spec.autoscaling", &a.min_replicas));
  SHOAL_READ(ReadInt(as, "maxReplicas", "spec.autoscaling", &a.max_replicas));
  SHOAL_READ(ReadDouble(as, "targetQPSPerReplica", "spec.autoscaling", &a.target_qps_per_replica));
  SHOAL_READ(ReadDouble(as, "targetQueueDepthPerReplica", "spec.autoscaling", &a.target_queue_depth_per_replica));
  SHOAL_READ(ReadDouble(as, "targetKVCacheUtilization", "spec.autoscaling", &a.target_kv_cache_utilization));
  SHOAL_READ(ReadInt(as, "initialCooldownSeconds", "spec.autoscaling", &a.initial_cooldown_seconds));
  SHOAL_READ(ReadInt(as, "scaleUpStabilizationSeconds", "spec.autoscaling", &a.scale_up_stabilization_seconds));
  SHOAL_READ(ReadInt(as, "scaleDownStabilizationSeconds", "spec.autoscaling", &a.scale_down_stabilization_seconds));
  SHOAL_READ(ReadString(as, "prometheusURL", "spec.autoscaling", &a.prometheus_url));

  const json& engine = Field(spec, "engine");
  SHOAL_READ(ReadInt(engine, "maxNumSeqs", "spec.engine", &d.max_num_seqs));
  SHOAL_READ(ReadInt(engine, "maxNumBatchedTokens", "spec.engine", &d.max_num_batched_tokens));
  SHOAL_READ(ReadDouble(engine, "kvCacheMemoryFraction", "spec.engine", &d.kv_cache_memory_fraction));
  SHOAL_READ(ReadBool(engine, "enablePrefixCaching", "spec.engine", &d.enable_prefix_caching));

  const json& worker = Field(spec, "worker");
  SHOAL_READ(ReadString(worker, "image", "spec.worker", &d.worker_image));
  if (d.worker_image.empty()) d.worker_image = defaults.worker_image;
  SHOAL_READ(ReadString(worker, "imagePullPolicy", "spec.worker", &d.worker_image_pull_policy));
  SHOAL_READ(ReadString(worker, "serviceAccountName", "spec.worker", &d.worker_service_account_name));
  ReadJson(worker, "resources", &d.worker_resources);
  ReadJson(worker, "env", &d.worker_env);
  ReadJson(worker, "nodeSelector", &d.worker_node_selector);
  ReadJson(worker, "tolerations", &d.worker_tolerations);
  ReadJson(worker, "affinity", &d.worker_affinity);
  SHOAL_READ(ReadString(worker, "schedulerName", "spec.worker", &d.scheduler_name));
  SHOAL_READ(ReadString(worker, "priorityClassName", "spec.worker", &d.priority_class_name));
  ReadJson(worker, "volumes", &d.worker_volumes);
  ReadJson(worker, "volumeMounts", &d.worker_volume_mounts);

  const json& router = Field(spec, "router");
  SHOAL_READ(ReadInt(router, "replicas", "spec.router", &d.router_replicas));
  SHOAL_READ(ReadString(router, "image", "spec.router", &d.router_image));
  if (d.router_image.empty()) d.router_image = defaults.router_image;
  SHOAL_READ(ReadString(router, "serviceType", "spec.router", &d.router_service_type));
  ReadJson(router, "resources", &d.router_resources);
  const json& key_ref = Field(router, "apiKeySecretRef");
  if (key_ref.is_object()) {
    d.router_api_key_secret = key_ref.value("name", "");
    d.router_api_key_key = key_ref.value("key", "keys");
  }

  const json& rollout = Field(spec, "rollout");
  SHOAL_READ(ReadInt(rollout, "maxUnavailableGroups", "spec.rollout", &d.rollout.max_unavailable_groups));
  SHOAL_READ(ReadInt(rollout, "maxSurgeGroups", "spec.rollout", &d.rollout.max_surge_groups));
  SHOAL_READ(ReadInt(rollout, "partition", "spec.rollout", &d.rollout.partition));

  std::string policy = "RecreateGroupOnPodRestart";
  SHOAL_READ(ReadString(spec, "restartPolicy", "spec", &policy));
  if (policy == "RecreateGroupOnPodRestart") {
    d.restart_policy = RestartPolicy::kRecreateGroupOnPodRestart;
  } else if (policy == "RecreateGroupAfterStart") {
    d.restart_policy = RestartPolicy::kRecreateGroupAfterStart;
  } else {
    return absl::InvalidArgumentError(fmt::format(
        "spec.restartPolicy \"{}\" is not RecreateGroupOnPodRestart or RecreateGroupAfterStart", policy));
  }
  SHOAL_READ(ReadInt(spec, "maxGroupRestarts", "spec", &d.max_group_restarts));

  // What the schema may not have caught (old CRD, CEL off): checked here too.
  if (d.tensor < 1) return absl::InvalidArgumentError("spec.parallelism.tensor must be >= 1");
  if (d.pipeline < 1) return absl::InvalidArgumentError("spec.parallelism.pipeline must be >= 1");
  if (d.gpus_per_pod < 0) return absl::InvalidArgumentError("spec.parallelism.gpusPerPod must be >= 0");
  if (d.gpus_per_pod > 0 && (d.tensor * d.pipeline) % d.gpus_per_pod != 0) {
    return absl::InvalidArgumentError(fmt::format(
        "spec.parallelism.gpusPerPod {} must divide tensor*pipeline = {}", d.gpus_per_pod, d.tensor * d.pipeline));
  }
  if (d.replicas < 0) return absl::InvalidArgumentError("spec.replicas must be >= 0");
  if (a.enabled) {
    if (a.min_replicas < 0 || a.max_replicas < a.min_replicas) {
      return absl::InvalidArgumentError(fmt::format(
          "spec.autoscaling: need 0 <= minReplicas ({}) <= maxReplicas ({})", a.min_replicas, a.max_replicas));
    }
    if (a.target_qps_per_replica <= 0 && a.target_queue_depth_per_replica <= 0 &&
        a.target_kv_cache_utilization <= 0) {
      return absl::InvalidArgumentError("spec.autoscaling: no trigger set (targetQPSPerReplica, "
                                        "targetQueueDepthPerReplica or targetKVCacheUtilization must be > 0)");
    }
  }
  if (d.rollout.max_unavailable_groups < 0 || d.rollout.max_surge_groups < 0 || d.rollout.partition < 0) {
    return absl::InvalidArgumentError("spec.rollout: maxUnavailableGroups, maxSurgeGroups and partition must be >= 0");
  }
  if (d.max_group_restarts < 0) return absl::InvalidArgumentError("spec.maxGroupRestarts must be >= 0");
  return d;
}

}  // namespace

GangScheduler DeploymentSpec::Gang() const {
  if (scheduler_name == "volcano") return GangScheduler::kVolcano;
  if (scheduler_name.find("scheduler-plugins") != std::string::npos) return GangScheduler::kSchedulerPlugins;
  return GangScheduler::kNone;
}

absl::StatusOr<DeploymentSpec> ParseDeployment(const nlohmann::json& object, const OperatorDefaults& defaults) {
  try {
    return Parse(object, defaults);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(fmt::format("DeepSeekDeployment {}: {}", kube::KeyOf(object), e.what()));
  }
}

std::string GroupStatefulSetName(const std::string& deployment, int group) {
  return fmt::format("{}-g{}", deployment, group);
}
std::string WorkersServiceName(const std::string& deployment) { return deployment + "-workers"; }
std::string LeadersServiceName(const std::string& deployment) { return deployment + "-leaders"; }
std::string RouterName(const std::string& deployment) { return deployment; }
std::string ConfigMapName(const std::string& deployment) { return deployment + "-engine"; }
std::string PodGroupName(const std::string& deployment, int group) { return GroupStatefulSetName(deployment, group); }

}  // namespace shoal::op
