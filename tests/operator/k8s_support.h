#pragma once
// Support for the operator's tests against the real control plane of tests/k8s/
// (etcd + kube-apiserver + controller-manager + scheduler + kwok): the kubeconfig it
// writes, a namespace per test, the CRD, and shoal-operator itself as a child process.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "operator/kube/kube_client.h"
#include "operator/kube/kube_config.h"
#include "operator/kube/resource_type.h"
#include "tests/router/child_process.h"

namespace shoal::op::testing {

inline std::string SourceDir() {
  const char* s = std::getenv("SHOAL_SOURCE_DIR");
  return s ? s : ".";
}

inline std::string K8sDir() {
  const char* d = std::getenv("SHOAL_K8S_DIR");
  return d ? d : "/tmp/shoal-k8s-" + std::to_string(getuid());
}

inline std::string KubeconfigPath() {
  const char* k = std::getenv("SHOAL_K8S_KUBECONFIG");
  return k ? k : K8sDir() + "/kubeconfig";
}

// Runs a shell command; returns its stdout, and its exit code in *rc.
inline std::string Shell(const std::string& command, int* rc = nullptr) {
  std::string out;
  FILE* p = popen(command.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  int status = pclose(p);
  if (rc) *rc = WEXITSTATUS(status);
  return out;
}

inline std::string Kubectl(const std::string& args, int* rc = nullptr) {
  return Shell("kubectl --kubeconfig " + KubeconfigPath() + " " + args + " 2>&1", rc);
}

// Polls `condition` every 200 ms until true or `timeout`.
inline bool WaitFor(const std::function<bool()>& condition, std::chrono::seconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return condition();
}

inline int FreePort() {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(s, reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);
  close(s);
  return port;
}

// shoal-operator as a child process watching one namespace.
class OperatorProcess {
 public:
  OperatorProcess(const std::string& ns, const std::string& identity, bool leader_elect = true,
                  std::vector<std::string> extra = {})
      : metrics_port_(FreePort()), health_port_(FreePort()) {
    // Flags as name -> value; `extra` ("--flag=value") overrides a default of the same name.
    std::map<std::string, std::string> flags = {
        {"--kubeconfig", KubeconfigPath()},
        {"--namespace", ns},
        {"--leader-election-namespace", ns},
        {"--leader-elect", leader_elect ? "true" : "false"},
        {"--identity", identity},
        {"--metrics-addr", "127.0.0.1:" + std::to_string(metrics_port_)},
        {"--health-addr", "127.0.0.1:" + std::to_string(health_port_)},
        {"--lease-duration", "6"},
        {"--renew-deadline", "4"},
        {"--retry-period", "1"},
        {"--autoscale-interval", "1"},
        {"--resync", "30"}};
    for (const auto& e : extra) {
      const size_t eq = e.find('=');
      flags[e.substr(0, eq)] = eq == std::string::npos ? "" : e.substr(eq + 1);
    }
    std::vector<std::string> argv = {SHOAL_OPERATOR_BIN};
    for (const auto& [flag, value] : flags) argv.push_back(flag + "=" + value);
    child_ = std::make_unique<router::testing::ChildProcess>(identity, argv);
  }
  ~OperatorProcess() { Stop(); }
  void Stop() {
    if (!child_) return;
    child_->Kill(SIGTERM);
    if (!child_->Wait(std::chrono::seconds(15))) child_->Kill(SIGKILL);
    child_.reset();
  }
  router::testing::ChildProcess& child() { return *child_; }
  int metrics_port() const { return metrics_port_; }
  int health_port() const { return health_port_; }
  std::string Metrics() const {
    return Shell("curl -s --max-time 2 http://127.0.0.1:" + std::to_string(metrics_port_) + "/metrics");
  }

 private:
  int metrics_port_;
  int health_port_;
  std::unique_ptr<router::testing::ChildProcess> child_;
};

// One fresh namespace per test, deleted afterwards; the CRD applied once.
class K8sTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto config = kube::LoadKubeconfig(KubeconfigPath());
    ASSERT_TRUE(config.ok()) << "no control plane: " << config.status()
                             << " (run tests/k8s/install.sh && tests/k8s/control_plane.sh start)";
    auto client = kube::KubeClient::Create(*config);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(*client);
    ASSERT_TRUE(client_->Get("/readyz").ok() || client_->Get("/version").ok()) << "API server not answering";
    int rc = 0;
    const char* crd = std::getenv("SHOAL_OPERATOR_CRD");  // another copy of the CRD, when testing one
    std::string out = Kubectl("apply --server-side --force-conflicts -f " +
                                  (crd ? std::string(crd) : SourceDir() + "/charts/shoal/crds/deepseekdeployments.yaml"),
                              &rc);
    ASSERT_EQ(rc, 0) << out;
    Kubectl("wait --for=condition=Established --timeout=30s crd/deepseekdeployments.shoal.dev");
    std::string test = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (auto& c : test) c = std::tolower(static_cast<unsigned char>(c));
    std::mt19937 rng(std::random_device{}());
    ns_ = "op-" + test.substr(0, 40) + "-" + std::to_string(rng() % 100000);
    auto created = client_->Post("/api/v1/namespaces", {{"apiVersion", "v1"}, {"kind", "Namespace"},
                                                        {"metadata", {{"name", ns_}}}});
    ASSERT_TRUE(created.ok()) << created.status();
  }
  void TearDown() override {
    if (client_ && !ns_.empty() && !std::getenv("SHOAL_K8S_KEEP_NAMESPACES")) {
      (void)client_->Delete("/api/v1/namespaces/" + ns_);
    }
  }

  absl::StatusOr<nlohmann::json> Get(const kube::ResourceType& type, const std::string& name) {
    return client_->Get(type.ObjectPath(ns_, name));
  }
  std::vector<nlohmann::json> List(const kube::ResourceType& type, const std::string& selector) {
    auto list = client_->Get(type.CollectionPath(ns_) + "?labelSelector=" + kube::UrlEncode(selector));
    std::vector<nlohmann::json> out;
    if (list.ok()) {
      for (const auto& item : (*list)["items"]) out.push_back(item);
    }
    return out;
  }

  std::unique_ptr<kube::KubeClient> client_;
  std::string ns_;
};

}  // namespace shoal::op::testing
