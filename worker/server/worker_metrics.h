#pragma once
// The worker's Prometheus metrics (names in metric_names.h) and the HTTP endpoint that
// serves them. Gauges are read from the engine when Prometheus scrapes, so an idle worker
// never reports the last busy step; counters and histograms are fed by the engine's step
// observer and by the server as each request finishes.
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/support/status.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "worker/engine/engine.h"

namespace shoal::worker {

class WorkerMetrics : public prometheus::Collectable {
 public:
  WorkerMetrics();

  // Where scrape-time gauges come from (usually Engine::Stats); unset = last step's stats.
  void SetStatsSource(std::function<EngineStats()> source);
  // Engine::SetStepObserver target: one histogram observation per step, counters advanced
  // by the growth of the engine's cumulative totals.
  void ObserveStep(const EngineStats& stats);
  void ObserveRequest(grpc::StatusCode code, int64_t prompt_tokens, int64_t completion_tokens);

  std::vector<prometheus::MetricFamily> Collect() const override;
  // The Prometheus text exposition, as /metrics serves it.
  std::string RenderText() const;

 private:
  void SyncLocked(const EngineStats& stats) const;

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Gauge& kv_cache_usage_;
  prometheus::Gauge& running_;
  prometheus::Gauge& waiting_;
  prometheus::Counter& prefix_cache_hits_;
  prometheus::Counter& preemptions_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Counter& generated_tokens_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Histogram& step_duration_;
  prometheus::Histogram& batch_tokens_;

  mutable std::mutex mu_;
  std::function<EngineStats()> stats_source_;
  mutable EngineStats last_stats_;
  mutable int64_t counted_prefix_hits_ = 0;
  mutable int64_t counted_preemptions_ = 0;
};

// /metrics over HTTP on its own port (prometheus-cpp's embedded civetweb server).
class MetricsEndpoint {
 public:
  // port 0 picks a free one; port() says which.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(const std::string& host, int port,
                                                                std::shared_ptr<WorkerMetrics> metrics);
  int port() const { return port_; }

 private:
  MetricsEndpoint() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::shared_ptr<WorkerMetrics> metrics_;
  int port_ = 0;
};

}  // namespace shoal::worker
