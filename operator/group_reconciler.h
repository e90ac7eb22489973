#pragma once
// The controller: informers on DeepSeekDeployments and their children feed a work queue
// of deployment keys; workers reconcile one key at a time. A reconcile reads only the
// caches, computes the desired children (desired_children.h), the group decisions
// (group_lifecycle.h) and the scaling decision (autoscaler.h), then writes only what
// differs: server-side apply for children, deletes for stale pods and surplus groups, a
// merge patch of the status subresource when the status changed.
#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "operator/api_types.h"
#include "operator/autoscaler.h"
#include "operator/group_lifecycle.h"
#include "operator/kube/event_recorder.h"
#include "operator/kube/informer.h"
#include "operator/kube/kube_client.h"
#include "operator/kube/work_queue.h"
#include "operator/load_scraper.h"
#include "operator/operator_metrics.h"

namespace shoal::op {

struct ReconcilerOptions {
  std::string watch_namespace;          // empty = all namespaces
  int workers = 2;
  OperatorDefaults defaults;
  std::chrono::seconds autoscale_interval{5};
  std::chrono::seconds resync{300};      // periodic reconcile of every deployment
};

class GroupReconciler {
 public:
  GroupReconciler(kube::KubeClient* client, ReconcilerOptions options, OperatorMetrics* metrics);
  ~GroupReconciler();

  // Starts the informers, waits for their first lists, then the workers.
  absl::Status Start();
  void Stop();
  bool Synced() const;

  // One reconcile of "namespace/name" (public for tests); sets *requeue_after when the
  // key should come back (autoscaling, waiting on something without a watch event).
  absl::Status Reconcile(const std::string& key, std::chrono::milliseconds* requeue_after);

 private:
  struct ScalingState {
    std::deque<Recommendation> history;
    std::chrono::steady_clock::time_point last_scrape{};  // last round asked for
    uint64_t used_round = 0;  // the LoadScraper round the last decision used
    std::optional<double> last_qps;
    std::optional<ScalingDecision> last_decision;
  };
  struct AppliedRecord {
    std::string desired_hash;
    std::string observed_version;  // generation, or resourceVersion for kinds without one
  };

  void Worker();
  void EnqueueOwner(const kube::ObjectPtr& obj);
  // Applies `desired` unless the cache shows the object as we last applied it.
  absl::Status ApplyIfChanged(kube::Informer* cache, const kube::ResourceType& type, const nlohmann::json& desired);
  // Where this deployment's load is read: from the informer caches, no I/O.
  LoadTargets LoadTargetsOf(const DeploymentSpec& d, const nlohmann::json& dsd,
                            const std::vector<GroupDecision>& groups, int64_t now) const;
  absl::Status WriteStatus(const nlohmann::json& dsd, const nlohmann::json& status);

  kube::KubeClient* client_;
  ReconcilerOptions options_;
  OperatorMetrics* metrics_;
  kube::EventRecorder events_;
  kube::WorkQueue queue_;
  std::unique_ptr<kube::Informer> deployments_;
  std::unique_ptr<kube::Informer> stateful_sets_;
  std::unique_ptr<kube::Informer> pods_;
  std::unique_ptr<kube::Informer> services_;
  std::unique_ptr<kube::Informer> config_maps_;
  std::unique_ptr<kube::Informer> router_deployments_;
  std::vector<std::thread> workers_;
  std::thread resync_thread_;
  std::atomic<bool> stop_{false};

  std::mutex mu_;
  std::map<std::string, AppliedRecord> applied_;   // "kind/ns/name"
  std::map<std::string, std::shared_ptr<ScalingState>> scaling_;  // deployment key
  std::map<std::string, bool> pod_groups_unavailable_;  // deployment key -> PodGroup CRD missing warned
  // Last: destroyed first, so no finished round adds to a queue that is gone.
  std::unique_ptr<LoadScraper> scraper_;
};

}  // namespace shoal::op
