// shoal-operator: reconciles DeepSeekDeployments. Serves /metrics and /healthz,/readyz
// at once, waits for the Lease (when --leader-elect), then runs the controller until
// SIGTERM/SIGINT (release the Lease, stop cleanly: exit 0) or until leadership is lost
// (exit 1: the pod restarts as a standby, never as a second leader).
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <thread>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "operator/group_reconciler.h"
#include "operator/health_server.h"
#include "operator/kube/kube_client.h"
#include "operator/kube/leader_election.h"
#include "worker/common/log.h"

namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"shoal-operator: runs DeepSeekDeployments on Kubernetes"};
  std::string kubeconfig, context, log_level = "info";
  std::string metrics_addr = ":8080", health_addr = ":8081";
  bool leader_elect = true;
  std::string lease_ns = EnvOr("POD_NAMESPACE", "");
  std::string lease_name = "shoal-operator";
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  std::string identity = EnvOr("POD_NAME", host);
  int lease_seconds = 15, renew_seconds = 10, retry_seconds = 2;
  int autoscale_interval = 5, resync_seconds = 300;
  shoal::op::ReconcilerOptions options;
  app.add_option("--kubeconfig", kubeconfig, "kubeconfig file; default $KUBECONFIG, in-cluster, ~/.kube/config");
  app.add_option("--context", context, "kubeconfig context; default the current one");
  app.add_option("--namespace", options.watch_namespace, "watch only this namespace; default all");
  app.add_option("--metrics-addr", metrics_addr, "listen address of /metrics (host:port or :port)")->capture_default_str();
  app.add_option("--health-addr", health_addr, "listen address of /healthz and /readyz")->capture_default_str();
  app.add_option("--leader-elect", leader_elect, "hold a Lease so only one replica reconciles")->capture_default_str();
  app.add_option("--leader-election-namespace", lease_ns, "namespace of the Lease; default $POD_NAMESPACE or the kubeconfig's");
  app.add_option("--leader-election-id", lease_name, "name of the Lease")->capture_default_str();
  app.add_option("--identity", identity, "this replica's name in the Lease; default $POD_NAME or the hostname");
  app.add_option("--lease-duration", lease_seconds, "seconds a Lease lasts without renewal")->capture_default_str();
  app.add_option("--renew-deadline", renew_seconds, "seconds the leader tries to renew before stepping down")->capture_default_str();
  app.add_option("--retry-period", retry_seconds, "seconds between Lease attempts")->capture_default_str();
  app.add_option("--workers", options.workers, "concurrent reconciles")->capture_default_str();
  app.add_option("--autoscale-interval", autoscale_interval, "seconds between metric scrapes per deployment")->capture_default_str();
  app.add_option("--resync", resync_seconds, "seconds between full reconciles of every deployment")->capture_default_str();
  app.add_option("--worker-image", options.defaults.worker_image, "worker image when spec.worker.image is empty")->capture_default_str();
  app.add_option("--router-image", options.defaults.router_image, "router image when spec.router.image is empty")->capture_default_str();
  app.add_option("--log-level", log_level, "debug, info, warn or error")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  shoal::InitLogging(log_level);
  options.autoscale_interval = std::chrono::seconds(autoscale_interval);
  options.resync = std::chrono::seconds(resync_seconds);

  auto config = shoal::kube::ResolveKubeConfig(kubeconfig, context);
  if (!config.ok()) {
    spdlog::error("kubeconfig: {}", std::string(config.status().message()));
    return 2;
  }
  if (lease_ns.empty()) lease_ns = config->default_namespace;
  auto client = shoal::kube::KubeClient::Create(*config);
  if (!client.ok()) {
    spdlog::error("{}", std::string(client.status().message()));
    return 2;
  }
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);

  shoal::op::OperatorMetrics metrics;
  shoal::op::GroupReconciler reconciler(client->get(), options, &metrics);
  std::atomic<bool> leading{false};
  auto server = shoal::op::HealthServer::Start(
      metrics_addr, health_addr, [&] { return !leading || reconciler.Synced(); },
      [&] {
        metrics.SetApiRequests(static_cast<double>((*client)->request_count()));
        return metrics.RenderText();
      });
  if (!server.ok()) {
    spdlog::error("{}", std::string(server.status().message()));
    return 2;
  }
  spdlog::info("shoal-operator server={} metrics_port={} health_port={} identity={}", config->server,
               (*server)->metrics_port(), (*server)->health_port(), identity);

  shoal::kube::LeaderElector elector(client->get(),
                                     {lease_ns, lease_name, identity, std::chrono::seconds(lease_seconds),
                                      std::chrono::seconds(renew_seconds), std::chrono::seconds(retry_seconds)});
  if (leader_elect && !elector.Acquire(g_stop)) return 0;  // stopped while standing by
  leading = true;
  metrics.SetLeader(true);
  // Renewal runs beside the controllers from the moment we lead (their first sync can
  // outlast the Lease). Losing it ends the process at once, as client-go's controllers
  // do: nothing queued may still be written by a replica that is no longer the leader.
  // The watchdog covers a renewal stuck in HTTP calls past the renew deadline.
  std::thread renewer, watchdog;
  if (leader_elect) {
    const auto lost = [](const char* why) {
      spdlog::error("shoal-operator lost leadership ({}); exiting", why);
      spdlog::default_logger()->flush();
      std::_Exit(1);
    };
    renewer = std::thread([&elector, lost] {
      if (!elector.HoldUntil(g_stop)) lost("renewal failed or another replica holds the Lease");
    });
    watchdog = std::thread([&elector, lost] {
      while (!g_stop) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        if (!g_stop && elector.SinceRenewal() > elector.options().renew_deadline) lost("no renewal within the renew deadline");
      }
    });
  }
  if (absl::Status started = reconciler.Start(); !started.ok()) {
    spdlog::error("controller: {}", std::string(started.message()));
    std::_Exit(1);  // the renewer thread must not outlive main's locals
  }
  spdlog::info("controller started identity={} namespace={}", identity,
               options.watch_namespace.empty() ? "<all>" : options.watch_namespace);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  // Controllers stop before the Lease goes: never two leaders acting at once.
  reconciler.Stop();
  if (renewer.joinable()) renewer.join();
  if (watchdog.joinable()) watchdog.join();
  if (leader_elect) elector.Release();
  metrics.SetLeader(false);
  spdlog::info("shoal-operator stopped (signal)");
  return 0;
}
