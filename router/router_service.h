#pragma once
// shoal.v1.Generation on the router: Generate streams are proxied to group leaders
// (GenerateProxyCall); ListModels answers from the model lists the health rounds
// collected from the healthy groups.
#include "grpcpp/grpcpp.h"
#include "router/generate_proxy.h"
#include "shoal/v1/generate.grpc.pb.h"

namespace shoal::router {

class RouterService final : public v1::Generation::CallbackService {
 public:
  explicit RouterService(RouterCore* core) : core_(core) {}

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* context,
                                                           const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context, const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;

 private:
  RouterCore* core_;
};

}  // namespace shoal::router
