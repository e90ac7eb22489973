#include "router/router_metrics.h"

#include <fmt/format.h>

#include <exception>

#include "prometheus/text_serializer.h"

namespace shoal::router {

namespace {
prometheus::Histogram::BucketBoundaries TtftBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}
prometheus::Histogram::BucketBoundaries TpotBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5};
}
prometheus::Histogram::BucketBoundaries DurationBuckets() {
  return {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
}
}  // namespace

RouterMetrics::RouterMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(prometheus::BuildCounter()
                    .Name(kRequestsTotal)
                    .Help("Requests the router finished, by model and gRPC status code")
                    .Register(*registry_)),
      inflight_(prometheus::BuildGauge()
                    .Name(kInflightRequests)
                    .Help("Requests being served or waiting for a slot")
                    .Register(*registry_)
                    .Add({})),
      queued_(prometheus::BuildGauge()
                  .Name(kQueuedRequests)
                  .Help("Requests waiting in the router's queue for a free slot")
                  .Register(*registry_)
                  .Add({})),
      ttft_(prometheus::BuildHistogram()
                .Name(kTimeToFirstToken)
                .Help("Seconds from the router receiving a request to forwarding its first token")
                .Register(*registry_)
                .Add({}, TtftBuckets())),
      tpot_(prometheus::BuildHistogram()
                .Name(kTimePerOutputToken)
                .Help("Mean seconds between output tokens after the first, one observation per request")
                .Register(*registry_)
                .Add({}, TpotBuckets())),
      duration_(prometheus::BuildHistogram()
                    .Name(kRequestDuration)
                    .Help("Seconds from the router receiving a Generate request to its end")
                    .Register(*registry_)
                    .Add({}, DurationBuckets())),
      generated_tokens_(prometheus::BuildCounter()
                            .Name(kGeneratedTokens)
                            .Help("Output tokens streamed to clients")
                            .Register(*registry_)
                            .Add({})),
      prompt_tokens_(prometheus::BuildCounter()
                         .Name(kPromptTokens)
                         .Help("Prompt tokens of finished requests, as the groups reported them")
                         .Register(*registry_)
                         .Add({})),
      retries_(prometheus::BuildCounter()
                   .Name(kRetries)
                   .Help("Requests retried on another group after their first group failed before any token")
                   .Register(*registry_)
                   .Add({})),
      upstream_healthy_(prometheus::BuildGauge()
                            .Name(kUpstreamHealthy)
                            .Help("1 when the group's leader passes grpc.health.v1 checks, else 0")
                            .Register(*registry_)) {}

void RouterMetrics::ObserveRequest(const RequestOutcome& outcome) {
  CountRequest(outcome.model, outcome.code);
  duration_.Observe(outcome.duration_seconds);
  if (outcome.time_to_first_token_seconds >= 0) {
    ttft_.Observe(outcome.time_to_first_token_seconds);
    if (outcome.completion_tokens > 1) {
      tpot_.Observe((outcome.duration_seconds - outcome.time_to_first_token_seconds) /
                    static_cast<double>(outcome.completion_tokens - 1));
    }
  }
  if (outcome.completion_tokens > 0) generated_tokens_.Increment(static_cast<double>(outcome.completion_tokens));
  if (outcome.prompt_tokens > 0) prompt_tokens_.Increment(static_cast<double>(outcome.prompt_tokens));
}

void RouterMetrics::CountRequest(const std::string& model, grpc::StatusCode code) {
  requests_.Add({{"model", model.empty() ? "default" : model}, {"code", StatusCodeName(code)}}).Increment();
}

void RouterMetrics::SetUpstreamHealthy(const std::string& group, bool healthy) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& gauge = upstream_gauges_[group];
  if (gauge == nullptr) gauge = &upstream_healthy_.Add({{"group", group}});
  gauge->Set(healthy ? 1 : 0);
}

void RouterMetrics::RemoveUpstream(const std::string& group) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = upstream_gauges_.find(group);
  if (it == upstream_gauges_.end()) return;
  upstream_healthy_.Remove(it->second);
  upstream_gauges_.erase(it);
}

std::string RouterMetrics::RenderText() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

absl::StatusOr<std::unique_ptr<MetricsExposer>> MetricsExposer::Start(const std::string& host, int port,
                                                                      const RouterMetrics& metrics) {
  auto exposer = std::unique_ptr<MetricsExposer>(new MetricsExposer());
  const std::string address =
      host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
  // civetweb reports a port it cannot bind by throwing; this is the one place we catch.
  try {
    exposer->exposer_ = std::make_unique<prometheus::Exposer>(address);
  } catch (const std::exception& e) {
    return absl::UnavailableError(fmt::format("metrics endpoint cannot listen on {}: {}", address, e.what()));
  }
  exposer->exposer_->RegisterCollectable(metrics.registry());
  const auto ports = exposer->exposer_->GetListeningPorts();
  exposer->port_ = ports.empty() ? port : ports.front();
  return exposer;
}

}  // namespace shoal::router
