#include "operator/kube/work_queue.h"

#include <algorithm>
#include <cmath>

namespace shoal::kube {

WorkQueue::WorkQueue(WorkQueueOptions options)
    : options_(options), tokens_(options.burst), last_refill_(Clock::now()), bucket_next_free_(Clock::now()) {}

void WorkQueue::AddLocked(const std::string& key) {
  if (shutting_down_ || dirty_.count(key)) return;
  dirty_.insert(key);
  if (processing_.count(key)) return;  // re-queued by Done
  queue_.push_back(key);
  cv_.notify_one();
}

void WorkQueue::Add(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  AddLocked(key);
}

void WorkQueue::AddAfter(const std::string& key, std::chrono::milliseconds delay) {
  std::lock_guard<std::mutex> lock(mu_);
  if (shutting_down_) return;
  if (delay.count() <= 0) {
    AddLocked(key);
    return;
  }
  // One pending timer per key is enough: keep the earliest.
  const auto when = Clock::now() + delay;
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if (it->second == key) {
      if (it->first <= when) return;
      waiting_.erase(it);
      break;
    }
  }
  waiting_.emplace(when, key);
  cv_.notify_one();
}

std::chrono::milliseconds WorkQueue::RateLimitDelayLocked(const std::string& key) {
  // Per-key exponential backoff.
  int failures = failures_[key]++;
  double per_key_ms = options_.base_delay.count() * std::pow(2.0, std::min(failures, 30));
  per_key_ms = std::min(per_key_ms, static_cast<double>(options_.max_delay.count()));
  // Overall token bucket: each rate-limited add reserves the next free slot.
  const auto now = Clock::now();
  const auto slot = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.0 / options_.qps));
  double bucket_ms = 0;
  if (tokens_ >= 1) {
    tokens_ -= 1;
  } else {
    bucket_next_free_ = std::max(bucket_next_free_, now) + slot;
    bucket_ms = std::chrono::duration<double, std::milli>(bucket_next_free_ - now).count();
  }
  double refill = std::chrono::duration<double>(now - last_refill_).count() * options_.qps;
  tokens_ = std::min<double>(options_.burst, tokens_ + refill);
  last_refill_ = now;
  return std::chrono::milliseconds(static_cast<int64_t>(std::max(per_key_ms, bucket_ms)));
}

std::chrono::milliseconds WorkQueue::NextDelay(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  int failures = failures_[key];
  double per_key_ms = options_.base_delay.count() * std::pow(2.0, std::min(failures, 30));
  return std::chrono::milliseconds(
      static_cast<int64_t>(std::min(per_key_ms, static_cast<double>(options_.max_delay.count()))));
}

void WorkQueue::AddRateLimited(const std::string& key) {
  std::chrono::milliseconds delay;
  {
    std::lock_guard<std::mutex> lock(mu_);
    delay = RateLimitDelayLocked(key);
  }
  AddAfter(key, delay);
}

void WorkQueue::Forget(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  failures_.erase(key);
}

int WorkQueue::NumRequeues(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = failures_.find(key);
  return it == failures_.end() ? 0 : it->second;
}

void WorkQueue::PromoteDueLocked(Clock::time_point now) {
  while (!waiting_.empty() && waiting_.begin()->first <= now) {
    std::string key = waiting_.begin()->second;
    waiting_.erase(waiting_.begin());
    AddLocked(key);
  }
}

std::optional<std::string> WorkQueue::Get() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    // Shut down: what is still queued is dropped, not worked off (a replica that lost
    // the Lease must stop writing; a new leader reconciles everything on its first sync).
    if (shutting_down_) return std::nullopt;
    PromoteDueLocked(Clock::now());
    if (!queue_.empty()) break;
    if (waiting_.empty()) {
      cv_.wait(lock);
    } else {
      // A copy: another worker may erase the node while this one waits.
      const Clock::time_point due = waiting_.begin()->first;
      cv_.wait_until(lock, due);
    }
  }
  std::string key = queue_.front();
  queue_.pop_front();
  processing_.insert(key);
  dirty_.erase(key);
  return key;
}

void WorkQueue::Done(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  processing_.erase(key);
  if (dirty_.count(key)) {
    queue_.push_back(key);
    cv_.notify_one();
  }
}

void WorkQueue::ShutDown() {
  std::lock_guard<std::mutex> lock(mu_);
  shutting_down_ = true;
  waiting_.clear();
  cv_.notify_all();
}

size_t WorkQueue::Len() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

}  // namespace shoal::kube
