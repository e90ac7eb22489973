// `shoal bench`: a gRPC load generator for a Generation server. Requests arrive as a
// Poisson process at --qps (0 = closed loop: every worker sends again as soon as it is
// answered), at most --concurrency in flight; prompts are random token ids so that no two
// requests share a prefix, and EOS is ignored so every request generates --max-tokens.
// Prints `name: value` lines on stdout.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "shoal/v1/generate.grpc.pb.h"
#include "tools/shoal/commands.h"
#include "worker/server/request_translation.h"

namespace shoal::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchFlags {
  std::string server;
  std::string model;
  double qps = 1.0;
  double duration_s = 10.0;
  int concurrency = 8;
  int prompt_tokens = 128;
  int max_tokens = 64;
  float temperature = 0.0f;
  uint64_t seed = 1;
};

struct RequestResult {
  grpc::StatusCode code = grpc::StatusCode::OK;
  double ttft_s = -1.0;   // send -> first token
  double tpot_s = -1.0;   // mean gap between later tokens
  int64_t completion_tokens = 0;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * (v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(v.size() - 1, lo + 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - lo);
}

RequestResult SendOne(v1::Generation::Stub& stub, const v1::GenerateRequest& request,
                      std::chrono::system_clock::time_point deadline) {
  RequestResult result;
  grpc::ClientContext context;
  context.set_deadline(deadline);
  const auto sent = Clock::now();
  Clock::time_point first, last;
  int64_t tokens = 0;
  auto reader = stub.Generate(&context, request);
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (response.token_ids_size() == 0) continue;
    const auto now = Clock::now();
    if (tokens == 0) first = now;
    last = now;
    tokens += response.token_ids_size();
  }
  grpc::Status status = reader->Finish();
  result.code = status.error_code();
  result.completion_tokens = tokens;
  if (tokens > 0) result.ttft_s = std::chrono::duration<double>(first - sent).count();
  if (tokens > 1) result.tpot_s = std::chrono::duration<double>(last - first).count() / (tokens - 1);
  return result;
}

int RunBench(const BenchFlags& f) {
  auto channel = grpc::CreateChannel(f.server, grpc::InsecureChannelCredentials());
  auto stub = v1::Generation::NewStub(channel);

  // The vocabulary size bounds the random prompt ids.
  v1::ListModelsResponse models;
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status st = stub->ListModels(&context, v1::ListModelsRequest(), &models);
    if (!st.ok() || models.models_size() == 0) {
      std::fprintf(stderr, "shoal bench: ListModels on %s failed: %s\n", f.server.c_str(),
                   st.ok() ? "no models" : st.error_message().c_str());
      return 1;
    }
  }
  const v1::ModelInfo& model = models.models(0);
  const int32_t vocab = std::max(1024, model.vocab_size());
  std::fprintf(stderr, "shoal bench: server=%s model=%s qps=%g duration_s=%g concurrency=%d prompt_tokens=%d "
               "max_tokens=%d\n", f.server.c_str(), model.name().c_str(), f.qps, f.duration_s, f.concurrency,
               f.prompt_tokens, f.max_tokens);

  // Arrival offsets from the start, drawn up front so every run with a seed is the same.
  std::mt19937_64 rng(f.seed);
  std::vector<double> arrivals;
  if (f.qps > 0) {
    std::exponential_distribution<double> gap(f.qps);
    for (double t = gap(rng); t < f.duration_s; t += gap(rng)) arrivals.push_back(t);
  }

  std::atomic<size_t> next{0};
  std::mutex mu;
  std::vector<RequestResult> results;
  const auto start = Clock::now();
  const auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(f.duration_s));
  const auto deadline = std::chrono::system_clock::now() +
                        std::chrono::seconds(static_cast<int64_t>(f.duration_s) + 120);

  auto worker = [&](int worker_index) {
    std::mt19937 prompt_rng(static_cast<uint32_t>(f.seed * 7919 + worker_index));
    std::uniform_int_distribution<int32_t> id(256, vocab - 256);
    while (true) {
      const size_t i = next.fetch_add(1);
      if (f.qps > 0) {
        if (i >= arrivals.size()) return;
        std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                  std::chrono::duration<double>(arrivals[i])));
      } else if (Clock::now() >= end) {
        return;
      }
      v1::GenerateRequest request;
      request.set_model(f.model.empty() ? model.name() : f.model);
      for (int k = 0; k < f.prompt_tokens; ++k) request.mutable_token_ids()->add_ids(id(prompt_rng));
      request.set_max_tokens(f.max_tokens);
      request.mutable_sampling()->set_temperature(f.temperature);
      request.mutable_stop()->set_ignore_eos(true);
      RequestResult r = SendOne(*stub, request, deadline);
      std::lock_guard<std::mutex> lock(mu);
      results.push_back(r);
    }
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < f.concurrency; ++w) threads.emplace_back(worker, w);
  for (std::thread& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();

  std::vector<double> ttft, tpot;
  std::map<std::string, int> errors;
  int64_t ok = 0, tokens = 0;
  for (const RequestResult& r : results) {
    tokens += r.completion_tokens;
    if (r.code != grpc::StatusCode::OK) {
      ++errors[std::string(worker::StatusCodeName(r.code))];
      continue;
    }
    ++ok;
    if (r.ttft_s >= 0) ttft.push_back(r.ttft_s * 1000);
    if (r.tpot_s >= 0) tpot.push_back(r.tpot_s * 1000);
  }
  std::printf("requests_sent: %zu\n", results.size());
  // Poisson arrivals: the rate actually offered in this run, next to the one asked for.
  if (f.qps > 0) std::printf("offered_qps: %.3f\n", arrivals.size() / f.duration_s);
  std::printf("requests_ok: %ld\n", static_cast<long>(ok));
  std::printf("requests_failed: %zu\n", results.size() - static_cast<size_t>(ok));
  for (const auto& [code, n] : errors) std::printf("errors_%s: %d\n", code.c_str(), n);
  std::printf("elapsed_s: %.2f\n", elapsed);
  std::printf("requests_per_s: %.3f\n", ok / elapsed);
  std::printf("output_tokens_per_s: %.1f\n", tokens / elapsed);
  for (double p : {50.0, 90.0, 99.0}) std::printf("ttft_p%.0f_ms: %.1f\n", p, Percentile(ttft, p));
  for (double p : {50.0, 90.0, 99.0}) std::printf("tpot_p%.0f_ms: %.2f\n", p, Percentile(tpot, p));
  std::fflush(stdout);
  return ok > 0 ? 0 : 1;
}

}  // namespace

void AddBenchCommand(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<BenchFlags>();
  CLI::App* cmd = app.add_subcommand("bench", "load a Generation server and report TTFT/TPOT percentiles");
  cmd->add_option("--server", f->server, "HOST:PORT of the server")->required();
  cmd->add_option("--model", f->model, "served model name; empty = the first one the server lists");
  cmd->add_option("--qps", f->qps, "mean arrival rate (Poisson); 0 = closed loop")->capture_default_str();
  cmd->add_option("--duration", f->duration_s, "seconds of arrivals")->capture_default_str();
  cmd->add_option("--concurrency", f->concurrency, "requests in flight at most")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--prompt-tokens", f->prompt_tokens, "random prompt length in tokens")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-tokens", f->max_tokens, "tokens generated per request")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--temperature", f->temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--seed", f->seed, "seed for arrivals and prompts")->capture_default_str();
  cmd->callback([f, exit_code] { *exit_code = RunBench(*f); });
}

}  // namespace shoal::cli
