#include "router/router_service.h"

namespace shoal::router {

grpc::ServerWriteReactor<v1::GenerateResponse>* RouterService::Generate(grpc::CallbackServerContext* context,
                                                                        const v1::GenerateRequest* request) {
  return GenerateProxyCall::Start(core_, context, request);
}

grpc::ServerUnaryReactor* RouterService::ListModels(grpc::CallbackServerContext* context,
                                                    const v1::ListModelsRequest* request,
                                                    v1::ListModelsResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (const absl::Status auth = core_->api_keys->Check(AuthorizationOf(*context)); !auth.ok()) {
    reactor->Finish(ToGrpcStatus(auth));
    return reactor;
  }
  const auto models = core_->pool->Models();
  if (models.empty() && !core_->balancer->AnyHealthy()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "no healthy upstream group to list models from"));
    return reactor;
  }
  for (const auto& m : models) *response->add_models() = m;
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace shoal::router
