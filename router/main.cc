// shoal-router: the front door. Discovers group leaders, proxies shoal.v1.Generation and
// the OpenAI-compatible HTTP API to them, exports Prometheus metrics. Prints one
// "listening grpc=... http=... metrics=..." line when it serves (scripts and tests wait
// for it), then serves until SIGTERM/SIGINT, when it drains for --shutdown-grace seconds.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>

#include "absl/synchronization/mutex.h"
#include "router/discovery.h"
#include "router/router_server.h"
#include "worker/common/log.h"

namespace {

int Run(int argc, char** argv) {
  using shoal::router::HostPort;
  shoal::router::RouterServerOptions options;
  std::vector<std::string> upstreams, dns_names;
  int health_interval_ms = 1000, health_timeout_ms = 1000, discovery_interval_ms = 5000;
  int max_queue_wait_ms = static_cast<int>(options.balancer.max_queue_wait.count());
  double grace_seconds = 20.0;
  std::string log_level = "info";

  CLI::App app{"shoal-router: load-balancing front door for shoal-worker groups"};
  app.add_option("--host", options.host, "address to listen on")->capture_default_str();
  app.add_option("--port", options.grpc_port, "gRPC port; 0 = pick a free one")->capture_default_str();
  app.add_option("--http-port", options.http_port, "OpenAI-compatible HTTP port; 0 = pick one, -1 = off")
      ->capture_default_str();
  app.add_option("--metrics-port", options.metrics_port, "Prometheus /metrics port; 0 = pick one, -1 = off")
      ->capture_default_str();
  app.add_option("--upstream", upstreams, "a group leader host:port (repeatable)");
  app.add_option("--upstream-file", options.upstreams.sources.upstream_files,
                 "file with one group leader host:port per line, re-read every discovery round");
  app.add_option("--upstream-dns", dns_names,
                 "name:port whose every address is a group leader (e.g. a headless Service), re-resolved every round");
  app.add_option("--discovery-interval-ms", discovery_interval_ms, "how often files and DNS are re-read")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--health-interval-ms", health_interval_ms, "how often each group is health-checked")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--health-timeout-ms", health_timeout_ms, "deadline of one health check")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--unhealthy-threshold", options.upstreams.unhealthy_threshold,
                 "failed checks in a row that take a group out of rotation")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--max-inflight", options.balancer.max_inflight, "requests in flight at most, in all")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--max-inflight-per-group", options.balancer.max_inflight_per_group,
                 "requests in flight at most on one group")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--max-queued", options.balancer.max_queued, "requests waiting for a slot at most; beyond: RESOURCE_EXHAUSTED")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--max-queue-wait-ms", max_queue_wait_ms, "longest wait for a slot")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--affinity-bonus", options.balancer.weights.affinity_bonus,
                 "load (in requests) a full prefix match outweighs; 0 = no prefix affinity")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--prefix-block-chars", options.prefix.block_chars, "prefix affinity block size in prompt bytes")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--prefix-max-blocks", options.prefix.max_blocks, "prefix blocks hashed at most")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--api-key-file", options.api_key_file, "file of accepted API keys, one a line (off when unset)");
  app.add_option("--tls-cert", options.tls_cert_file, "PEM certificate for TLS on the gRPC and HTTP ports");
  app.add_option("--tls-key", options.tls_key_file, "PEM private key for --tls-cert");
  app.add_option("--upstream-tls-ca", options.upstream_tls_ca_file,
                 "PEM CA bundle: dial the groups over TLS and verify their certificates with it");
  app.add_option("--upstream-tls-cert", options.upstream_tls_cert_file,
                 "PEM client certificate for groups that require mutual TLS");
  app.add_option("--upstream-tls-key", options.upstream_tls_key_file, "PEM private key for --upstream-tls-cert");
  app.add_option("--upstream-tls-server-name", options.upstream_tls_server_name,
                 "name to verify in the groups' certificates when it is not the dialled host");
  app.add_option("--max-body-bytes", options.max_http_body_bytes, "largest HTTP request body")->capture_default_str();
  app.add_option("--shutdown-grace", grace_seconds, "seconds streams get to finish on SIGTERM")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--log-level", log_level, "debug, info, warn or error")->capture_default_str()
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  CLI11_PARSE(app, argc, argv);
  shoal::InitLogging(log_level);
  // Debian builds Abseil with Mutex deadlock detection on: every lock gRPC takes then
  // updates a global lock graph, a few percent of the router's CPU per stream for a check
  // meant for debug builds.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  for (const auto& text : upstreams) {
    auto parsed = shoal::router::ParseHostPort(text);
    if (!parsed.ok()) {
      spdlog::error("--upstream: {}", std::string(parsed.status().message()));
      return 2;
    }
    options.upstreams.sources.static_upstreams.push_back(*parsed);
  }
  for (const auto& text : dns_names) {
    auto parsed = shoal::router::ParseHostPort(text);
    if (!parsed.ok()) {
      spdlog::error("--upstream-dns: {}", std::string(parsed.status().message()));
      return 2;
    }
    options.upstreams.sources.dns_names.push_back(*parsed);
  }
  options.upstreams.health_interval = std::chrono::milliseconds(health_interval_ms);
  options.upstreams.health_timeout = std::chrono::milliseconds(health_timeout_ms);
  options.upstreams.discovery_interval = std::chrono::milliseconds(discovery_interval_ms);
  options.balancer.max_queue_wait = std::chrono::milliseconds(max_queue_wait_ms);

  // SIGTERM/SIGINT are taken by sigwait, never by a handler: block them before any
  // thread exists so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // A client that hangs up mid-stream must not kill the process.
  signal(SIGPIPE, SIG_IGN);

  auto server = shoal::router::RouterServer::Start(options);
  if (!server.ok()) {
    spdlog::error("startup failed: {}", server.status().ToString());
    return 1;
  }
  std::fprintf(stderr, "listening grpc=%s:%d http=%s:%d metrics=%s:%d\n", options.host.c_str(),
               (*server)->grpc_port(), options.host.c_str(), (*server)->http_port(), options.host.c_str(),
               (*server)->metrics_port());
  std::fflush(stderr);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  spdlog::info("signal={} draining", signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
  (*server)->Shutdown(std::chrono::milliseconds(static_cast<int64_t>(grace_seconds * 1000)));
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }
