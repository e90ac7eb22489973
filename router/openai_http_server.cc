#include "router/openai_http_server.h"

#include <fmt/format.h>
#include <httplib.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <random>

#include "router/openai_translation.h"

namespace shoal::router {
namespace {

constexpr char kJson[] = "application/json";

void SendError(httplib::Response& res, const HttpError& error) {
  res.status = error.http_status;
  res.set_content(error.body, kJson);
}

std::string NewCompletionId(OpenAiEndpoint endpoint) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{}-{:016x}", endpoint == OpenAiEndpoint::kCompletions ? "cmpl" : "chatcmpl", rng());
}

int64_t UnixSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// One Generate call on the in-process channel, shared by the handler and the streaming
// content provider that outlives it.
struct GenerateStream {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader;
  v1::GenerateResponse first;
  bool ended = false;  // reader->Finish() already returned OK (an empty stream)
  CompletionResult result;
};

void Accumulate(CompletionResult& result, const v1::GenerateResponse& response) {
  if (result.include_logprobs) AppendLogprobs(response, static_cast<int64_t>(result.text.size()), result.logprobs);
  result.text += response.text();
  result.reasoning_text += response.reasoning_text();
  if (response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) result.finish_reason = response.finish_reason();
  if (response.has_usage()) {
    result.has_usage = true;
    result.usage = response.usage();
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<OpenAiHttpServer>> OpenAiHttpServer::Start(const OpenAiHttpServerOptions& options,
                                                                          std::shared_ptr<grpc::Channel> channel,
                                                                          std::function<bool()> ready) {
  auto server = std::unique_ptr<OpenAiHttpServer>(new OpenAiHttpServer());
  server->options_ = options;
  server->stub_ = v1::Generation::NewStub(channel);
  server->ready_ = std::move(ready);
  if (!options.tls_cert_file.empty()) {
    auto tls = std::make_unique<httplib::SSLServer>(options.tls_cert_file.c_str(), options.tls_key_file.c_str());
    if (!tls->is_valid()) {
      return absl::InvalidArgumentError(fmt::format("HTTP TLS setup failed for certificate {} and key {}",
                                                    options.tls_cert_file, options.tls_key_file));
    }
    server->server_ = std::move(tls);
  } else {
    server->server_ = std::make_unique<httplib::Server>();
  }
  const int threads = options.threads;
  server->server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server->server_->set_payload_max_length(options.max_body_bytes);
  server->Routes();
  if (options.port == 0) {
    server->port_ = server->server_->bind_to_any_port(options.host);
  } else if (server->server_->bind_to_port(options.host, options.port)) {
    server->port_ = options.port;
  }
  if (server->port_ <= 0) {
    return absl::UnavailableError(fmt::format("HTTP server cannot listen on {}:{}", options.host, options.port));
  }
  httplib::Server* raw = server->server_.get();
  server->thread_ = std::thread([raw] { raw->listen_after_bind(); });
  // httplib's stop() before its loop has started is lost (the loop sets itself running),
  // so Start returns only once the loop runs.
  for (int i = 0; i < 5000 && !raw->is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return server;
}

OpenAiHttpServer::~OpenAiHttpServer() { Stop(); }

void OpenAiHttpServer::Stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

void OpenAiHttpServer::Routes() {
  httplib::Server& s = *server_;
  const size_t max_body = options_.max_body_bytes;
  // Errors httplib answers itself (404, 413, ...) get an OpenAI-shaped body too.
  s.set_error_handler([max_body](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 413) {
      SendError(res, OpenAiError(413, fmt::format("request body is larger than {} bytes", max_body),
                                 "invalid_request_error", "request_too_large"));
    } else if (res.status == 404) {
      SendError(res, OpenAiError(404, fmt::format("no route for {} {}", req.method, req.path),
                                 "invalid_request_error", "not_found"));
    } else {
      SendError(res, OpenAiError(res.status, fmt::format("HTTP {}", res.status), "invalid_request_error", ""));
    }
  });

  s.Get("/healthz", [](const httplib::Request&, httplib::Response& res) { res.set_content("ok\n", "text/plain"); });
  s.Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
    const bool ready = ready_();
    res.status = ready ? 200 : 503;
    res.set_content(ready ? "ready\n" : "not ready: draining or no healthy upstream group\n", "text/plain");
  });

  s.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
    grpc::ClientContext context;
    if (req.has_header("Authorization")) context.AddMetadata("authorization", req.get_header_value("Authorization"));
    v1::ListModelsRequest request;
    v1::ListModelsResponse response;
    const grpc::Status status = stub_->ListModels(&context, request, &response);
    if (!status.ok()) return SendError(res, OpenAiError(status));
    nlohmann::json data = nlohmann::json::array();
    for (const auto& m : response.models()) {
      data.push_back({{"id", m.name()}, {"object", "model"}, {"created", 0}, {"owned_by", "shoal"},
                      {"max_model_len", m.max_model_len()}});
    }
    res.set_content(nlohmann::json{{"object", "list"}, {"data", data}}.dump(), kJson);
  });

  auto completion = [this](OpenAiEndpoint endpoint) {
    return [this, endpoint](const httplib::Request& req, httplib::Response& res) {
      const std::string content_type = req.get_header_value("Content-Type");
      if (!content_type.empty() && content_type.find("json") == std::string::npos) {
        return SendError(res, OpenAiError(415, fmt::format("Content-Type must be application/json, got '{}'",
                                                           content_type),
                                          "invalid_request_error", "unsupported_media_type"));
      }
      auto parsed = ParseOpenAiRequest(endpoint, req.body);
      if (!parsed.ok()) {
        return SendError(res, OpenAiError(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                                       std::string(parsed.status().message()))));
      }
      auto stream = std::make_shared<GenerateStream>();
      if (req.has_header("Authorization")) {
        stream->context.AddMetadata("authorization", req.get_header_value("Authorization"));
      }
      stream->result.id = NewCompletionId(endpoint);
      stream->result.model = parsed->request.model();
      stream->result.created = UnixSeconds();
      stream->result.include_logprobs = parsed->request.include_logprobs();
      stream->reader = stub_->Generate(&stream->context, parsed->request);
      // The first message decides the HTTP status: an error before any token is a real
      // 4xx/5xx, not a 200 with an error event.
      if (!stream->reader->Read(&stream->first)) {
        const grpc::Status status = stream->reader->Finish();
        if (!status.ok()) return SendError(res, OpenAiError(status));
        stream->ended = true;
      }
      if (!parsed->stream) {
        Accumulate(stream->result, stream->first);
        v1::GenerateResponse response;
        while (!stream->ended && stream->reader->Read(&response)) Accumulate(stream->result, response);
        const grpc::Status status = stream->ended ? grpc::Status::OK : stream->reader->Finish();
        if (!status.ok()) return SendError(res, OpenAiError(status));
        res.set_content(CompletionResponseJson(endpoint, stream->result), kJson);
        return;
      }
      const bool include_usage = parsed->include_usage_in_stream;
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider(
          "text/event-stream", [stream, endpoint, include_usage](size_t, httplib::DataSink& sink) {
            auto send = [&](const std::string& json) {
              const std::string event = "data: " + json + "\n\n";
              return sink.write(event.data(), event.size());
            };
            CompletionResult delta = stream->result;
            bool first = true;
            bool client_gone = false;
            v1::GenerateResponse response = stream->first;
            do {
              delta.text = response.text();
              delta.reasoning_text = response.reasoning_text();
              delta.finish_reason = response.finish_reason();
              if (delta.include_logprobs) {
                delta.logprobs.clear();
                AppendLogprobs(response, static_cast<int64_t>(stream->result.text.size()), delta.logprobs);
              }
              Accumulate(stream->result, response);
              if (!send(CompletionChunkJson(endpoint, delta, first))) {
                client_gone = true;
                break;
              }
              first = false;
            } while (!stream->ended && stream->reader->Read(&response));
            if (client_gone) {
              // The HTTP client left: cancel the call so the group stops generating.
              stream->context.TryCancel();
              if (!stream->ended) {
                while (stream->reader->Read(&response)) {
                }
                (void)stream->reader->Finish();
              }
              return false;
            }
            const grpc::Status status = stream->ended ? grpc::Status::OK : stream->reader->Finish();
            if (!status.ok()) {
              send(OpenAiError(status).body);
            } else if (include_usage && stream->result.has_usage) {
              send(UsageChunkJson(endpoint, stream->result));
            }
            const std::string done = "data: [DONE]\n\n";
            sink.write(done.data(), done.size());
            sink.done();
            return true;
          });
    };
  };
  s.Post("/v1/completions", completion(OpenAiEndpoint::kCompletions));
  s.Post("/v1/chat/completions", completion(OpenAiEndpoint::kChatCompletions));
}

}  // namespace shoal::router
