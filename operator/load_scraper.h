#pragma once
// The autoscaler's reads of router and leader metrics, off the reconcile workers. A
// scrape is network I/O with a timeout per endpoint (seconds, when a pod is unreachable);
// run inside a reconcile it would hold that worker, and with it restarts and rollouts of
// every other deployment, for as long. So a reconcile only asks for a round (Request,
// which never waits) and reads the newest finished one (Latest); the scraper's own
// threads do the I/O and tell the reconciler when a round is in (on_reading).
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "operator/metrics_scraper.h"

namespace shoal::op {

// What one round of a deployment reads.
struct LoadTargets {
  // Router QPS from one Prometheus instant query when prometheus_url is set, else from
  // the routers' own /metrics (router_urls), as a rate between successive rounds.
  std::string prometheus_url;
  std::string prometheus_query;
  std::vector<std::string> router_urls;
  // Worker triggers: the /metrics of the counted groups' leaders (empty: not wanted).
  std::vector<std::string> leader_urls;
};

// One finished round. A value is nullopt when it could not be read (or, for QPS from
// router endpoints, on an endpoint's first round, which has no rate yet).
struct LoadReading {
  uint64_t round = 0;  // 1, 2, ... per deployment; a new number means new data
  std::optional<double> total_qps;
  std::optional<double> total_waiting;
  std::optional<double> mean_kv_usage;
};

class LoadScraper {
 public:
  // on_reading(key) runs on a scraper thread after each finished round of key.
  explicit LoadScraper(std::function<void(const std::string& key)> on_reading, int threads = 2);
  ~LoadScraper();  // stops: rounds in flight finish (each bounded by its timeouts)
  LoadScraper(const LoadScraper&) = delete;
  LoadScraper& operator=(const LoadScraper&) = delete;

  // Queues a round of `key` over `targets`. Returns at once. While a round of key is
  // queued or running, a new request only replaces the targets of the next one, so a
  // slow endpoint never piles rounds up.
  void Request(const std::string& key, LoadTargets targets);
  std::optional<LoadReading> Latest(const std::string& key) const;
  // Drops key's state (a deleted deployment); a round in flight for it is discarded.
  void Forget(const std::string& key);

 private:
  struct KeyState {
    std::optional<LoadTargets> next;  // asked for, not started
    bool running = false;
    uint64_t generation = 0;  // bumped by Forget, so a discarded round's result is dropped
    CounterRate router_rate;
    std::optional<LoadReading> latest;
  };

  void Loop();
  LoadReading RunRound(const LoadTargets& targets, CounterRate* rate);

  const std::function<void(const std::string&)> on_reading_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::deque<std::string> ready_;  // keys with `next` set and not running
  std::map<std::string, KeyState> keys_;
  std::vector<std::thread> threads_;
};

}  // namespace shoal::op
