#pragma once
// The router's Prometheus metrics, named once here, served by prometheus-cpp's Exposer
// on the metrics port. The operator scales on shoal_router_requests_total (QPS) and the
// latency histograms.
#include "worker/common/grpc_status_name.h"
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/support/status.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace shoal::router {

inline constexpr char kRequestsTotal[] = "shoal_router_requests_total";
inline constexpr char kInflightRequests[] = "shoal_router_inflight_requests";
inline constexpr char kQueuedRequests[] = "shoal_router_queued_requests";
inline constexpr char kTimeToFirstToken[] = "shoal_router_time_to_first_token_seconds";
inline constexpr char kTimePerOutputToken[] = "shoal_router_time_per_output_token_seconds";
inline constexpr char kRequestDuration[] = "shoal_router_request_duration_seconds";
inline constexpr char kGeneratedTokens[] = "shoal_router_generated_tokens_total";
inline constexpr char kPromptTokens[] = "shoal_router_prompt_tokens_total";
inline constexpr char kUpstreamHealthy[] = "shoal_router_upstream_healthy";
inline constexpr char kRetries[] = "shoal_router_retries_total";

// gRPC status code as Prometheus label value: "OK", "UNAVAILABLE", ...
using ::shoal::StatusCodeName;

class RouterMetrics {
 public:
  RouterMetrics();

  // One finished Generate: counters, and latency histograms when tokens came.
  struct RequestOutcome {
    std::string model;
    grpc::StatusCode code = grpc::StatusCode::OK;
    double duration_seconds = 0;
    double time_to_first_token_seconds = -1;  // < 0: no token came
    int64_t completion_tokens = 0;
    int64_t prompt_tokens = 0;
  };
  void ObserveRequest(const RequestOutcome& outcome);
  void CountRequest(const std::string& model, grpc::StatusCode code);  // requests without a stream (ListModels)
  void AddInflight(double delta) { inflight_.Increment(delta); }
  void SetQueued(double value) { queued_.Set(value); }
  void CountRetry() { retries_.Increment(); }
  void SetUpstreamHealthy(const std::string& group, bool healthy);
  void RemoveUpstream(const std::string& group);

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }
  // The text exposition, for tests.
  std::string RenderText() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Gauge& inflight_;
  prometheus::Gauge& queued_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& tpot_;
  prometheus::Histogram& duration_;
  prometheus::Counter& generated_tokens_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& retries_;
  prometheus::Family<prometheus::Gauge>& upstream_healthy_;
  std::mutex mu_;
  std::map<std::string, prometheus::Gauge*> upstream_gauges_;
};

// /metrics over HTTP on its own port. Port 0 picks a free one.
class MetricsExposer {
 public:
  static absl::StatusOr<std::unique_ptr<MetricsExposer>> Start(const std::string& host, int port,
                                                               const RouterMetrics& metrics);
  int port() const { return port_; }

 private:
  MetricsExposer() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace shoal::router
