#include "tests/router/synthetic_generation_server.h"

#include <thread>

#include "grpcpp/health_check_service_interface.h"

namespace shoal::router::testing {

class SyntheticGenerationServer::GenerationImpl final : public v1::Generation::Service {
 public:
  explicit GenerationImpl(SyntheticGenerationServer* owner) : owner_(owner) {}

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    SyntheticGenerationServer& s = *owner_;
    const int call_index = s.calls_.fetch_add(1);
    {
      std::lock_guard<std::mutex> lock(s.mu_);
      const auto deadline = context->deadline();
      s.last_deadline_seconds_ =
          deadline == std::chrono::system_clock::time_point::max()
              ? -1
              : std::chrono::duration<double>(deadline - std::chrono::system_clock::now()).count();
      s.prompts_.push_back(request->prompt());
    }
    if (!request->model().empty() && request->model() != s.options_.model) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown model " + request->model());
    }
    if (call_index < s.options_.fail_first_calls) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "synthetic failure before the first token");
    }
    s.active_.fetch_add(1);
    const int tokens = request->max_tokens() > 0 ? request->max_tokens() : s.options_.default_tokens;
    grpc::Status result = grpc::Status::OK;
    for (int i = 0; i < tokens; ++i) {
      std::this_thread::sleep_for(s.options_.token_interval);
      if (context->IsCancelled()) {
        s.cancelled_.fetch_add(1);
        result = grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
        break;
      }
      if (s.options_.fail_after_tokens >= 0 && i == s.options_.fail_after_tokens) {
        result = grpc::Status(grpc::StatusCode::UNAVAILABLE, "synthetic failure mid-stream");
        break;
      }
      v1::GenerateResponse response;
      response.set_request_id(request->request_id());
      response.add_token_ids(i);
      if (i < s.options_.reasoning_tokens) {
        const std::string thought = "r" + std::to_string(i) + " ";
        if (request->separate_reasoning()) {
          response.set_reasoning_text(thought);
        } else {
          response.set_text(thought);
        }
      } else {
        response.set_text("t" + std::to_string(i) + " ");
      }
      if (request->include_logprobs()) {
        v1::TokenLogprob* lp = response.add_logprobs();
        lp->set_token_id(i);
        lp->set_logprob(-0.25f);
        for (int k = 0; k < request->top_logprobs(); ++k) {
          v1::TopLogprob* top = lp->add_top();
          top->set_token_id(k == 0 ? i : i + 1000 + k);
          top->set_logprob(k == 0 ? -0.25f : -0.5f - static_cast<float>(k));
        }
      }
      if (i == tokens - 1) {
        response.set_finish_reason(v1::FINISH_REASON_LENGTH);
        response.mutable_usage()->set_prompt_tokens(static_cast<int32_t>(request->prompt().size() / 4));
        response.mutable_usage()->set_completion_tokens(tokens);
      }
      if (!writer->Write(response)) {
        s.cancelled_.fetch_add(1);
        result = grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
        break;
      }
    }
    s.active_.fetch_sub(1);
    if (result.ok()) s.completed_.fetch_add(1);
    return result;
  }

  grpc::Status ListModels(grpc::ServerContext*, const v1::ListModelsRequest*,
                          v1::ListModelsResponse* response) override {
    auto* m = response->add_models();
    m->set_name(owner_->options_.model);
    m->set_architecture("synthetic");
    m->set_max_model_len(4096);
    return grpc::Status::OK;
  }

 private:
  SyntheticGenerationServer* owner_;
};

class SyntheticGenerationServer::WorkerImpl final : public v1::Worker::Service {
 public:
  explicit WorkerImpl(SyntheticGenerationServer* owner) : owner_(owner) {}
  grpc::Status GetStats(grpc::ServerContext*, const v1::GetStatsRequest*, v1::WorkerStats* stats) override {
    stats->set_running_sequences(owner_->active_.load());
    return grpc::Status::OK;
  }

 private:
  SyntheticGenerationServer* owner_;
};

std::unique_ptr<SyntheticGenerationServer> SyntheticGenerationServer::Start(SyntheticOptions options, int port) {
  auto server = std::unique_ptr<SyntheticGenerationServer>(new SyntheticGenerationServer());
  server->options_ = std::move(options);
  server->generation_ = std::make_unique<GenerationImpl>(server.get());
  server->worker_ = std::make_unique<WorkerImpl>(server.get());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!server->options_.tls_cert_pem.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({server->options_.tls_key_pem, server->options_.tls_cert_pem});
    credentials = grpc::SslServerCredentials(ssl);
  }
  builder.AddListeningPort("127.0.0.1:" + std::to_string(port), credentials, &server->port_);
  builder.RegisterService(server->generation_.get());
  builder.RegisterService(server->worker_.get());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) return nullptr;
  server->server_->GetHealthCheckService()->SetServingStatus(true);
  return server;
}

SyntheticGenerationServer::~SyntheticGenerationServer() { Shutdown(); }

void SyntheticGenerationServer::Shutdown() {
  if (server_ == nullptr) return;
  server_->Shutdown(std::chrono::system_clock::now());
  server_->Wait();
  server_.reset();
}

void SyntheticGenerationServer::SetServing(bool serving) {
  if (server_) server_->GetHealthCheckService()->SetServingStatus(serving);
}

double SyntheticGenerationServer::last_deadline_seconds() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_deadline_seconds_;
}

std::vector<std::string> SyntheticGenerationServer::prompts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return prompts_;
}

}  // namespace shoal::router::testing
