#pragma once
// The leader's network face: gRPC (Generation, Worker, grpc.health.v1) on one port and
// Prometheus /metrics on another. It starts before the model is loaded so that health
// checks answer NOT_SERVING during loading, and flips to SERVING when Serve() hands it a
// ready model.
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "worker/server/generation_service.h"
#include "worker/server/model_runtime.h"
#include "worker/server/worker_metrics.h"

namespace shoal::worker {

struct WorkerServerOptions {
  std::string host = "0.0.0.0";
  int port = 50051;          // 0 = pick a free port; port() says which
  int metrics_port = 9090;   // 0 = pick a free port; -1 = no metrics endpoint
  // More services on the same port (a multi-rank group's rendezvous); must outlive the server.
  std::vector<grpc::Service*> extra_services;
};

class WorkerServer {
 public:
  static absl::StatusOr<std::unique_ptr<WorkerServer>> Start(const WorkerServerOptions& options);
  ~WorkerServer();

  // Serves `runtime` from now on (it must outlive Shutdown): requests reach its engine,
  // engine steps feed the metrics, health turns SERVING.
  void Serve(ModelRuntime* runtime);
  // Graceful stop: health NOT_SERVING, no new calls, running streams get up to `grace`
  // to finish, then are cancelled (their engine requests too). Idempotent.
  void Shutdown(std::chrono::milliseconds grace);
  // grpc.health.v1 status while serving: a multi-rank group's leader turns NOT_SERVING the
  // moment the group breaks, before it drains and exits.
  void SetServing(bool serving);

  int port() const { return port_; }
  int metrics_port() const { return metrics_endpoint_ ? metrics_endpoint_->port() : -1; }
  const std::string& host() const { return host_; }
  WorkerMetrics& metrics() { return *metrics_; }

 private:
  WorkerServer() = default;

  std::string host_;
  int port_ = 0;
  std::shared_ptr<WorkerMetrics> metrics_;
  std::unique_ptr<MetricsEndpoint> metrics_endpoint_;
  std::unique_ptr<GenerationService> generation_;
  std::unique_ptr<WorkerStatsService> stats_;
  std::unique_ptr<grpc::Server> server_;
  ModelRuntime* runtime_ = nullptr;
  bool shut_down_ = false;
};

}  // namespace shoal::worker
