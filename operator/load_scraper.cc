#include "operator/load_scraper.h"

#include <spdlog/spdlog.h>

#include <chrono>

namespace shoal::op {

LoadScraper::LoadScraper(std::function<void(const std::string& key)> on_reading, int threads)
    : on_reading_(std::move(on_reading)) {
  for (int i = 0; i < std::max(1, threads); ++i) threads_.emplace_back([this] { Loop(); });
}

LoadScraper::~LoadScraper() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void LoadScraper::Request(const std::string& key, LoadTargets targets) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    KeyState& state = keys_[key];
    const bool queued = state.next.has_value();
    state.next = std::move(targets);
    // A running key is queued again when its round ends; a queued one is already there.
    if (state.running || queued) return;
    ready_.push_back(key);
  }
  cv_.notify_one();
}

std::optional<LoadReading> LoadScraper::Latest(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = keys_.find(key);
  if (it == keys_.end()) return std::nullopt;
  return it->second.latest;
}

void LoadScraper::Forget(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = keys_.find(key);
  if (it == keys_.end()) return;
  if (!it->second.running) {
    keys_.erase(it);
    return;
  }
  // The running round ends into a fresh state that it recognizes as not its own.
  const uint64_t generation = it->second.generation + 1;
  it->second = KeyState{};
  it->second.generation = generation;
  it->second.running = true;
}

void LoadScraper::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || !ready_.empty(); });
    if (stop_) return;
    const std::string key = ready_.front();
    ready_.pop_front();
    auto it = keys_.find(key);
    // Forgotten while queued, or a stale entry (Forget, then Request again) for a key whose
    // round is already running: that round queues the key again when it ends.
    if (it == keys_.end() || !it->second.next || it->second.running) continue;
    KeyState& state = it->second;
    LoadTargets targets = *std::move(state.next);
    state.next.reset();
    state.running = true;
    const uint64_t generation = state.generation;
    CounterRate rate = state.router_rate;  // the map entry may go while the lock is released
    lock.unlock();

    LoadReading reading = RunRound(targets, &rate);

    lock.lock();
    it = keys_.find(key);
    if (it == keys_.end()) continue;
    KeyState& after = it->second;
    after.running = false;
    if (after.generation != generation) {  // forgotten mid-round: drop the result
      if (!after.next) keys_.erase(it);
      else ready_.push_back(key);
      continue;
    }
    after.router_rate = std::move(rate);
    reading.round = after.latest ? after.latest->round + 1 : 1;
    after.latest = reading;
    if (after.next) {
      ready_.push_back(key);
      cv_.notify_one();
    }
    lock.unlock();
    on_reading_(key);
    lock.lock();
  }
}

LoadReading LoadScraper::RunRound(const LoadTargets& targets, CounterRate* rate) {
  LoadReading reading;
  if (!targets.prometheus_url.empty()) {
    auto qps = QueryPrometheus(targets.prometheus_url, targets.prometheus_query);
    if (qps.ok()) {
      reading.total_qps = *qps;
    } else {
      spdlog::warn("autoscaler prometheus {}: {}", targets.prometheus_url, std::string(qps.status().message()));
    }
  } else {
    const double now_s = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    rate->Retain(targets.router_urls);
    for (const auto& url : targets.router_urls) {
      auto body = HttpGet(url);
      if (!body.ok()) {
        spdlog::warn("autoscaler scrape: {}", std::string(body.status().message()));
        continue;
      }
      auto total = SumMetric(*body, kRouterRequestsTotal);
      if (auto r = rate->Observe(url, total.value_or(0), now_s)) reading.total_qps = reading.total_qps.value_or(0) + *r;
    }
  }
  double waiting = 0, kv = 0;
  int seen = 0;
  for (const auto& url : targets.leader_urls) {
    auto body = HttpGet(url);
    if (!body.ok()) continue;
    waiting += SumMetric(*body, kWorkerWaitingSequences).value_or(0);
    kv += SumMetric(*body, kWorkerKvCacheUsage).value_or(0);
    seen++;
  }
  if (seen > 0) {
    reading.total_waiting = waiting;
    reading.mean_kv_usage = kv / seen;
  }
  return reading;
}

}  // namespace shoal::op
