#pragma once
// Reading load from Prometheus endpoints: the text exposition of the routers (QPS from
// shoal_router_requests_total) and group leaders (waiting sequences, KV-cache usage), or
// one query against a Prometheus server.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace shoal::op {

inline constexpr char kRouterRequestsTotal[] = "shoal_router_requests_total";
inline constexpr char kWorkerWaitingSequences[] = "shoal_worker_waiting_sequences";
inline constexpr char kWorkerKvCacheUsage[] = "shoal_worker_kv_cache_usage_ratio";

// Sum of every sample of metric `name` in a text exposition (all label sets); nullopt
// when the metric is absent. Pure.
std::optional<double> SumMetric(const std::string& exposition, const std::string& name);

// GET `url` (http only), body on 200.
absl::StatusOr<std::string> HttpGet(const std::string& url, int timeout_ms = 2000);

// Value of a Prometheus instant query returning one scalar-ish vector sample.
absl::StatusOr<double> QueryPrometheus(const std::string& base_url, const std::string& query);

// Turns successive counter readings per endpoint into a rate. A counter that went down
// (process restarted) counts from zero; an endpoint seen for the first time yields no
// rate until its second reading.
class CounterRate {
 public:
  // Records `value` for `endpoint` at `now_s`; returns the endpoint's rate since its
  // previous reading, when there was one.
  std::optional<double> Observe(const std::string& endpoint, double value, double now_s);
  // Forgets endpoints not observed in the last round (router pods that went away).
  void Retain(const std::vector<std::string>& endpoints);

 private:
  struct Sample {
    double value;
    double time;
  };
  std::map<std::string, Sample> last_;
};

}  // namespace shoal::op
