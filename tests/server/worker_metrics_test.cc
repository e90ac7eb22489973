// The worker's Prometheus families: names from metric_names.h, gauges read at scrape time,
// counters advanced by the growth of the engine's cumulative totals.
#include "worker/server/worker_metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "worker/server/metric_names.h"

namespace shoal::worker {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(WorkerMetrics, ExportsEveryFamilyByItsName) {
  WorkerMetrics metrics;
  const std::string text = metrics.RenderText();
  for (const char* name : {metric::kKvCacheUsageRatio, metric::kRunningSequences, metric::kWaitingSequences,
                           metric::kPrefixCacheHitsTotal, metric::kPreemptionsTotal, metric::kGeneratedTokensTotal,
                           metric::kPromptTokensTotal, metric::kStepDurationSeconds, metric::kBatchTokens}) {
    EXPECT_THAT(text, HasSubstr(std::string("# TYPE ") + name)) << name;
  }
}

TEST(WorkerMetrics, CountersFollowTheEngineTotalsAndGaugesTheSource) {
  WorkerMetrics metrics;
  EngineStats s;
  s.prefix_cache_hits_total = 32;
  s.preemptions_total = 1;
  s.last_step_tokens = 40;
  s.last_step_seconds = 0.003;
  metrics.ObserveStep(s);
  s.prefix_cache_hits_total = 48;  // +16
  metrics.ObserveStep(s);
  EngineStats now;
  now.running = 3;
  now.waiting = 2;
  now.kv_cache_usage = 0.25;
  now.prefix_cache_hits_total = 48;
  now.preemptions_total = 1;
  metrics.SetStatsSource([&] { return now; });
  metrics.ObserveRequest(grpc::StatusCode::OK, 10, 5);
  metrics.ObserveRequest(grpc::StatusCode::INVALID_ARGUMENT, 0, 0);

  const std::string text = metrics.RenderText();
  EXPECT_THAT(text, HasSubstr("shoal_worker_prefix_cache_hits_total 48"));
  EXPECT_THAT(text, HasSubstr("shoal_worker_preemptions_total 1"));
  EXPECT_THAT(text, HasSubstr("shoal_worker_running_sequences 3"));
  EXPECT_THAT(text, HasSubstr("shoal_worker_waiting_sequences 2"));
  EXPECT_THAT(text, HasSubstr("shoal_worker_kv_cache_usage_ratio 0.25"));
  EXPECT_THAT(text, HasSubstr("shoal_worker_requests_total{code=\"OK\"} 1"));
  EXPECT_THAT(text, HasSubstr("shoal_worker_requests_total{code=\"INVALID_ARGUMENT\"} 1"));
  EXPECT_THAT(text, HasSubstr("shoal_worker_prompt_tokens_total 10"));
  EXPECT_THAT(text, HasSubstr("shoal_worker_generated_tokens_total 5"));
  EXPECT_THAT(text, HasSubstr("shoal_worker_step_duration_seconds_count 2"));
  EXPECT_THAT(text, HasSubstr("shoal_worker_batch_tokens_sum 80"));
}

}  // namespace
}  // namespace shoal::worker
