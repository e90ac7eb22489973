#include "operator/operator_metrics.h"

#include "prometheus/text_serializer.h"

namespace shoal::op {

OperatorMetrics::OperatorMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  reconciles_ = &prometheus::BuildCounter().Name(kReconcileTotal).Help("Reconciles by result").Register(*registry_);
  duration_ = &prometheus::BuildHistogram()
                   .Name(kReconcileDuration)
                   .Help("Time of one reconcile")
                   .Register(*registry_)
                   .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5});
  qps_ = &prometheus::BuildGauge().Name(kObservedQps).Help("Router QPS the autoscaler saw").Register(*registry_);
  desired_ = &prometheus::BuildGauge().Name(kDesiredReplicas).Help("Groups wanted").Register(*registry_);
  restarts_ = &prometheus::BuildCounter().Name(kGroupRestartsTotal).Help("Groups recreated after a pod failure").Register(*registry_);
  leader_ = &prometheus::BuildGauge().Name(kIsLeader).Help("1 while this replica holds the Lease").Register(*registry_).Add({});
  api_requests_ = &prometheus::BuildGauge().Name(kApiRequestsTotal).Help("Requests sent to the API server (watches included)").Register(*registry_).Add({});
  queue_depth_ = &prometheus::BuildGauge().Name(kWorkQueueDepth).Help("Keys waiting in the work queue").Register(*registry_).Add({});
}

void OperatorMetrics::ObserveReconcile(bool ok, double seconds) {
  reconciles_->Add({{"result", ok ? "success" : "error"}}).Increment();
  duration_->Observe(seconds);
}

void OperatorMetrics::SetObservedQps(const std::string& deployment, double qps) {
  qps_->Add({{"deployment", deployment}}).Set(qps);
}

void OperatorMetrics::SetDesiredReplicas(const std::string& deployment, int replicas) {
  desired_->Add({{"deployment", deployment}}).Set(replicas);
}

void OperatorMetrics::CountGroupRestart(const std::string& deployment) {
  restarts_->Add({{"deployment", deployment}}).Increment();
}

std::string OperatorMetrics::RenderText() const {
  prometheus::TextSerializer serializer;
  return serializer.Serialize(registry_->Collect());
}

}  // namespace shoal::op
