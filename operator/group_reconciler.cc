#include "operator/group_reconciler.h"

#include <algorithm>
#include <cstdlib>
#include <ctime>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_split.h"
#include "operator/deployment_status.h"
#include "operator/desired_children.h"
#include "operator/kube/leader_election.h"

namespace shoal::op {

using nlohmann::json;
namespace res = kube::resources;

namespace {

constexpr char kManagedSelector[] = "app.kubernetes.io/managed-by=shoal-operator";
constexpr char kPodSelector[] = "app.kubernetes.io/name=shoal";
// Routers outside the cluster (or behind a proxy): comma-separated /metrics URLs that
// replace the router pods' own endpoints.
constexpr char kAnnotationRouterMetrics[] = "shoal.dev/router-metrics-endpoints";

std::string VersionOf(const json& obj) {
  const auto& m = obj.value("metadata", json::object());
  if (m.contains("generation")) return "g" + std::to_string(m["generation"].get<int64_t>());
  return "r" + m.value("resourceVersion", "");
}

int GroupIndexOf(const json& obj) {
  std::string g = kube::LabelOf(obj, kLabelGroup);
  return g.empty() ? -1 : std::atoi(g.c_str());
}

std::string PodIp(const json& pod) {
  return pod.value("status", json::object()).value("podIP", "");
}

bool PodReady(const json& pod) {
  for (const auto& c : pod.value("status", json::object()).value("conditions", json::array())) {
    if (c.value("type", "") == "Ready") return c.value("status", "") == "True";
  }
  return false;
}

}  // namespace

GroupReconciler::GroupReconciler(kube::KubeClient* client, ReconcilerOptions options, OperatorMetrics* metrics)
    : client_(client),
      options_(std::move(options)),
      metrics_(metrics),
      events_(client, kFieldManager),
      // A finished round brings its deployment back at once rather than at the next
      // requeue, so the decision uses fresh numbers.
      scraper_(std::make_unique<LoadScraper>([this](const std::string& key) { queue_.Add(key); })) {}

GroupReconciler::~GroupReconciler() { Stop(); }

absl::Status GroupReconciler::Start() {
  const std::string& ns = options_.watch_namespace;
  deployments_ = std::make_unique<kube::Informer>(client_, kDeepSeekDeployments, ns);
  stateful_sets_ = std::make_unique<kube::Informer>(client_, res::kStatefulSets, ns, kManagedSelector);
  pods_ = std::make_unique<kube::Informer>(client_, res::kPods, ns, kPodSelector);
  services_ = std::make_unique<kube::Informer>(client_, res::kServices, ns, kManagedSelector);
  config_maps_ = std::make_unique<kube::Informer>(client_, res::kConfigMaps, ns, kManagedSelector);
  router_deployments_ = std::make_unique<kube::Informer>(client_, res::kDeployments, ns, kManagedSelector);

  // Status-only changes of a DeepSeekDeployment (mostly our own writes) need no reconcile.
  auto generations = std::make_shared<std::map<std::string, int64_t>>();
  deployments_->AddHandler([this, generations](kube::ChangeType change, const kube::ObjectPtr& obj) {
    const std::string key = kube::KeyOf(*obj);
    const int64_t gen = (*obj)["metadata"].value("generation", int64_t{0});
    if (change == kube::ChangeType::kModified) {
      auto it = generations->find(key);
      if (it != generations->end() && it->second == gen) return;
    }
    if (change == kube::ChangeType::kDeleted) {
      generations->erase(key);
    } else {
      (*generations)[key] = gen;
    }
    queue_.Add(key);
  });
  for (kube::Informer* child : {stateful_sets_.get(), pods_.get(), services_.get(), config_maps_.get(),
                                router_deployments_.get()}) {
    child->AddHandler([this](kube::ChangeType, const kube::ObjectPtr& obj) { EnqueueOwner(obj); });
  }
  for (kube::Informer* inf : {deployments_.get(), stateful_sets_.get(), pods_.get(), services_.get(),
                              config_maps_.get(), router_deployments_.get()}) {
    inf->Start();
  }
  for (kube::Informer* inf : {deployments_.get(), stateful_sets_.get(), pods_.get(), services_.get(),
                              config_maps_.get(), router_deployments_.get()}) {
    if (!inf->WaitForSync(60000)) {
      return absl::UnavailableError(fmt::format("informer for {} did not sync within 60s", inf->type().plural));
    }
  }
  for (int i = 0; i < options_.workers; ++i) workers_.emplace_back([this] { Worker(); });
  resync_thread_ = std::thread([this] {
    auto next = std::chrono::steady_clock::now() + options_.resync;
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      if (metrics_) {
        metrics_->SetApiRequests(static_cast<double>(client_->request_count()));
        metrics_->SetQueueDepth(static_cast<double>(queue_.Len()));
      }
      if (std::chrono::steady_clock::now() < next) continue;
      next = std::chrono::steady_clock::now() + options_.resync;
      for (const auto& obj : deployments_->List()) queue_.Add(kube::KeyOf(*obj));
    }
  });
  return absl::OkStatus();
}

void GroupReconciler::Stop() {
  if (stop_.exchange(true)) return;
  queue_.ShutDown();
  for (auto& w : workers_) w.join();
  workers_.clear();
  if (resync_thread_.joinable()) resync_thread_.join();
  const std::vector<kube::Informer*> informers = {deployments_.get(), stateful_sets_.get(), pods_.get(),
                                                  services_.get(), config_maps_.get(), router_deployments_.get()};
  for (auto* inf : informers) {
    if (inf) inf->SignalStop();
  }
  for (auto* inf : informers) {
    if (inf) inf->Stop();
  }
}

bool GroupReconciler::Synced() const {
  return deployments_ && deployments_->HasSynced() && stateful_sets_->HasSynced() && pods_->HasSynced();
}

void GroupReconciler::EnqueueOwner(const kube::ObjectPtr& obj) {
  std::string owner = kube::LabelOf(*obj, kLabelDeployment);
  if (!owner.empty()) queue_.Add(kube::NamespaceOf(*obj) + "/" + owner);
}

void GroupReconciler::Worker() {
  while (auto key = queue_.Get()) {
    const auto start = std::chrono::steady_clock::now();
    std::chrono::milliseconds requeue_after{0};
    absl::Status status = Reconcile(*key, &requeue_after);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (metrics_) metrics_->ObserveReconcile(status.ok(), seconds);
    if (!status.ok()) {
      spdlog::warn("reconcile deployment={} failed (retry {}): {}", *key, queue_.NumRequeues(*key) + 1,
                   std::string(status.message()));
      queue_.AddRateLimited(*key);
    } else {
      queue_.Forget(*key);
      if (requeue_after.count() > 0) queue_.AddAfter(*key, requeue_after);
    }
    queue_.Done(*key);
  }
}

absl::Status GroupReconciler::ApplyIfChanged(kube::Informer* cache, const kube::ResourceType& type,
                                             const json& desired) {
  const std::string ns = kube::NamespaceOf(desired);
  const std::string name = kube::NameOf(desired);
  const std::string key = fmt::format("{}/{}/{}", type.kind, ns, name);
  const std::string hash = JsonHash(desired);
  kube::ObjectPtr observed = cache ? cache->Get(ns, name) : nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = applied_.find(key);
    if (it != applied_.end() && it->second.desired_hash == hash &&
        (cache == nullptr || (observed && it->second.observed_version == VersionOf(*observed)))) {
      return absl::OkStatus();
    }
  }
  auto result = client_->Apply(type.ObjectPath(ns, name), desired, kFieldManager);
  if (!result.ok()) return result.status();
  if (cache) cache->Upsert(*result);
  std::lock_guard<std::mutex> lock(mu_);
  applied_[key] = {hash, VersionOf(*result)};
  return absl::OkStatus();
}

absl::Status GroupReconciler::WriteStatus(const json& dsd, const json& status) {
  const std::string path =
      kDeepSeekDeployments.ObjectPath(kube::NamespaceOf(dsd), kube::NameOf(dsd)) + "/status";
  auto result = client_->Patch(path, {{"status", status}});
  if (!result.ok()) return result.status();
  deployments_->Upsert(*result);
  return absl::OkStatus();
}

LoadTargets GroupReconciler::LoadTargetsOf(const DeploymentSpec& d, const json& dsd,
                                           const std::vector<GroupDecision>& groups, int64_t now) const {
  LoadTargets targets;
  if (!d.autoscaling.prometheus_url.empty()) {
    targets.prometheus_url = d.autoscaling.prometheus_url;
    targets.prometheus_query = fmt::format("sum(rate({}{{namespace=\"{}\",pod=~\"{}-.*\"}}[1m]))",
                                           kRouterRequestsTotal, d.ns, RouterName(d.name));
  } else {
    std::string override_urls = kube::AnnotationOf(dsd, kAnnotationRouterMetrics);
    if (!override_urls.empty()) {
      for (auto part : absl::StrSplit(override_urls, ',')) {
        if (!part.empty()) targets.router_urls.emplace_back(part);
      }
    } else {
      for (const auto& pod : pods_->ListByLabel(d.ns, kLabelDeployment, d.name)) {
        if (kube::LabelOf(*pod, kLabelRole) != kRoleRouter || !PodReady(*pod) || PodIp(*pod).empty()) continue;
        targets.router_urls.push_back(fmt::format("http://{}:{}/metrics", PodIp(*pod), kRouterMetricsPort));
      }
    }
  }
  // Worker triggers: the leaders of counted groups.
  if (d.autoscaling.target_queue_depth_per_replica > 0 || d.autoscaling.target_kv_cache_utilization > 0) {
    const int existing = std::min<int>(groups.size(), d.replicas);
    for (int i = 0; i < existing; ++i) {
      const auto& g = groups[i];
      if (g.phase != GroupPhase::kReady || now - g.record.ready_since < d.autoscaling.initial_cooldown_seconds) continue;
      auto leader = pods_->Get(d.ns, GroupStatefulSetName(d.name, i) + "-0");
      if (!leader || PodIp(*leader).empty()) continue;
      targets.leader_urls.push_back(fmt::format("http://{}:{}/metrics", PodIp(*leader), kWorkerMetricsPort));
    }
  }
  return targets;
}

namespace {

// The group counts of a scaling decision; the load comes from the LoadScraper.
ScalingMetrics CountGroups(const DeploymentSpec& d, const std::vector<GroupDecision>& groups, int64_t now) {
  ScalingMetrics m;
  const int existing = std::min<int>(groups.size(), d.replicas);
  for (int i = 0; i < existing; ++i) {
    const auto& g = groups[i];
    const bool counted = g.phase == GroupPhase::kReady && g.record.ready_since > 0 &&
                         now - g.record.ready_since >= d.autoscaling.initial_cooldown_seconds;
    (counted ? m.counted_groups : m.loading_groups)++;
  }
  return m;
}

}  // namespace

}  // namespace shoal::op

namespace shoal::op {

// Idea: observe (caches only) → decide (pure functions) → act (writes only where the
// world differs). Order matters for restarts: a group's StatefulSet is applied with its
// new incarnation before its pods are deleted, so the replacement pods come up at the
// new incarnation and the deleted ones are recognisably stale.
absl::Status GroupReconciler::Reconcile(const std::string& key, std::chrono::milliseconds* requeue_after) {
  const size_t slash = key.find('/');
  const std::string ns = key.substr(0, slash);
  const std::string name = key.substr(slash + 1);
  kube::ObjectPtr dsd = deployments_->Get(ns, name);
  if (!dsd) {
    std::lock_guard<std::mutex> lock(mu_);
    scaling_.erase(key);  // children go with the garbage collector (owner references)
    scraper_->Forget(key);
    return absl::OkStatus();
  }
  if ((*dsd)["metadata"].contains("deletionTimestamp")) return absl::OkStatus();
  const std::string now = kube::TimeNow();
  const int64_t now_unix = static_cast<int64_t>(std::time(nullptr));
  const json previous_status = dsd->value("status", json::object());

  auto parsed = ParseDeployment(*dsd, options_.defaults);
  if (!parsed.ok()) {
    DeploymentSpec shell;
    shell.name = name;
    shell.ns = ns;
    shell.generation = (*dsd)["metadata"].value("generation", int64_t{0});
    StatusInputs in;
    in.invalid_spec = std::string(parsed.status().message());
    events_.Record(*dsd, "Warning", kReasonInvalidSpec, in.invalid_spec);
    json status = ComputeStatus(shell, in, previous_status, now);
    return WriteStatus(*dsd, status);
  }
  const DeploymentSpec& d = *parsed;
  int replicas = d.replicas;
  if (d.autoscaling.enabled) replicas = std::clamp(replicas, d.autoscaling.min_replicas, d.autoscaling.max_replicas);

  // Observe: the groups' StatefulSets and pods.
  std::map<int, kube::ObjectPtr> sets;
  int upper = replicas + d.rollout.max_surge_groups;
  for (const auto& sts : stateful_sets_->ListByLabel(ns, kLabelDeployment, name)) {
    int i = GroupIndexOf(*sts);
    if (i < 0) continue;
    sets[i] = sts;
    upper = std::max(upper, i + 1);
  }
  std::map<int, std::vector<PodObservation>> pods_by_group;
  for (const auto& pod : pods_->ListByLabel(ns, kLabelDeployment, name)) {
    int i = GroupIndexOf(*pod);
    if (i >= 0) pods_by_group[i].push_back(ObservePod(*pod));
  }
  const std::string spec_hash = GroupSpecHash(d);
  std::vector<GroupDecision> groups(upper);
  for (int i = 0; i < upper; ++i) {
    auto it = sets.find(i);
    GroupRecord record = it != sets.end() ? GroupRecordOf(*it->second) : GroupRecord{};
    groups[i] = DecideGroup(d, spec_hash, record, pods_by_group[i], now_unix);
    if (it == sets.end()) groups[i].outdated = false;
  }

  // Autoscaling: a new size lands through the scale subresource (spec.replicas), like HPA.
  std::optional<ScalingDecision> scaling;
  std::optional<double> current_qps;
  std::string last_scale_time = previous_status.value("lastScaleTime", "");
  if (d.autoscaling.enabled) {
    std::shared_ptr<ScalingState> state_ptr;
    {
      std::lock_guard<std::mutex> lock(mu_);  // one worker per key; only the map is shared
      auto& slot = scaling_[key];
      if (!slot) slot = std::make_shared<ScalingState>();
      state_ptr = slot;
    }
    ScalingState& state = *state_ptr;
    const auto steady_now = std::chrono::steady_clock::now();
    if (steady_now - state.last_scrape >= options_.autoscale_interval) {
      state.last_scrape = steady_now;
      scraper_->Request(key, LoadTargetsOf(d, *dsd, groups, now_unix));
    }
    // Decide once per finished round, on the groups as they are now.
    if (auto reading = scraper_->Latest(key); reading && reading->round != state.used_round) {
      state.used_round = reading->round;
      ScalingMetrics m = CountGroups(d, groups, now_unix);
      m.total_qps = reading->total_qps;
      m.total_waiting = reading->total_waiting;
      m.mean_kv_usage = reading->mean_kv_usage;
      state.last_qps = m.total_qps;
      state.last_decision = DecideScale(d.autoscaling, replicas, m, now_unix, &state.history);
    }
    scaling = state.last_decision;
    current_qps = state.last_qps;
    *requeue_after = options_.autoscale_interval;
  }
  if (scaling && scaling->desired != replicas) {
    auto scaled = client_->Patch(kDeepSeekDeployments.ObjectPath(ns, name) + "/scale",
                                 {{"spec", {{"replicas", scaling->desired}}}});
    if (!scaled.ok()) return scaled.status();
    events_.Record(*dsd, "Normal", kReasonScaled,
                   fmt::format("scaled from {} to {} groups: {}", replicas, scaling->desired, scaling->reason));
    spdlog::info("autoscaler deployment={} from={} to={} reason=\"{}\"", key, replicas, scaling->desired,
                 scaling->reason);
    replicas = scaling->desired;
    last_scale_time = now;
    if (static_cast<int>(groups.size()) < replicas + d.rollout.max_surge_groups) {
      groups.resize(replicas + d.rollout.max_surge_groups);
    }
  }
  if (metrics_) {
    metrics_->SetDesiredReplicas(key, replicas);
    if (current_qps) metrics_->SetObservedQps(key, *current_qps);
  }

  // Rolling update.
  RolloutPlan plan = PlanRollout(d, replicas, groups);
  for (int i : plan.groups_to_roll) {
    RollGroup(&groups[i], pods_by_group[i]);
    events_.Record(*dsd, "Normal", kReasonRollingGroup, fmt::format("recreating group {} with the new spec", i));
  }

  // Act: shared children, then groups.
  absl::Status first_error;
  auto note = [&](absl::Status s) {
    if (!s.ok() && first_error.ok()) first_error = s;
    return s.ok();
  };
  note(ApplyIfChanged(config_maps_.get(), res::kConfigMaps, DesiredConfigMap(d)));
  note(ApplyIfChanged(services_.get(), res::kServices, DesiredWorkersService(d)));
  note(ApplyIfChanged(services_.get(), res::kServices, DesiredLeadersService(d)));
  note(ApplyIfChanged(router_deployments_.get(), res::kDeployments, DesiredRouterDeployment(d)));
  note(ApplyIfChanged(services_.get(), res::kServices, DesiredRouterService(d)));
  for (int i = 0; i < plan.group_count; ++i) {
    GroupDecision& g = groups[i];
    if (!note(ApplyIfChanged(stateful_sets_.get(), res::kStatefulSets, DesiredGroupStatefulSet(d, i, g.record)))) {
      continue;  // never delete pods before the new incarnation is recorded
    }
    if (json pg = DesiredPodGroup(d, i); !pg.empty()) {
      const auto& type = d.Gang() == GangScheduler::kVolcano ? res::kVolcanoPodGroups : res::kSchedulerPluginsPodGroups;
      absl::Status s = ApplyIfChanged(nullptr, type, pg);
      if (!s.ok()) {
        bool first_report = false;
        {
          std::lock_guard<std::mutex> lock(mu_);
          first_report = !std::exchange(pod_groups_unavailable_[key], true);
        }
        // Outside mu_: recording is an API call, and every worker's applies need mu_.
        if (first_report) {
          events_.Record(*dsd, "Warning", kReasonPodGroupUnavailable,
                         fmt::format("cannot create PodGroup for scheduler {} (is its CRD installed?): {}",
                                     d.scheduler_name, std::string(s.message())));
        }
      }
    }
    if (g.recreate && g.reason != "spec changed") {
      events_.Record(*dsd, "Warning", kReasonGroupRestarted,
                     fmt::format("recreating group {} (restart {}/{}): {}", i, g.record.restarts,
                                 d.max_group_restarts, g.reason));
      if (metrics_) metrics_->CountGroupRestart(key);
    }
    if (g.newly_failed) {
      events_.Record(*dsd, "Warning", kReasonGroupFailed, fmt::format("group {} failed: {}", i, g.reason));
    }
    for (const auto& pod : g.pods_to_delete) {
      note(client_->Delete(res::kPods.ObjectPath(ns, pod)));
    }
  }
  // Surplus groups, highest first (their StatefulSets take their pods with them).
  for (auto it = sets.rbegin(); it != sets.rend(); ++it) {
    if (it->first < plan.group_count) break;
    const std::string sts_name = GroupStatefulSetName(name, it->first);
    if (note(client_->Delete(res::kStatefulSets.ObjectPath(ns, sts_name)))) {
      stateful_sets_->Erase(ns, sts_name);
      std::lock_guard<std::mutex> lock(mu_);
      applied_.erase(fmt::format("StatefulSet/{}/{}", ns, sts_name));
    }
    if (d.Gang() != GangScheduler::kNone) {
      const auto& type = d.Gang() == GangScheduler::kVolcano ? res::kVolcanoPodGroups : res::kSchedulerPluginsPodGroups;
      (void)client_->Delete(type.ObjectPath(ns, PodGroupName(name, it->first)));
      std::lock_guard<std::mutex> lock(mu_);
      applied_.erase(fmt::format("PodGroup/{}/{}", ns, PodGroupName(name, it->first)));
    }
  }
  groups.resize(std::min<int>(groups.size(), plan.group_count));

  // Status.
  StatusInputs in;
  in.replicas = replicas;
  in.groups = groups;
  if (auto router = router_deployments_->Get(ns, RouterName(name))) {
    in.router_ready = router->value("status", json::object()).value("readyReplicas", 0);
  }
  in.rollout_in_progress = plan.in_progress;
  in.apply_error = first_error.ok() ? "" : std::string(first_error.message());
  in.scaling = scaling;
  in.current_qps = current_qps;
  in.last_scale_time = last_scale_time;
  json status = ComputeStatus(d, in, previous_status, now);
  bool changed = false;
  for (auto it = status.begin(); it != status.end(); ++it) {
    if (!previous_status.contains(it.key()) || previous_status[it.key()] != it.value()) changed = true;
  }
  if (changed) note(WriteStatus(*dsd, status));
  return first_error;
}

}  // namespace shoal::op
