#pragma once
// A rate-limited work queue of object keys with client-go's semantics: a key is queued
// at most once (dedup); a key being processed is never handed to a second worker — if it
// is added meanwhile it is queued again when Done is called; AddRateLimited delays a
// key by an exponential per-key backoff (base · 2^failures, capped) and an overall token
// bucket; Forget resets the key's backoff after a success.
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>

namespace shoal::kube {

struct WorkQueueOptions {
  std::chrono::milliseconds base_delay{5};
  std::chrono::milliseconds max_delay{300000};
  double qps = 10;   // overall token bucket for rate-limited adds
  int burst = 100;
};

class WorkQueue {
 public:
  using Clock = std::chrono::steady_clock;
  explicit WorkQueue(WorkQueueOptions options = {});

  void Add(const std::string& key);
  void AddAfter(const std::string& key, std::chrono::milliseconds delay);
  void AddRateLimited(const std::string& key);
  void Forget(const std::string& key);
  int NumRequeues(const std::string& key) const;
  // Blocks for the next key; nullopt once shut down.
  std::optional<std::string> Get();
  void Done(const std::string& key);
  void ShutDown();
  size_t Len() const;
  // The delay AddRateLimited would use now for `key` (for tests).
  std::chrono::milliseconds NextDelay(const std::string& key);

 private:
  void AddLocked(const std::string& key);
  std::chrono::milliseconds RateLimitDelayLocked(const std::string& key);
  void PromoteDueLocked(Clock::time_point now);

  WorkQueueOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  std::set<std::string> dirty_;       // queued or to be re-queued after Done
  std::set<std::string> processing_;
  std::multimap<Clock::time_point, std::string> waiting_;
  std::map<std::string, int> failures_;
  double tokens_;
  Clock::time_point last_refill_;
  Clock::time_point bucket_next_free_;
  bool shutting_down_ = false;
};

}  // namespace shoal::kube
