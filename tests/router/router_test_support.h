#pragma once
// Shared by the router's server tests: a client-side Generate that collects the stream.
#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "shoal/v1/generate.grpc.pb.h"

namespace shoal::router::testing {

struct StreamResult {
  grpc::Status status;
  std::vector<v1::GenerateResponse> responses;
  std::string text;
};

inline v1::GenerateRequest PromptRequest(const std::string& prompt, int max_tokens,
                                         const std::string& model = "synthetic") {
  v1::GenerateRequest request;
  request.set_model(model);
  request.set_prompt(prompt);
  request.set_max_tokens(max_tokens);
  return request;
}

inline StreamResult Generate(v1::Generation::Stub& stub, const v1::GenerateRequest& request,
                             std::optional<std::chrono::milliseconds> timeout = std::nullopt,
                             const std::string& authorization = "") {
  grpc::ClientContext context;
  if (timeout) context.set_deadline(std::chrono::system_clock::now() + *timeout);
  if (!authorization.empty()) context.AddMetadata("authorization", authorization);
  StreamResult result;
  auto reader = stub.Generate(&context, request);
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    result.text += response.text();
    result.responses.push_back(response);
  }
  result.status = reader->Finish();
  return result;
}

}  // namespace shoal::router::testing
