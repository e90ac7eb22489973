#pragma once
// The operator's Prometheus metrics, named once here, rendered by the /metrics endpoint.
#include <memory>
#include <string>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace shoal::op {

inline constexpr char kReconcileTotal[] = "shoal_operator_reconcile_total";
inline constexpr char kReconcileDuration[] = "shoal_operator_reconcile_duration_seconds";
inline constexpr char kApiRequestsTotal[] = "shoal_operator_apiserver_requests_total";
inline constexpr char kObservedQps[] = "shoal_operator_observed_qps";
inline constexpr char kDesiredReplicas[] = "shoal_operator_desired_replicas";
inline constexpr char kGroupRestartsTotal[] = "shoal_operator_group_restarts_total";
inline constexpr char kIsLeader[] = "shoal_operator_is_leader";
inline constexpr char kWorkQueueDepth[] = "shoal_operator_workqueue_depth";

class OperatorMetrics {
 public:
  OperatorMetrics();
  void ObserveReconcile(bool ok, double seconds);
  void SetObservedQps(const std::string& deployment, double qps);
  void SetDesiredReplicas(const std::string& deployment, int replicas);
  void CountGroupRestart(const std::string& deployment);
  void SetLeader(bool leader) { leader_->Set(leader ? 1 : 0); }
  void SetApiRequests(double total) { api_requests_->Set(total); }
  void SetQueueDepth(double depth) { queue_depth_->Set(depth); }
  std::string RenderText() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* reconciles_;
  prometheus::Histogram* duration_;
  prometheus::Family<prometheus::Gauge>* qps_;
  prometheus::Family<prometheus::Gauge>* desired_;
  prometheus::Family<prometheus::Counter>* restarts_;
  prometheus::Gauge* leader_;
  prometheus::Gauge* api_requests_;
  prometheus::Gauge* queue_depth_;
};

}  // namespace shoal::op
