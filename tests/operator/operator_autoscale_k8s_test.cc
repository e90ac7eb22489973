// Autoscaling end to end: a real shoal-router in front of a synthetic worker group
// carries `shoal bench` load at rising then falling QPS; shoal-operator scrapes the
// router's /metrics and scales the DeepSeekDeployment (kwok runs the group pods).
#include <gtest/gtest.h>

#include "operator/api_types.h"
#include "tests/operator/deployment_builder.h"
#include "tests/operator/k8s_support.h"

namespace shoal::op {
namespace {

using nlohmann::json;
using testing::DeploymentBuilder;
using testing::OperatorProcess;
using testing::WaitFor;
using router::testing::ChildProcess;

class AutoscaleK8sTest : public testing::K8sTest {
 protected:
  int SpecReplicas() {
    auto dsd = Get(kDeepSeekDeployments, "ds");
    return dsd.ok() ? (*dsd)["spec"].value("replicas", 0) : -1;
  }
  std::unique_ptr<ChildProcess> Bench(int grpc_port, double qps, int seconds) {
    return std::make_unique<ChildProcess>(
        "bench", std::vector<std::string>{SHOAL_CLI_BIN, "bench", fmt::format("--server=127.0.0.1:{}", grpc_port),
                                          fmt::format("--qps={}", qps), fmt::format("--duration={}", seconds),
                                          "--concurrency=64", "--max-tokens=4", "--prompt-tokens=8"});
  }
};

TEST_F(AutoscaleK8sTest, ReplicasRiseWithQpsAndFallOnlyAfterTheStabilizationWindow) {
  ChildProcess worker("worker", {SHOAL_SYNTHETIC_WORKER_BIN, "--port=0", "--model=m", "--tokens=4",
                                 "--token-interval-us=1000"});
  auto worker_line = worker.WaitForLine("listening", std::chrono::seconds(20));
  ASSERT_TRUE(worker_line);
  const int worker_port = ChildProcess::PortOf(*worker_line, "grpc");
  ChildProcess router("router", {SHOAL_ROUTER_BIN, fmt::format("--upstream=127.0.0.1:{}", worker_port), "--port=0",
                                 "--http-port=-1", "--metrics-port=0", "--health-interval-ms=200"});
  auto router_line = router.WaitForLine("listening", std::chrono::seconds(20));
  ASSERT_TRUE(router_line);
  const int grpc_port = ChildProcess::PortOf(*router_line, "grpc");
  const int metrics_port = ChildProcess::PortOf(*router_line, "metrics");

  OperatorProcess op(ns_, "op-a", false, {"--autoscale-interval=2"});
  constexpr int kDownWindow = 20;
  DeploymentBuilder b("ds", ns_);
  b.Set("/spec/worker/image", "shoal-worker:test")
      .Set("/spec/autoscaling", json{{"enabled", true},
                                      {"minReplicas", 1},
                                      {"maxReplicas", 8},
                                      {"targetQPSPerReplica", 5},
                                      {"initialCooldownSeconds", 0},
                                      {"scaleUpStabilizationSeconds", 0},
                                      {"scaleDownStabilizationSeconds", kDownWindow}})
      .Set("/metadata/annotations",
           json{{"shoal.dev/router-metrics-endpoints", fmt::format("http://127.0.0.1:{}/metrics", metrics_port)}});
  json obj = b.Build();
  obj["metadata"].erase("uid");
  obj["metadata"].erase("generation");
  ASSERT_TRUE(client_->Post(kDeepSeekDeployments.CollectionPath(ns_), obj).ok());
  ASSERT_TRUE(WaitFor([&] { return Get(kube::resources::kStatefulSets, "ds-g0").ok(); }, std::chrono::seconds(30)));
  EXPECT_EQ(SpecReplicas(), 1);

  // Rising: ~12 QPS wants 3 groups, then ~30 QPS wants 6.
  auto low = Bench(grpc_port, 12, 25);
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(WaitFor([&] { return SpecReplicas() >= 3; }, std::chrono::seconds(30))) << SpecReplicas();
  const double up_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "scale_up_1_to_3_seconds: %.1f\n", up_seconds);
  ASSERT_TRUE(low->Wait(std::chrono::seconds(40)).has_value());
  auto high = Bench(grpc_port, 30, 20);
  start = std::chrono::steady_clock::now();
  ASSERT_TRUE(WaitFor([&] { return SpecReplicas() >= 5; }, std::chrono::seconds(30))) << SpecReplicas();
  std::fprintf(stderr, "scale_up_to_5_seconds: %.1f\n",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  EXPECT_TRUE(WaitFor([&] { return (*Get(kDeepSeekDeployments, "ds"))["status"].value("currentQPS", 0.0) > 15.0; },
                      std::chrono::seconds(10)))
      << (*Get(kDeepSeekDeployments, "ds"))["status"].dump();
  ASSERT_TRUE(high->Wait(std::chrono::seconds(40)).has_value());
  std::fprintf(stderr, "peak_replicas: %d\n", SpecReplicas());

  // Falling: the load is gone, but within the window the size stays at least what the
  // last seconds of load asked for (30 QPS / 5 → 6, Poisson noise aside: >= 5).
  const auto stopped = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - stopped < std::chrono::seconds(kDownWindow - 4)) {
    ASSERT_GE(SpecReplicas(), 5) << "scaled down inside the stabilization window";
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  ASSERT_TRUE(WaitFor([&] { return SpecReplicas() == 1; }, std::chrono::seconds(40))) << SpecReplicas();
  const double down_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - stopped).count();
  std::fprintf(stderr, "scale_down_after_load_seconds: %.1f (window %d)\n", down_seconds, kDownWindow);
  EXPECT_GE(down_seconds, kDownWindow - 2);
  auto dsd = *Get(kDeepSeekDeployments, "ds");
  bool scaling_active = false;
  for (const auto& c : dsd["status"]["conditions"]) {
    if (c["type"] == "ScalingActive") scaling_active = c["status"] == "True";
  }
  EXPECT_TRUE(scaling_active);
  EXPECT_FALSE(testing::Kubectl("get events -n " + ns_ + " --field-selector reason=Scaled -o name").empty());
  // The surplus groups went, highest first.
  EXPECT_TRUE(WaitFor([&] { return !Get(kube::resources::kStatefulSets, "ds-g1").ok(); }, std::chrono::seconds(20)));
}

}  // namespace
}  // namespace shoal::op
