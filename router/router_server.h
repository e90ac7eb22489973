#pragma once
// shoal-router's process in one object: the Balancer and UpstreamPool, the gRPC server
// (shoal.v1.Generation + grpc.health.v1), the Prometheus endpoint, and the
// OpenAI-compatible HTTP server (with /healthz and /readyz). Ports 0 pick free ones;
// the accessors say which.
#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "router/api_keys.h"
#include "router/balancer.h"
#include "router/generate_proxy.h"
#include "router/router_metrics.h"
#include "router/router_service.h"
#include "router/upstream_pool.h"

namespace shoal::router {

class OpenAiHttpServer;

struct RouterServerOptions {
  std::string host = "0.0.0.0";
  int grpc_port = 50051;
  int http_port = 8080;     // -1 = no HTTP server
  int metrics_port = 9090;  // -1 = no metrics endpoint
  UpstreamPoolOptions upstreams;
  BalancerOptions balancer;
  PrefixOptions prefix;
  int64_t default_completion_tokens = 256;
  std::string api_key_file;   // "" = no authentication
  std::string tls_cert_file;  // both set = TLS on the gRPC and HTTP ports
  std::string tls_key_file;
  // TLS to the groups: on when the CA file is set (upstreams.tls is filled from these).
  std::string upstream_tls_ca_file;
  std::string upstream_tls_cert_file;  // optional client certificate (mutual TLS)
  std::string upstream_tls_key_file;
  std::string upstream_tls_server_name;
  size_t max_http_body_bytes = 4 << 20;
};

class RouterServer {
 public:
  static absl::StatusOr<std::unique_ptr<RouterServer>> Start(const RouterServerOptions& options);
  ~RouterServer();

  // Graceful drain: readiness and gRPC health turn NOT_SERVING, no new calls are taken,
  // streams in flight get up to `grace` to finish and are then cancelled (upstream too).
  // Idempotent.
  void Shutdown(std::chrono::milliseconds grace);

  int grpc_port() const { return grpc_port_; }
  int http_port() const;
  int metrics_port() const;
  // Ready = not draining and at least one healthy group.
  bool Ready() const;
  RouterMetrics& metrics() { return *metrics_; }
  Balancer& balancer() { return *balancer_; }
  // A channel into this server's own gRPC service, without a socket (the HTTP API uses it).
  std::shared_ptr<grpc::Channel> InProcessChannel();

 private:
  RouterServer() = default;

  RouterServerOptions options_;
  ApiKeys api_keys_;
  std::unique_ptr<RouterMetrics> metrics_;
  std::unique_ptr<Balancer> balancer_;
  std::unique_ptr<UpstreamPool> pool_;
  std::unique_ptr<RouterCore> core_;
  std::unique_ptr<RouterService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<MetricsExposer> metrics_exposer_;
  std::unique_ptr<OpenAiHttpServer> http_;
  int grpc_port_ = 0;
  bool shut_down_ = false;
};

}  // namespace shoal::router
