#pragma once
// shoal.v1.Generation on a group leader, on gRPC's callback API: a Generate stream holds
// no thread while it waits for the engine; the engine's callback queues each piece and
// the stream writes them one at a time.
#include <atomic>
#include <string>

#include "grpcpp/grpcpp.h"
#include "shoal/v1/generate.grpc.pb.h"
#include "shoal/v1/worker.grpc.pb.h"
#include "worker/server/model_runtime.h"
#include "worker/server/worker_metrics.h"

namespace shoal::worker {

class GenerationService final : public v1::Generation::CallbackService {
 public:
  // `metrics` may be null. The runtime arrives later (SetRuntime) so the server can answer
  // health checks while the model loads; until then Generate is UNAVAILABLE.
  explicit GenerationService(WorkerMetrics* metrics) : metrics_(metrics) {}

  void SetRuntime(ModelRuntime* runtime) { runtime_.store(runtime, std::memory_order_release); }
  ModelRuntime* runtime() const { return runtime_.load(std::memory_order_acquire); }
  WorkerMetrics* metrics() const { return metrics_; }

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* context,
                                                           const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context, const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;

  // The runtime serving `model` ("" = the default); NOT_FOUND lists the served names.
  absl::StatusOr<ModelRuntime*> FindModel(const std::string& model) const;

 private:
  std::atomic<ModelRuntime*> runtime_{nullptr};
  WorkerMetrics* metrics_;
};

// shoal.v1.Worker: what the router reads to score this group.
class WorkerStatsService final : public v1::Worker::CallbackService {
 public:
  explicit WorkerStatsService(const GenerationService* generation) : generation_(generation) {}
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context, const v1::GetStatsRequest* request,
                                     v1::WorkerStats* response) override;

 private:
  const GenerationService* generation_;
};

// A fresh request id, "req-" and 16 hex digits.
std::string NewRequestId();

}  // namespace shoal::worker
