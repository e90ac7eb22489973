// LoadScraper against real HTTP endpoints (cpp-httplib servers on loopback) that the test
// can hold: a request for a round never waits on the network, rounds of one deployment
// never pile up behind a slow endpoint, and what a round reads becomes a reading.
#include "operator/load_scraper.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>

#include <fmt/format.h>

namespace shoal::op {
namespace {

using namespace std::chrono_literals;

// A /metrics endpoint whose answers the test can hold back and whose counter it sets.
class MetricsEndpoint {
 public:
  MetricsEndpoint() {
    server_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      std::unique_lock<std::mutex> lock(mu_);
      ++requests_;
      cv_.notify_all();
      cv_.wait(lock, [&] { return !held_; });
      res.set_content(body_, "text/plain");
    });
    server_.Get("/api/v1/query", [this](const httplib::Request& req, httplib::Response& res) {
      std::lock_guard<std::mutex> lock(mu_);
      last_query_ = req.get_param_value("query");
      res.set_content(R"({"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"42.5"]}]}})",
                      "application/json");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~MetricsEndpoint() {
    Release();
    server_.stop();
    thread_.join();
  }
  std::string url() const { return fmt::format("http://127.0.0.1:{}/metrics", port_); }
  std::string base() const { return fmt::format("http://127.0.0.1:{}", port_); }
  void Hold() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = true;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = false;
    cv_.notify_all();
  }
  void SetBody(std::string body) {
    std::lock_guard<std::mutex> lock(mu_);
    body_ = std::move(body);
  }
  // Waits until `n` requests have arrived (held or not); false after 10 s.
  bool AwaitRequests(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, 10s, [&] { return requests_ >= n; });
  }
  int requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  std::string last_query() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_query_;
  }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool held_ = false;
  int requests_ = 0;
  std::string body_;
  std::string last_query_;
};

// Counts finished rounds per the scraper's callback and waits for them.
class Readings {
 public:
  void Add() {
    std::lock_guard<std::mutex> lock(mu_);
    ++n_;
    cv_.notify_all();
  }
  bool Await(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, 10s, [&] { return n_ >= n; });
  }
  int count() {
    std::lock_guard<std::mutex> lock(mu_);
    return n_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_ = 0;
};

std::string RouterMetrics(double total) {
  return fmt::format("# TYPE shoal_router_requests_total counter\n"
                     "shoal_router_requests_total{{model=\"m\",code=\"OK\"}} {}\n",
                     total);
}

TEST(LoadScraper, RequestReturnsWhileTheEndpointIsHeld) {
  MetricsEndpoint router;
  router.SetBody(RouterMetrics(10));
  router.Hold();
  Readings readings;
  LoadScraper scraper([&](const std::string&) { readings.Add(); });
  // If Request waited on the network this would never return while the endpoint is held.
  auto requested = std::async(std::launch::async, [&] { scraper.Request("ns/a", {.router_urls = {router.url()}}); });
  ASSERT_EQ(requested.wait_for(10s), std::future_status::ready);
  ASSERT_TRUE(router.AwaitRequests(1));
  EXPECT_FALSE(scraper.Latest("ns/a").has_value());  // the round is still out
  router.Release();
  ASSERT_TRUE(readings.Await(1));
  auto first = scraper.Latest("ns/a");
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->round, 1u);
  EXPECT_FALSE(first->total_qps.has_value());  // one reading of a counter is no rate yet
}

TEST(LoadScraper, SecondRoundTurnsTheCounterIntoARate) {
  MetricsEndpoint router;
  router.SetBody(RouterMetrics(100));
  Readings readings;
  LoadScraper scraper([&](const std::string&) { readings.Add(); });
  scraper.Request("ns/a", {.router_urls = {router.url()}});
  ASSERT_TRUE(readings.Await(1));
  std::this_thread::sleep_for(200ms);
  router.SetBody(RouterMetrics(300));
  scraper.Request("ns/a", {.router_urls = {router.url()}});
  ASSERT_TRUE(readings.Await(2));
  auto second = scraper.Latest("ns/a");
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->round, 2u);
  ASSERT_TRUE(second->total_qps.has_value());
  EXPECT_GT(*second->total_qps, 0);
  EXPECT_LT(*second->total_qps, 200 / 0.2);  // 200 requests over at least the 200 ms slept
}

TEST(LoadScraper, RequestsDuringASlowRoundCoalesceIntoOneNextRound) {
  MetricsEndpoint router;
  router.SetBody(RouterMetrics(1));
  router.Hold();
  Readings readings;
  LoadScraper scraper([&](const std::string&) { readings.Add(); });
  scraper.Request("ns/a", {.router_urls = {router.url()}});
  ASSERT_TRUE(router.AwaitRequests(1));
  for (int i = 0; i < 20; ++i) scraper.Request("ns/a", {.router_urls = {router.url()}});
  router.Release();
  ASSERT_TRUE(readings.Await(2));
  std::this_thread::sleep_for(300ms);  // room for any further round, which must not come
  EXPECT_EQ(readings.count(), 2);
  EXPECT_EQ(router.requests(), 2);
}

TEST(LoadScraper, ADeadEndpointLeavesQpsUnknownAndOthersStillCount) {
  MetricsEndpoint leader;
  leader.SetBody(
      "shoal_worker_waiting_sequences 3\n"
      "shoal_worker_kv_cache_usage_ratio 0.5\n");
  Readings readings;
  LoadScraper scraper([&](const std::string&) { readings.Add(); });
  // Port 1 on loopback: connection refused at once.
  scraper.Request("ns/a", {.router_urls = {"http://127.0.0.1:1/metrics"}, .leader_urls = {leader.url(), leader.url()}});
  ASSERT_TRUE(readings.Await(1));
  auto reading = scraper.Latest("ns/a");
  ASSERT_TRUE(reading.has_value());
  EXPECT_FALSE(reading->total_qps.has_value());
  ASSERT_TRUE(reading->total_waiting.has_value());
  EXPECT_DOUBLE_EQ(*reading->total_waiting, 6);
  EXPECT_DOUBLE_EQ(*reading->mean_kv_usage, 0.5);
}

TEST(LoadScraper, PrometheusQueryGivesQpsInOneRound) {
  MetricsEndpoint prometheus;
  Readings readings;
  LoadScraper scraper([&](const std::string&) { readings.Add(); });
  scraper.Request("ns/a", {.prometheus_url = prometheus.base(), .prometheus_query = "sum(rate(x[1m]))"});
  ASSERT_TRUE(readings.Await(1));
  auto reading = scraper.Latest("ns/a");
  ASSERT_TRUE(reading && reading->total_qps);
  EXPECT_DOUBLE_EQ(*reading->total_qps, 42.5);
  EXPECT_EQ(prometheus.last_query(), "sum(rate(x[1m]))");
}

TEST(LoadScraper, ForgetDuringARoundDropsItsResult) {
  MetricsEndpoint router;
  router.SetBody(RouterMetrics(5));
  router.Hold();
  Readings readings;
  // One thread: the round of ns/b below runs only after the forgotten one has ended.
  LoadScraper scraper([&](const std::string&) { readings.Add(); }, /*threads=*/1);
  scraper.Request("ns/a", {.router_urls = {router.url()}});
  ASSERT_TRUE(router.AwaitRequests(1));
  scraper.Forget("ns/a");
  router.Release();
  scraper.Request("ns/b", {.router_urls = {router.url()}});
  ASSERT_TRUE(readings.Await(1));
  EXPECT_FALSE(scraper.Latest("ns/a").has_value());
  EXPECT_TRUE(scraper.Latest("ns/b").has_value());
}

TEST(LoadScraper, OneSlowDeploymentDoesNotHoldAnother) {
  MetricsEndpoint slow, fast;
  slow.SetBody(RouterMetrics(1));
  fast.SetBody(RouterMetrics(1));
  slow.Hold();
  Readings readings;
  LoadScraper scraper([&](const std::string&) { readings.Add(); }, /*threads=*/2);
  scraper.Request("ns/slow", {.router_urls = {slow.url()}});
  ASSERT_TRUE(slow.AwaitRequests(1));
  scraper.Request("ns/fast", {.router_urls = {fast.url()}});
  ASSERT_TRUE(readings.Await(1));
  EXPECT_TRUE(scraper.Latest("ns/fast").has_value());
  EXPECT_FALSE(scraper.Latest("ns/slow").has_value());
  slow.Release();
}

TEST(LoadScraper, AKeyForgottenAndAskedForAgainNeverRunsTwoRoundsAtOnce) {
  MetricsEndpoint x, y, a;
  x.SetBody(RouterMetrics(1));
  y.SetBody(RouterMetrics(1));
  a.SetBody(RouterMetrics(1));
  x.Hold();
  y.Hold();
  a.Hold();
  Readings readings;
  LoadScraper scraper([&](const std::string&) { readings.Add(); }, /*threads=*/2);
  scraper.Request("ns/x", {.router_urls = {x.url()}});
  scraper.Request("ns/y", {.router_urls = {y.url()}});
  ASSERT_TRUE(x.AwaitRequests(1));
  ASSERT_TRUE(y.AwaitRequests(1));  // both threads busy
  scraper.Request("ns/a", {.router_urls = {a.url()}});
  scraper.Forget("ns/a");
  scraper.Request("ns/a", {.router_urls = {a.url()}});  // queued twice now, once stale
  x.Release();
  ASSERT_TRUE(a.AwaitRequests(1));  // one thread runs ns/a's round, held at the endpoint
  scraper.Request("ns/a", {.router_urls = {a.url()}});  // the next round, queued behind it
  y.Release();                                           // the other thread meets the stale entry
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(a.requests(), 1) << "a second round of ns/a started while the first was running";
  a.Release();
  ASSERT_TRUE(readings.Await(4));  // x, y and two rounds of ns/a, one after the other
  EXPECT_EQ(a.requests(), 2);
}

}  // namespace
}  // namespace shoal::op
