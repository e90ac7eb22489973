#pragma once
// Where `shoal generate` and `shoal chat` get completions from: the model loaded in this
// process, or a running server over gRPC. Both take the wire request, so a request
// behaves the same either way (the in-process path goes through the server's own
// translation and validation).
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "shoal/v1/generate.grpc.pb.h"
#include "worker/server/model_runtime.h"

namespace shoal::cli {

using ResponseSink = std::function<void(const v1::GenerateResponse&)>;

class GenerationBackend {
 public:
  virtual ~GenerationBackend() = default;
  // Streams one request; `on_response` runs on the calling thread for every piece, in
  // order. The status is the call's gRPC status as an absl::Status (same codes).
  virtual absl::Status Generate(const v1::GenerateRequest& request, const ResponseSink& on_response) = 0;
};

// A model loaded into this process. `progress` hears the loading stages.
absl::StatusOr<std::unique_ptr<GenerationBackend>> LoadLocalBackend(
    const worker::ModelRuntimeOptions& options, const std::function<void(std::string_view)>& progress);

// A server at "host:port" (plaintext gRPC).
std::unique_ptr<GenerationBackend> ConnectRemoteBackend(const std::string& address);

absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace shoal::cli
