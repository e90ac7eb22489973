#pragma once
// Builds DeepSeekDeployment objects for tests: DeploymentBuilder("x").Tensor(2).Build().
#include <string>

#include <nlohmann/json.hpp>

#include "operator/api_types.h"

namespace shoal::op::testing {

class DeploymentBuilder {
 public:
  explicit DeploymentBuilder(std::string name = "ds", std::string ns = "models") {
    obj_ = {{"apiVersion", "shoal.dev/v1alpha1"},
            {"kind", "DeepSeekDeployment"},
            {"metadata", {{"name", name}, {"namespace", ns}, {"uid", "uid-1"}, {"generation", 1}}},
            {"spec", {{"model", {{"uri", "file:///models/m.gguf"}, {"servedName", "m"}}}}}};
  }
  DeploymentBuilder& Tensor(int n) { return Set("/spec/parallelism/tensor", n); }
  DeploymentBuilder& Pipeline(int n) { return Set("/spec/parallelism/pipeline", n); }
  DeploymentBuilder& GpusPerPod(int n) { return Set("/spec/parallelism/gpusPerPod", n); }
  DeploymentBuilder& Replicas(int n) { return Set("/spec/replicas", n); }
  DeploymentBuilder& Image(const std::string& image) { return Set("/spec/worker/image", image); }
  DeploymentBuilder& SchedulerName(const std::string& s) { return Set("/spec/worker/schedulerName", s); }
  DeploymentBuilder& RestartPolicy(const std::string& p) { return Set("/spec/restartPolicy", p); }
  DeploymentBuilder& MaxGroupRestarts(int n) { return Set("/spec/maxGroupRestarts", n); }
  DeploymentBuilder& MaxUnavailable(int n) { return Set("/spec/rollout/maxUnavailableGroups", n); }
  DeploymentBuilder& MaxSurge(int n) { return Set("/spec/rollout/maxSurgeGroups", n); }
  DeploymentBuilder& Partition(int n) { return Set("/spec/rollout/partition", n); }
  DeploymentBuilder& ModelUri(const std::string& uri) { return Set("/spec/model/uri", uri); }
  template <typename T>
  DeploymentBuilder& Set(const std::string& pointer, const T& value) {
    obj_[nlohmann::json::json_pointer(pointer)] = value;
    return *this;
  }
  nlohmann::json Build() const { return obj_; }
  DeploymentSpec Spec() const { return ParseDeployment(obj_, OperatorDefaults{}).value(); }

 private:
  nlohmann::json obj_;
};

}  // namespace shoal::op::testing
