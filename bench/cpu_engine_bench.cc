// CPU engine throughput on a GGUF, through the real serving path (Engine: scheduler,
// paged KV cache, sampler), with the workload bench/peer/llamacpp_peer.py runs on
// llama.cpp: prompt tokens/s for one long prompt, decode tokens/s at batch 1, and
// aggregate tokens/s for N concurrent greedy streams. Prints `name: value` lines and the
// process's peak RSS next to the model file size and the KV budget.
//
//   cpu-engine-bench --model FILE.gguf --threads 2
#include <sys/stat.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "worker/common/log.h"
#include "worker/engine/engine.h"
#include "worker/kernels/cpu/thread_pool.h"
#include "worker/model/loaded_model.h"
#include "worker/models/causal_lm.h"
#include "worker/tokenizer/tokenizer.h"

namespace {

using shoal::worker::Engine;
using shoal::worker::GenerationOutput;
using shoal::worker::GenerationRequest;
using Clock = std::chrono::steady_clock;

double PeakRssMb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return 0;
}

// Runs `requests` concurrently to completion; returns, per request, the times of its
// first and last token.
struct Timing {
  Clock::time_point submit, first, last;
  int tokens = 0;
};

std::vector<Timing> RunAll(Engine& engine, std::vector<GenerationRequest> requests) {
  std::mutex mu;
  std::condition_variable cv;
  int done = 0;
  std::vector<Timing> timing(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    timing[i].submit = Clock::now();
    auto status = engine.Submit(std::move(requests[i]), [&, i](GenerationOutput out) {
      std::lock_guard lock(mu);
      auto now = Clock::now();
      if (!out.token_ids.empty()) {
        if (timing[i].tokens == 0) timing[i].first = now;
        timing[i].last = now;
        timing[i].tokens += static_cast<int>(out.token_ids.size());
      }
      if (out.finish != shoal::worker::FinishReason::kNone) {
        if (!out.error.ok()) std::fprintf(stderr, "request failed: %s\n", out.error.ToString().c_str());
        ++done;
        cv.notify_all();
      }
    });
    if (!status.ok()) {
      std::fprintf(stderr, "submit: %s\n", status.ToString().c_str());
      std::exit(1);
    }
  }
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return done == static_cast<int>(timing.size()); });
  return timing;
}

GenerationRequest MakeRequest(std::string id, std::vector<int32_t> prompt, int max_tokens) {
  GenerationRequest r;
  r.request_id = std::move(id);
  r.prompt_tokens = std::move(prompt);
  r.stop.max_tokens = max_tokens;
  r.stop.ignore_eos = true;
  return r;
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"shoal CPU engine benchmark"};
  std::string model_path;
  int threads = 2, prompt_tokens = 512, decode_tokens = 128, streams = 8, stream_tokens = 64;
  app.add_option("--model", model_path, "GGUF file or HF directory")->required();
  app.add_option("--threads", threads);
  app.add_option("--prompt-tokens", prompt_tokens);
  app.add_option("--decode-tokens", decode_tokens);
  app.add_option("--streams", streams);
  app.add_option("--stream-tokens", stream_tokens);
  CLI11_PARSE(app, argc, argv);
  shoal::InitLogging("warn");  // stdout carries only the `name: value` lines

  auto model = shoal::worker::LoadModel(model_path);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    return 1;
  }
  auto tokenizer = shoal::worker::Tokenizer::ForModel(*model);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "%s\n", tokenizer.status().ToString().c_str());
    return 1;
  }
  shoal::worker::ThreadPool pool(threads);
  auto lm = shoal::worker::CreateCausalLM(*model, shoal::worker::ShardSpec{}, &pool);
  if (!lm.ok()) {
    std::fprintf(stderr, "%s\n", lm.status().ToString().c_str());
    return 1;
  }
  shoal::worker::EngineOptions options;
  options.kv_cache_bytes = 64ull << 20;
  options.max_num_batched_tokens = std::max(prompt_tokens, 512);
  const int64_t vocab = model->config.vocab_size;
  auto engine = Engine::Create(options, std::move(*lm),
                               std::shared_ptr<const shoal::worker::Tokenizer>(std::move(*tokenizer)));
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    return 1;
  }
  // The same synthetic ids llamacpp_peer.py uses, so both engines see the same shapes.
  std::vector<int32_t> prompt;
  for (int i = 0; i < prompt_tokens; ++i) prompt.push_back(static_cast<int32_t>((int64_t{i} * 7919) % (vocab - 100) + 50));

  RunAll(**engine, {MakeRequest("warmup", {prompt.begin(), prompt.begin() + 8}, 2)});

  // Prompt throughput: prefill of one long prompt until its first token.
  auto t = RunAll(**engine, {MakeRequest("prompt", prompt, 1)});
  std::printf("prompt_tokens_per_s: %.1f\n", prompt_tokens / Seconds(t[0].submit, t[0].first));

  // Decode at batch 1 after a 32-token prompt (first token excluded: that is prefill).
  t = RunAll(**engine, {MakeRequest("decode", {prompt.begin(), prompt.begin() + 32}, decode_tokens + 1)});
  std::printf("decode_tokens_per_s: %.1f\n", decode_tokens / Seconds(t[0].first, t[0].last));

  // N concurrent streams with distinct 32-token prompts, decoded together.
  std::vector<GenerationRequest> many;
  for (int s = 0; s < streams; ++s) {
    many.push_back(MakeRequest("stream" + std::to_string(s),
                               {prompt.begin() + s * 16, prompt.begin() + s * 16 + 32}, stream_tokens + 1));
  }
  t = RunAll(**engine, std::move(many));
  Clock::time_point first = t[0].first, last = t[0].last;
  for (auto& x : t) {
    first = std::max(first, x.first);  // all streams decoding from here on
    last = std::max(last, x.last);
  }
  std::printf("aggregate_tokens_per_s: %.1f\n", streams * stream_tokens / Seconds(first, last));

  struct stat st {};
  stat(model_path.c_str(), &st);
  std::printf("model_file_mb: %.1f\n", st.st_size / 1048576.0);
  std::printf("kv_budget_mb: %.1f\n", options.kv_cache_bytes / 1048576.0);
  std::printf("peak_rss_mb: %.1f\n", PeakRssMb());
  (*engine)->Shutdown();
  return 0;
}
