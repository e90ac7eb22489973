#pragma once
// Every Prometheus metric the worker exports, named once. Dashboards, alerts and the
// operator's autoscaler refer to these strings, so they change only with a migration note.
namespace shoal::worker::metric {

// Gauges, read from the engine at scrape time.
inline constexpr char kKvCacheUsageRatio[] = "shoal_worker_kv_cache_usage_ratio";
inline constexpr char kRunningSequences[] = "shoal_worker_running_sequences";
inline constexpr char kWaitingSequences[] = "shoal_worker_waiting_sequences";

// Counters.
inline constexpr char kPrefixCacheHitsTotal[] = "shoal_worker_prefix_cache_hits_total";
inline constexpr char kPreemptionsTotal[] = "shoal_worker_preemptions_total";
inline constexpr char kRequestsTotal[] = "shoal_worker_requests_total";  // label: code
inline constexpr char kGeneratedTokensTotal[] = "shoal_worker_generated_tokens_total";
inline constexpr char kPromptTokensTotal[] = "shoal_worker_prompt_tokens_total";

// Histograms, one observation per engine step.
inline constexpr char kStepDurationSeconds[] = "shoal_worker_step_duration_seconds";
inline constexpr char kBatchTokens[] = "shoal_worker_batch_tokens";

inline constexpr char kCodeLabel[] = "code";

}  // namespace shoal::worker::metric
