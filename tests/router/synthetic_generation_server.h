#pragma once
// SyntheticGenerationServer: a stand-in for a model behind shoal.v1.Generation, for router
// tests and benchmarks. It streams `max_tokens` (default `default_tokens`) tokens at a
// fixed interval — token i is id i with text "t<i> " — and answers grpc.health.v1,
// shoal.v1.Worker/GetStats (running = its open streams) and ListModels. It records what
// the router sent it (calls, cancellations, the deadline it saw), and can be told to fail
// before the first token or after N tokens, to exercise failover. With include_logprobs,
// token i has logprob -0.25 and its top_logprobs alternatives are i itself, then i+1001,
// i+1002, ... at -1.5, -2.5, ... (token text left empty, as a worker leaves it).
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "shoal/v1/generate.grpc.pb.h"
#include "shoal/v1/worker.grpc.pb.h"

namespace shoal::router::testing {

struct SyntheticOptions {
  std::string model = "synthetic";
  int default_tokens = 8;
  std::chrono::microseconds token_interval{std::chrono::milliseconds(5)};
  int fail_first_calls = 0;       // this many calls end UNAVAILABLE before any token
  int fail_after_tokens = -1;     // >= 0: every call ends UNAVAILABLE after this many tokens
  // The first this many tokens are "reasoning" ("r<i> "): in reasoning_text when the
  // request sets separate_reasoning, else in text.
  int reasoning_tokens = 0;
  // Both set: the port speaks TLS only.
  std::string tls_cert_pem;
  std::string tls_key_pem;
};

class SyntheticGenerationServer {
 public:
  // Listens on 127.0.0.1:`port` (0 = a free port).
  static std::unique_ptr<SyntheticGenerationServer> Start(SyntheticOptions options, int port = 0);
  ~SyntheticGenerationServer();
  void Shutdown();

  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  void SetServing(bool serving);

  int calls() const { return calls_.load(); }
  int cancelled() const { return cancelled_.load(); }
  int completed() const { return completed_.load(); }
  int active() const { return active_.load(); }
  // Seconds from the moment a call arrived to the deadline it carried; < 0 when none.
  double last_deadline_seconds() const;
  std::vector<std::string> prompts() const;

 private:
  class GenerationImpl;
  class WorkerImpl;
  SyntheticGenerationServer() = default;

  SyntheticOptions options_;
  std::unique_ptr<GenerationImpl> generation_;
  std::unique_ptr<WorkerImpl> worker_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::atomic<int> calls_{0}, cancelled_{0}, completed_{0}, active_{0};
  mutable std::mutex mu_;
  double last_deadline_seconds_ = -1;
  std::vector<std::string> prompts_;
};

}  // namespace shoal::router::testing
