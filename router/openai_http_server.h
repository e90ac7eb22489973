#pragma once
// The OpenAI-compatible HTTP API (cpp-httplib) on its own port, plus /healthz and
// /readyz. Each request becomes a shoal.v1.Generation call on the router's in-process
// channel, so HTTP traffic gets the same balancing, failover, shedding, auth (the
// Authorization header travels as metadata) and metrics as gRPC traffic.
//   GET  /v1/models
//   POST /v1/completions, /v1/chat/completions  (stream: true -> text/event-stream)
// Errors are OpenAI-shaped JSON bodies with 4xx/5xx codes (openai_translation.h).
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "shoal/v1/generate.grpc.pb.h"

namespace httplib {
class Server;
}

namespace shoal::router {

struct OpenAiHttpServerOptions {
  std::string host = "0.0.0.0";
  int port = 8080;  // 0 = pick a free one
  size_t max_body_bytes = 4 << 20;
  int threads = 64;  // a streaming response holds one while it lasts
  std::string tls_cert_file;
  std::string tls_key_file;
};

class OpenAiHttpServer {
 public:
  static absl::StatusOr<std::unique_ptr<OpenAiHttpServer>> Start(const OpenAiHttpServerOptions& options,
                                                                 std::shared_ptr<grpc::Channel> channel,
                                                                 std::function<bool()> ready);
  ~OpenAiHttpServer();
  void Stop();
  int port() const { return port_; }

 private:
  OpenAiHttpServer() = default;
  void Routes();

  OpenAiHttpServerOptions options_;
  std::unique_ptr<v1::Generation::Stub> stub_;
  std::function<bool()> ready_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace shoal::router
