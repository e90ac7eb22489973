#include "operator/autoscaler.h"

#include <gtest/gtest.h>

namespace shoal::op {
namespace {

AutoscalingSpec Spec(int min = 1, int max = 8, double qps = 5, int up = 0, int down = 300) {
  AutoscalingSpec s;
  s.enabled = true;
  s.min_replicas = min;
  s.max_replicas = max;
  s.target_qps_per_replica = qps;
  s.scale_up_stabilization_seconds = up;
  s.scale_down_stabilization_seconds = down;
  return s;
}

ScalingMetrics Qps(double qps, int counted = 1) {
  ScalingMetrics m;
  m.total_qps = qps;
  m.counted_groups = counted;
  return m;
}

struct Row {
  const char* name;
  AutoscalingSpec spec;
  int current;
  ScalingMetrics metrics;
  int desired;
  bool limited;
};

TEST(DecideScale, SingleDecisionTable) {
  ScalingMetrics queue = Qps(2, 2);
  queue.total_waiting = 30;
  AutoscalingSpec queue_spec = Spec();
  queue_spec.target_queue_depth_per_replica = 5;
  ScalingMetrics kv = Qps(0.1, 2);
  kv.mean_kv_usage = 0.9;
  AutoscalingSpec kv_spec = Spec();
  kv_spec.target_kv_cache_utilization = 0.6;
  AutoscalingSpec qps_off = Spec(1, 8, 0);
  qps_off.target_kv_cache_utilization = 0.5;
  const Row rows[] = {
      {"QpsOverTargetScalesUp", Spec(1, 16), 1, Qps(42), 9, false},
      {"ExactTargetKeeps", Spec(), 4, Qps(20), 4, false},
      {"WithinTenPercentKeeps", Spec(), 2, Qps(10.9), 2, false},
      {"JustOverToleranceMoves", Spec(), 2, Qps(11.2), 3, false},
      {"ClampedToMax", Spec(1, 8), 2, Qps(100), 8, true},
      {"ZeroQpsGoesToMinAfterNoWindow", Spec(1, 8, 5, 0, 0), 3, Qps(0), 1, true},
      {"MinZeroAllowsZero", Spec(0, 8, 5, 0, 0), 1, Qps(0), 0, false},
      {"QueueDepthTriggerWinsWhenHigher", queue_spec, 2, queue, 6, false},
      {"KvCacheTriggerUsesUtilizationRatio", kv_spec, 2, kv, 3, false},
      {"NoMetricsHolds", Spec(), 3, ScalingMetrics{}, 3, false},
      {"DisabledTriggerIgnored", qps_off, 2, Qps(1000, 2), 2, false},
  };
  for (const auto& row : rows) {
    SCOPED_TRACE(row.name);
    std::deque<Recommendation> history;
    auto d = DecideScale(row.spec, row.current, row.metrics, 1000, &history);
    EXPECT_EQ(d.desired, row.desired) << d.reason;
    EXPECT_EQ(d.limited, row.limited) << d.reason;
  }
}

TEST(DecideScale, ScaleDownWaitsForTheWholeWindow) {
  std::deque<Recommendation> history;
  auto spec = Spec(1, 8, 5, 0, 300);
  EXPECT_EQ(DecideScale(spec, 6, Qps(30), 0, &history).desired, 6);
  EXPECT_EQ(DecideScale(spec, 6, Qps(10), 100, &history).desired, 6);  // 6 still in the window
  EXPECT_EQ(DecideScale(spec, 6, Qps(10), 299, &history).desired, 6);
  EXPECT_EQ(DecideScale(spec, 6, Qps(10), 301, &history).desired, 2);  // t=0 left the window
}

TEST(DecideScale, ScaleDownGoesToHighestRecommendationInWindow) {
  std::deque<Recommendation> history;
  auto spec = Spec(1, 8, 5, 0, 60);
  DecideScale(spec, 8, Qps(40), 0, &history);
  DecideScale(spec, 8, Qps(20), 30, &history);  // 4
  auto d = DecideScale(spec, 8, Qps(5), 61, &history);  // window [1, 61]: 4 and 1
  EXPECT_EQ(d.desired, 4);
}

TEST(DecideScale, ScaleUpStabilizationIgnoresBriefSpikes) {
  std::deque<Recommendation> history;
  auto spec = Spec(1, 8, 5, 60, 300);
  EXPECT_EQ(DecideScale(spec, 2, Qps(10), 0, &history).desired, 2);
  EXPECT_EQ(DecideScale(spec, 2, Qps(30), 10, &history).desired, 2);  // lowest in window is 2
  EXPECT_EQ(DecideScale(spec, 2, Qps(30), 61, &history).desired, 6);  // t=0 left the window
}

TEST(DecideScale, ScaleUpIsImmediateWithoutWindow) {
  std::deque<Recommendation> history;
  auto spec = Spec(1, 8, 5, 0, 300);
  EXPECT_EQ(DecideScale(spec, 1, Qps(2), 0, &history).desired, 1);
  EXPECT_EQ(DecideScale(spec, 1, Qps(24), 5, &history).desired, 5);
}

TEST(DecideScale, LoadingGroupsHoldScaleDown) {
  std::deque<Recommendation> history;
  auto spec = Spec(1, 8, 5, 0, 0);
  ScalingMetrics m = Qps(1);
  m.loading_groups = 1;
  auto d = DecideScale(spec, 3, m, 0, &history);
  EXPECT_EQ(d.desired, 3);
  EXPECT_NE(d.reason.find("load"), std::string::npos);
}

TEST(DecideScale, HistoryIsBoundedByTheLongestWindow) {
  std::deque<Recommendation> history;
  auto spec = Spec(1, 8, 5, 10, 20);
  for (int t = 0; t < 1000; ++t) DecideScale(spec, 2, Qps(10), t, &history);
  EXPECT_LE(history.size(), 21u);
}

}  // namespace
}  // namespace shoal::op
