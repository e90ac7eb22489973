// shoal-synthetic-worker: SyntheticGenerationServer as a process, for the router's
// multi-process tests and load benchmark (a group that can be SIGKILLed mid-stream).
// Prints "listening grpc=127.0.0.1:<port>" on stderr once it serves.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>

#include "tests/router/synthetic_generation_server.h"

int main(int argc, char** argv) {
  shoal::router::testing::SyntheticOptions options;
  int port = 0;
  int token_interval_us = 5000;
  CLI::App app{"shoal-synthetic-worker: streams synthetic tokens at a fixed rate over shoal.v1.Generation"};
  app.add_option("--port", port, "gRPC port; 0 = pick a free one");
  app.add_option("--model", options.model, "served model name");
  app.add_option("--tokens", options.default_tokens, "tokens per request when max_tokens is 0");
  app.add_option("--token-interval-us", token_interval_us, "microseconds between tokens");
  CLI11_PARSE(app, argc, argv);
  options.token_interval = std::chrono::microseconds(token_interval_us);

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
