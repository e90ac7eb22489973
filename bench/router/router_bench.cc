// router-bench: what the router costs. The same closed-loop load (C clients, each sending
// Generate requests of T tokens back to back) runs first straight at G synthetic groups
// (clients spread round-robin) and then through an in-process shoal-router in front of
// the same groups; prints both and ratio_router_vs_direct_* lines. Validates first that a
// routed stream carries exactly the tokens of a direct one.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "router/router_server.h"
#include "tests/router/router_test_support.h"
#include "tests/router/synthetic_generation_server.h"

namespace {

using shoal::router::testing::Generate;
using shoal::router::testing::PromptRequest;
using shoal::router::testing::SyntheticGenerationServer;

struct LoadResult {
  double requests_per_s = 0, tokens_per_s = 0, mean_ttft_ms = 0, p99_ttft_ms = 0;
  int errors = 0;
};

// Closed loop: each client thread sends its next request when the previous one ends.
LoadResult RunLoad(const std::vector<std::shared_ptr<grpc::Channel>>& channels, int clients, int tokens,
                   double seconds) {
  std::atomic<int64_t> requests{0}, generated{0};
  std::atomic<int> errors{0};
  std::vector<std::vector<double>> ttfts(clients);
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      auto stub = shoal::v1::Generation::NewStub(channels[c % channels.size()]);
      for (int i = 0; std::chrono::steady_clock::now() < end; ++i) {
        grpc::ClientContext context;
        const auto start = std::chrono::steady_clock::now();
        auto reader = stub->Generate(&context, PromptRequest("client " + std::to_string(c) + " " + std::to_string(i), tokens));
        shoal::v1::GenerateResponse response;
        int n = 0;
        while (reader->Read(&response)) {
          if (n == 0) {
            ttfts[c].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
          }
          n += response.token_ids_size();
        }
        if (!reader->Finish().ok()) {
          ++errors;
          continue;
        }
        ++requests;
        generated += n;
      }
    });
  }
  for (auto& t : threads) t.join();
  LoadResult r;
  r.requests_per_s = requests.load() / seconds;
  r.tokens_per_s = generated.load() / seconds;
  r.errors = errors.load();
  std::vector<double> all;
  for (auto& v : ttfts) all.insert(all.end(), v.begin(), v.end());
  if (!all.empty()) {
    std::sort(all.begin(), all.end());
    double sum = 0;
    for (double x : all) sum += x;
    r.mean_ttft_ms = sum / all.size();
    r.p99_ttft_ms = all[std::min(all.size() - 1, static_cast<size_t>(all.size() * 0.99))];
  }
  return r;
}

void Print(const char* name, const LoadResult& r) {
  std::printf("%s_requests_per_s: %.1f\n%s_tokens_per_s: %.0f\n%s_mean_ttft_ms: %.3f\n%s_p99_ttft_ms: %.3f\n%s_errors: %d\n",
              name, r.requests_per_s, name, r.tokens_per_s, name, r.mean_ttft_ms, name, r.p99_ttft_ms, name, r.errors);
}

}  // namespace

int main(int argc, char** argv) {
  int groups = 2, clients = 16, tokens = 64, token_interval_us = 1000;
  double seconds = 5;
  CLI::App app{"router-bench: shoal-router overhead against direct calls to the same synthetic groups"};
  app.add_option("--groups", groups)->capture_default_str();
  app.add_option("--clients", clients)->capture_default_str();
  app.add_option("--tokens", tokens, "tokens per request")->capture_default_str();
  app.add_option("--token-interval-us", token_interval_us, "synthetic group's time per token")->capture_default_str();
  app.add_option("--seconds", seconds, "per run")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);

  shoal::router::testing::SyntheticOptions synthetic;
  synthetic.token_interval = std::chrono::microseconds(token_interval_us);
  std::vector<std::unique_ptr<SyntheticGenerationServer>> servers;
  std::vector<std::shared_ptr<grpc::Channel>> direct;
  shoal::router::RouterServerOptions options;
  options.host = "127.0.0.1";
  options.grpc_port = 0;
  options.http_port = -1;
  options.metrics_port = -1;
  for (int g = 0; g < groups; ++g) {
    servers.push_back(SyntheticGenerationServer::Start(synthetic));
    direct.push_back(grpc::CreateChannel(servers.back()->address(), grpc::InsecureChannelCredentials()));
    options.upstreams.sources.static_upstreams.push_back({"127.0.0.1", servers.back()->port()});
  }
  auto router = shoal::router::RouterServer::Start(options);
  if (!router.ok()) {
    std::fprintf(stderr, "router: %s\n", router.status().ToString().c_str());
    return 1;
  }
  auto routed = grpc::CreateChannel("127.0.0.1:" + std::to_string((*router)->grpc_port()),
                                    grpc::InsecureChannelCredentials());

  // Validate: the routed stream is the direct stream.
  auto direct_stub = shoal::v1::Generation::NewStub(direct[0]);
  auto routed_stub = shoal::v1::Generation::NewStub(routed);
  const auto want = Generate(*direct_stub, PromptRequest("validate", 16));
  const auto got = Generate(*routed_stub, PromptRequest("validate", 16));
  if (!want.status.ok() || !got.status.ok() || want.text != got.text) {
    std::fprintf(stderr, "validation failed: direct '%s' routed '%s' (%s)\n", want.text.c_str(), got.text.c_str(),
                 got.status.error_message().c_str());
    return 1;
  }
  std::printf("groups: %d\nclients: %d\ntokens_per_request: %d\ntoken_interval_us: %d\n", groups, clients, tokens,
              token_interval_us);
  const LoadResult d = RunLoad(direct, clients, tokens, seconds);
  Print("direct", d);
  const LoadResult r = RunLoad({routed}, clients, tokens, seconds);
  Print("router", r);
  std::printf("ratio_router_vs_direct_tokens_per_s: %.3f\n", d.tokens_per_s > 0 ? r.tokens_per_s / d.tokens_per_s : 0);
  std::printf("router_added_mean_ttft_ms: %.3f\n", r.mean_ttft_ms - d.mean_ttft_ms);
  (*router)->Shutdown(std::chrono::milliseconds(0));
  return 0;
}
