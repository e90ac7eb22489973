// shoal-synthetic-worker: SyntheticGenerationServer as a process, for the router's
// multi-process tests and load benchmark (a group that can be SIGKILLed mid-stream).
// Prints "listening grpc=127.0.0.1:<port>" on stderr once it serves.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "tests/router/synthetic_generation_server.h"

namespace {

bool ReadFile(const std::string& path, std::string& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream buffer;
  buffer << in.rdbuf();
  out = buffer.str();
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  shoal::router::testing::SyntheticOptions options;
  int port = 0;
  int token_interval_us = 5000;
  std::string tls_cert, tls_key;
  CLI::App app{"shoal-synthetic-worker: streams synthetic tokens at a fixed rate over shoal.v1.Generation"};
  app.add_option("--port", port, "gRPC port; 0 = pick a free one");
  app.add_option("--model", options.model, "served model name");
  app.add_option("--tokens", options.default_tokens, "tokens per request when max_tokens is 0");
  app.add_option("--token-interval-us", token_interval_us, "microseconds between tokens");
  app.add_option("--reasoning-tokens", options.reasoning_tokens, "the first N tokens are reasoning");
  app.add_option("--tls-cert", tls_cert, "PEM certificate: serve TLS only");
  app.add_option("--tls-key", tls_key, "PEM private key for --tls-cert");
  CLI11_PARSE(app, argc, argv);
  options.token_interval = std::chrono::microseconds(token_interval_us);
  if (!tls_cert.empty() &&
      (!ReadFile(tls_cert, options.tls_cert_pem) || !ReadFile(tls_key, options.tls_key_pem))) {
    std::fprintf(stderr, "cannot read --tls-cert %s or --tls-key %s\n", tls_cert.c_str(), tls_key.c_str());
    return 2;
  }

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  auto server = shoal::router::testing::SyntheticGenerationServer::Start(options, port);
  if (server == nullptr) {
    std::fprintf(stderr, "cannot listen on port %d\n", port);
    return 1;
  }
  std::fprintf(stderr, "listening grpc=127.0.0.1:%d\n", server->port());
  std::fflush(stderr);
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  server->Shutdown();
  return 0;
}
