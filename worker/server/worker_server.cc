#include "worker/server/worker_server.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "grpcpp/health_check_service_interface.h"

namespace shoal::worker {

absl::StatusOr<std::unique_ptr<WorkerServer>> WorkerServer::Start(const WorkerServerOptions& options) {
  auto server = std::unique_ptr<WorkerServer>(new WorkerServer());
  server->host_ = options.host;
  server->metrics_ = std::make_shared<WorkerMetrics>();
  if (options.metrics_port >= 0) {
    auto endpoint = MetricsEndpoint::Start(options.host, options.metrics_port, server->metrics_);
    if (!endpoint.ok()) return endpoint.status();
    server->metrics_endpoint_ = *std::move(endpoint);
  }
  server->generation_ = std::make_unique<GenerationService>(server->metrics_.get());
  server->stats_ = std::make_unique<WorkerStatsService>(server->generation_.get());

  // The built-in grpc.health.v1 service; it must be enabled before the builder exists.
  grpc::EnableDefaultHealthCheckService(true);
  const std::string address = options.host.find(':') != std::string::npos
                                  ? fmt::format("[{}]:{}", options.host, options.port)
                                  : fmt::format("{}:{}", options.host, options.port);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &server->port_);
  builder.RegisterService(server->generation_.get());
  builder.RegisterService(server->stats_.get());
  for (grpc::Service* service : options.extra_services) builder.RegisterService(service);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(fmt::format("gRPC server cannot listen on {} (port in use?)", address));
  }
  server->server_->GetHealthCheckService()->SetServingStatus(false);
  return server;
}

WorkerServer::~WorkerServer() { Shutdown(std::chrono::milliseconds(0)); }

void WorkerServer::Serve(ModelRuntime* runtime) {
  runtime_ = runtime;
  WorkerMetrics* metrics = metrics_.get();
  runtime->engine().SetStepObserver([metrics](const EngineStats& stats) { metrics->ObserveStep(stats); });
  metrics_->SetStatsSource([runtime] { return runtime->engine().Stats(); });
  generation_->SetRuntime(runtime);
  server_->GetHealthCheckService()->SetServingStatus(true);
  spdlog::info("serving model={} path={} grpc_port={} metrics_port={}", runtime->served_name(), runtime->path(),
               port_, metrics_port());
}

void WorkerServer::SetServing(bool serving) {
  if (server_ != nullptr && !shut_down_) server_->GetHealthCheckService()->SetServingStatus(serving);
}

void WorkerServer::Shutdown(std::chrono::milliseconds grace) {
  if (shut_down_ || server_ == nullptr) return;
  shut_down_ = true;
  spdlog::info("shutdown begin grace_ms={}", grace.count());
  server_->GetHealthCheckService()->SetServingStatus(false);
  // Blocks until every call has finished; at the deadline gRPC cancels what is left,
  // which reaches Engine::Cancel through each stream's OnCancel.
  server_->Shutdown(std::chrono::system_clock::now() + grace);
  server_->Wait();
  if (runtime_ != nullptr) {
    runtime_->engine().SetStepObserver(nullptr);
    metrics_->SetStatsSource(nullptr);
  }
  spdlog::info("shutdown grpc_stopped");
  metrics_endpoint_.reset();
  spdlog::info("shutdown done");
}

}  // namespace shoal::worker
