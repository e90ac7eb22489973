#include "worker/server/worker_metrics.h"

#include <fmt/format.h>

#include <exception>
#include <sstream>

#include "prometheus/text_serializer.h"
#include "worker/server/metric_names.h"
#include "worker/server/request_translation.h"

namespace shoal::worker {
namespace {

prometheus::Gauge& MakeGauge(prometheus::Registry& r, const char* name, const char* help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
}

prometheus::Counter& MakeCounter(prometheus::Registry& r, const char* name, const char* help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}

prometheus::Histogram& MakeHistogram(prometheus::Registry& r, const char* name, const char* help,
                                     prometheus::Histogram::BucketBoundaries buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, std::move(buckets));
}

// 1 ms .. ~16 s in powers of two: a decode step of a small model on CPU is milliseconds,
// a long prefill chunk of a large one is seconds.
prometheus::Histogram::BucketBoundaries StepSecondsBuckets() {
  prometheus::Histogram::BucketBoundaries b;
  for (double s = 0.001; s < 20.0; s *= 2) b.push_back(s);
  return b;
}

// 1 .. 16384 tokens in powers of two: decode-only steps sit at the bottom (one token per
// running sequence), chunked prefill at max_num_batched_tokens.
prometheus::Histogram::BucketBoundaries BatchTokenBuckets() {
  prometheus::Histogram::BucketBoundaries b;
  for (double t = 1; t <= 16384; t *= 2) b.push_back(t);
  return b;
}

}  // namespace

WorkerMetrics::WorkerMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      kv_cache_usage_(MakeGauge(*registry_, metric::kKvCacheUsageRatio,
                                "Fraction of KV cache blocks in use (0..1)")),
      running_(MakeGauge(*registry_, metric::kRunningSequences, "Sequences in the running batch")),
      waiting_(MakeGauge(*registry_, metric::kWaitingSequences, "Requests queued for admission")),
      prefix_cache_hits_(MakeCounter(*registry_, metric::kPrefixCacheHitsTotal,
                                     "Prompt tokens served from the prefix cache")),
      preemptions_(MakeCounter(*registry_, metric::kPreemptionsTotal,
                               "Sequences preempted (to be recomputed) because KV blocks ran out")),
      requests_(prometheus::BuildCounter()
                    .Name(metric::kRequestsTotal)
                    .Help("Generate requests finished, by gRPC status code")
                    .Register(*registry_)),
      generated_tokens_(MakeCounter(*registry_, metric::kGeneratedTokensTotal, "Completion tokens generated")),
      prompt_tokens_(MakeCounter(*registry_, metric::kPromptTokensTotal, "Prompt tokens of finished requests")),
      step_duration_(MakeHistogram(*registry_, metric::kStepDurationSeconds,
                                   "Wall time of one engine step (schedule, forward, sample)",
                                   StepSecondsBuckets())),
      batch_tokens_(MakeHistogram(*registry_, metric::kBatchTokens, "Tokens computed in one engine step",
                                  BatchTokenBuckets())) {}

void WorkerMetrics::SetStatsSource(std::function<EngineStats()> source) {
  std::lock_guard<std::mutex> lock(mu_);
  stats_source_ = std::move(source);
}

void WorkerMetrics::ObserveStep(const EngineStats& stats) {
  step_duration_.Observe(stats.last_step_seconds);
  batch_tokens_.Observe(static_cast<double>(stats.last_step_tokens));
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked(stats);
}

void WorkerMetrics::SyncLocked(const EngineStats& stats) const {
  last_stats_ = stats;
  kv_cache_usage_.Set(stats.kv_cache_usage);
  running_.Set(stats.running);
  waiting_.Set(stats.waiting);
  // The engine keeps cumulative totals; a counter only ever moves forward by the growth.
  if (stats.prefix_cache_hits_total > counted_prefix_hits_) {
    prefix_cache_hits_.Increment(static_cast<double>(stats.prefix_cache_hits_total - counted_prefix_hits_));
    counted_prefix_hits_ = stats.prefix_cache_hits_total;
  }
  if (stats.preemptions_total > counted_preemptions_) {
    preemptions_.Increment(static_cast<double>(stats.preemptions_total - counted_preemptions_));
    counted_preemptions_ = stats.preemptions_total;
  }
}

void WorkerMetrics::ObserveRequest(grpc::StatusCode code, int64_t prompt_tokens, int64_t completion_tokens) {
  requests_.Add({{metric::kCodeLabel, std::string(StatusCodeName(code))}}).Increment();
  if (prompt_tokens > 0) prompt_tokens_.Increment(static_cast<double>(prompt_tokens));
  if (completion_tokens > 0) generated_tokens_.Increment(static_cast<double>(completion_tokens));
}

std::vector<prometheus::MetricFamily> WorkerMetrics::Collect() const {
  std::function<EngineStats()> source;
  {
    std::lock_guard<std::mutex> lock(mu_);
    source = stats_source_;
  }
  // Read the engine outside our lock: Stats() may wait for the engine thread, which may be
  // inside ObserveStep waiting for our lock.
  if (source) {
    EngineStats stats = source();
    std::lock_guard<std::mutex> lock(mu_);
    SyncLocked(stats);
  }
  return registry_->Collect();
}

std::string WorkerMetrics::RenderText() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, Collect());
  return out.str();
}

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(const std::string& host, int port,
                                                                       std::shared_ptr<WorkerMetrics> metrics) {
  auto endpoint = std::unique_ptr<MetricsEndpoint>(new MetricsEndpoint());
  const std::string address = host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, port)
                                                                  : fmt::format("{}:{}", host, port);
  // prometheus-cpp reports a failed bind by throwing; this is the one place it can.
  try {
    endpoint->exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/1);
  } catch (const std::exception& e) {
    return absl::UnavailableError(fmt::format("metrics endpoint cannot listen on {}: {}", address, e.what()));
  }
  endpoint->metrics_ = std::move(metrics);
  endpoint->exposer_->RegisterCollectable(endpoint->metrics_, "/metrics");
  const std::vector<int> ports = endpoint->exposer_->GetListeningPorts();
  if (ports.empty()) return absl::InternalError(fmt::format("metrics endpoint on {} reports no port", address));
  endpoint->port_ = ports.front();
  return endpoint;
}

}  // namespace shoal::worker
