// The Kubernetes client's pure parts: kubeconfig parsing, error mapping, paths, the
// work queue's semantics, and the metrics text parser the autoscaler reads.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "absl/strings/escaping.h"
#include "operator/health_server.h"
#include "operator/kube/kube_client.h"
#include "operator/kube/kube_config.h"
#include "operator/kube/resource_type.h"
#include "operator/kube/work_queue.h"
#include "operator/metrics_scraper.h"

namespace shoal {
namespace {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/shoal-kube-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string Write(const std::string& name, const std::string& text) const {
    std::string p = path_ + "/" + name;
    std::ofstream(p) << text;
    return p;
  }

 private:
  std::string path_;
};

TEST(LoadKubeconfig, ReadsCurrentContextTokenAndInlineCa) {
  TempDir dir;
  const std::string ca = "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n";
  std::string path = dir.Write("config", R"(apiVersion: v1
kind: Config
current-context: dev
clusters:
- name: other
  cluster: {server: "https://other:1"}
- name: local
  cluster:
    server: https://127.0.0.1:6443/
    certificate-authority-data: )" + absl::Base64Escape(ca) + R"(
contexts:
- name: prod
  context: {cluster: other, user: nobody}
- name: dev
  context: {cluster: local, user: admin, namespace: models}
users:
- name: admin
  user: {token: secret-token}
)");
  auto config = kube::LoadKubeconfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->server, "https://127.0.0.1:6443");
  EXPECT_EQ(config->bearer_token, "secret-token");
  EXPECT_EQ(config->ca_pem, ca);
  EXPECT_EQ(config->default_namespace, "models");
  auto prod = kube::LoadKubeconfig(path, "prod");
  ASSERT_FALSE(prod.ok());
  EXPECT_NE(std::string(prod.status().message()).find("user \"nobody\" not found"), std::string::npos);
}

TEST(LoadKubeconfig, ClientCertificateFilesResolveAgainstTheConfigDirectory) {
  TempDir dir;
  dir.Write("client.crt", "CERT");
  dir.Write("client.key", "KEY");
  std::string path = dir.Write("config", R"(current-context: c
clusters: [{name: k, cluster: {server: "https://k:443", insecure-skip-tls-verify: true}}]
contexts: [{name: c, context: {cluster: k, user: u}}]
users: [{name: u, user: {client-certificate: client.crt, client-key: client.key}}]
)");
  auto config = kube::LoadKubeconfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->client_cert_pem, "CERT");
  EXPECT_EQ(config->client_key_pem, "KEY");
  EXPECT_TRUE(config->insecure_skip_tls_verify);
}

TEST(LoadKubeconfig, MissingContextIsNamed) {
  TempDir dir;
  std::string path = dir.Write("config", "current-context: gone\ncontexts: []\n");
  auto config = kube::LoadKubeconfig(path);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(std::string(config.status().message()).find("context \"gone\" not found"), std::string::npos);
}

TEST(InClusterConfig, ReadsServiceAccountFiles) {
  TempDir dir;
  dir.Write("token", "tok\n");
  dir.Write("ca.crt", "CA");
  std::string ns_file = dir.Write("namespace", "shoal-system");
  setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1", 1);
  setenv("KUBERNETES_SERVICE_PORT", "443", 1);
  auto config = kube::InClusterConfig(std::filesystem::path(ns_file).parent_path().string());
  unsetenv("KUBERNETES_SERVICE_HOST");
  unsetenv("KUBERNETES_SERVICE_PORT");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->server, "https://10.0.0.1:443");
  EXPECT_EQ(config->ca_pem, "CA");
  EXPECT_EQ(config->default_namespace, "shoal-system");
  EXPECT_FALSE(config->token_file.empty());
}

TEST(StatusFromResponse, CarriesTheApiServerMessageAndCode) {
  auto s = kube::StatusFromResponse(
      404, "GET /api/v1/namespaces/x/pods/p",
      R"({"kind":"Status","status":"Failure","message":"pods \"p\" not found","reason":"NotFound","code":404})");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(kube::IsHttpNotFound(s));
  EXPECT_NE(std::string(s.message()).find("pods \"p\" not found"), std::string::npos);
  auto gone = kube::StatusFromResponse(200, "WATCH pods", R"({"kind":"Status","code":410,"reason":"Expired","message":"too old resource version"})");
  EXPECT_TRUE(kube::IsGone(gone));
  EXPECT_EQ(kube::StatusFromResponse(409, "PUT x", "{}").code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(kube::HttpCodeOf(absl::UnavailableError("x")), 0);
}

TEST(ResourceType, BuildsCorePathsAndGroupPaths) {
  EXPECT_EQ(kube::resources::kPods.ObjectPath("ns", "p"), "/api/v1/namespaces/ns/pods/p");
  EXPECT_EQ(kube::resources::kStatefulSets.CollectionPath(""), "/apis/apps/v1/statefulsets");
  EXPECT_EQ(kube::resources::kLeases.ObjectPath("kube-system", "l"),
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/l");
  EXPECT_EQ(kube::UrlEncode("a=b,c"), "a%3Db%2Cc");
}

TEST(WorkQueue, DeduplicatesQueuedKeys) {
  kube::WorkQueue q;
  q.Add("a");
  q.Add("b");
  q.Add("a");
  EXPECT_EQ(q.Len(), 2u);
  EXPECT_EQ(*q.Get(), "a");
  EXPECT_EQ(*q.Get(), "b");
}

TEST(WorkQueue, KeyAddedWhileProcessingComesBackAfterDone) {
  kube::WorkQueue q;
  q.Add("a");
  auto key = q.Get();
  q.Add("a");
  EXPECT_EQ(q.Len(), 0u);  // never handed to a second worker while in flight
  q.Done(*key);
  EXPECT_EQ(q.Len(), 1u);
  EXPECT_EQ(*q.Get(), "a");
}

TEST(WorkQueue, PerKeyBackoffDoublesAndForgetResets) {
  kube::WorkQueueOptions options;
  options.base_delay = std::chrono::milliseconds(10);
  options.max_delay = std::chrono::milliseconds(50);
  kube::WorkQueue q(options);
  EXPECT_EQ(q.NextDelay("k").count(), 10);
  q.AddRateLimited("k");
  EXPECT_EQ(q.NextDelay("k").count(), 20);
  q.AddRateLimited("k");
  q.AddRateLimited("k");
  EXPECT_EQ(q.NextDelay("k").count(), 50);  // capped
  EXPECT_EQ(q.NumRequeues("k"), 3);
  q.Forget("k");
  EXPECT_EQ(q.NextDelay("k").count(), 10);
}

TEST(WorkQueue, AddAfterDeliversOnlyWhenDue) {
  kube::WorkQueue q;
  const auto start = std::chrono::steady_clock::now();
  q.AddAfter("late", std::chrono::milliseconds(80));
  q.AddAfter("early", std::chrono::milliseconds(20));
  EXPECT_EQ(*q.Get(), "early");
  EXPECT_EQ(*q.Get(), "late");
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(80));
}

TEST(WorkQueue, ShutDownWakesWaitingWorkers) {
  kube::WorkQueue q;
  std::thread worker([&] { EXPECT_FALSE(q.Get().has_value()); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  q.ShutDown();
  worker.join();
}

TEST(SumMetric, SumsEveryLabelSetOfOneFamily) {
  const std::string text = R"(# HELP shoal_router_requests_total Requests
# TYPE shoal_router_requests_total counter
shoal_router_requests_total{model="m",code="OK"} 40
shoal_router_requests_total{model="a}b",code="UNAVAILABLE"} 2
shoal_router_requests_total_extra 100
shoal_router_inflight_requests 3
)";
  EXPECT_DOUBLE_EQ(*op::SumMetric(text, "shoal_router_requests_total"), 42);
  EXPECT_DOUBLE_EQ(*op::SumMetric(text, "shoal_router_inflight_requests"), 3);
  EXPECT_FALSE(op::SumMetric(text, "shoal_worker_kv_cache_usage_ratio").has_value());
}

TEST(CounterRate, RateNeedsTwoReadingsAndSurvivesResets) {
  op::CounterRate rate;
  EXPECT_FALSE(rate.Observe("r1", 100, 10).has_value());
  EXPECT_DOUBLE_EQ(*rate.Observe("r1", 150, 15), 10);
  EXPECT_DOUBLE_EQ(*rate.Observe("r1", 20, 20), 4);  // restarted router: counts from zero
  rate.Retain({});
  EXPECT_FALSE(rate.Observe("r1", 30, 25).has_value());
}

TEST(ParseListenAddress, AcceptsPortOnlyAndHostPort) {
  EXPECT_EQ(*op::ParseListenAddress(":8080"), std::make_pair(std::string("0.0.0.0"), 8080));
  EXPECT_EQ(*op::ParseListenAddress("127.0.0.1:0"), std::make_pair(std::string("127.0.0.1"), 0));
  EXPECT_FALSE(op::ParseListenAddress("8080").ok());
  EXPECT_FALSE(op::ParseListenAddress(":x").ok());
}

}  // namespace
}  // namespace shoal
