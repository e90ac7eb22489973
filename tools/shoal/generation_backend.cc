#include "tools/shoal/generation_backend.h"

#include <fmt/format.h>

#include <condition_variable>
#include <deque>
#include <mutex>

#include "worker/common/status_macros.h"
#include "worker/server/generation_service.h"
#include "worker/server/request_translation.h"

namespace shoal::cli {
namespace {

class LocalBackend final : public GenerationBackend {
 public:
  explicit LocalBackend(std::unique_ptr<worker::ModelRuntime> runtime) : runtime_(std::move(runtime)) {}

  // The engine calls back on its own thread; pieces are handed to the caller's thread
  // through a queue so the sink (usually a write to stdout) never stalls the engine.
  absl::Status Generate(const v1::GenerateRequest& request, const ResponseSink& on_response) override {
    ASSIGN_OR_RETURN(worker::TranslatedRequest translated, worker::TranslateGenerateRequest(request));
    if (!translated.model.empty() && translated.model != runtime_->served_name()) {
      return absl::NotFoundError(fmt::format("model \"{}\" is not loaded here; loaded: {}", translated.model,
                                             runtime_->served_name()));
    }
    if (translated.engine_request.request_id.empty()) {
      translated.engine_request.request_id = worker::NewRequestId();
    }
    ASSIGN_OR_RETURN(worker::GenerationRequest engine_request, runtime_->BuildRequest(std::move(translated)));

    struct Channel {
      std::mutex mu;
      std::condition_variable cv;
      std::deque<worker::GenerationOutput> pieces;
    };
    auto channel = std::make_shared<Channel>();
    RETURN_IF_ERROR(runtime_->engine().Submit(std::move(engine_request), [channel](worker::GenerationOutput out) {
      std::lock_guard<std::mutex> lock(channel->mu);
      channel->pieces.push_back(std::move(out));
      channel->cv.notify_one();
    }));
    while (true) {
      worker::GenerationOutput out;
      {
        std::unique_lock<std::mutex> lock(channel->mu);
        channel->cv.wait(lock, [&] { return !channel->pieces.empty(); });
        out = std::move(channel->pieces.front());
        channel->pieces.pop_front();
      }
      on_response(worker::ToProtoResponse(out));
      if (out.finish == worker::FinishReason::kError) return out.error;
      if (out.finish != worker::FinishReason::kNone) return absl::OkStatus();
    }
  }

 private:
  std::unique_ptr<worker::ModelRuntime> runtime_;
};

class RemoteBackend final : public GenerationBackend {
 public:
  explicit RemoteBackend(const std::string& address)
      : address_(address),
        stub_(v1::Generation::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))) {}

  absl::Status Generate(const v1::GenerateRequest& request, const ResponseSink& on_response) override {
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub_->Generate(&context, request);
    v1::GenerateResponse response;
    while (reader->Read(&response)) on_response(response);
    grpc::Status status = reader->Finish();
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
      return absl::UnavailableError(fmt::format("server {}: {}", address_, status.error_message()));
    }
    return FromGrpcStatus(status);
  }

 private:
  std::string address_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

absl::StatusOr<std::unique_ptr<GenerationBackend>> LoadLocalBackend(
    const worker::ModelRuntimeOptions& options, const std::function<void(std::string_view)>& progress) {
  ASSIGN_OR_RETURN(std::unique_ptr<worker::ModelRuntime> runtime, worker::ModelRuntime::Load(options, progress));
  return std::unique_ptr<GenerationBackend>(new LocalBackend(std::move(runtime)));
}

std::unique_ptr<GenerationBackend> ConnectRemoteBackend(const std::string& address) {
  return std::make_unique<RemoteBackend>(address);
}

}  // namespace shoal::cli
