// Prompt and decode speed of the CPU model on a GGUF, driven directly through CausalLM
// (no engine, no sampler beyond argmax): the numbers are the model and its kernels.
// Workload as bench/peer/llamacpp_peer.py, so the two can be compared line by line:
//   prompt_tokens_per_s  one sequence, a 512-token prompt in one step
//   decode_tokens_per_s  batch 1, 128 greedy tokens after a 32-token prompt
//
//   build/bench/decode-bench --model ~/.cache/shoal/models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdlib>
#include <vector>

#include "worker/kernels/cpu/thread_pool.h"
#include "worker/model/loaded_model.h"
#include "worker/models/causal_lm.h"

namespace shoal::worker {
namespace {

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// CPU seconds used by the whole process: on a machine shared with other work, tokens per
// CPU-second stay comparable when wall-clock rates do not.
double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int Run(int argc, char** argv) {
  CLI::App app{"decode-bench: CPU model prompt and decode tokens/s"};
  std::string model_path = std::string(std::getenv("HOME") ? std::getenv("HOME") : ".") +
                           "/.cache/shoal/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  int threads = 2, prompt_tokens = 512, decode_tokens = 128, repeats = 3;
  app.add_option("--model", model_path, "GGUF file or HF directory");
  app.add_option("--threads", threads);
  app.add_option("--prompt-tokens", prompt_tokens);
  app.add_option("--decode-tokens", decode_tokens);
  app.add_option("--repeats", repeats, "runs of each measurement; the best is printed");
  CLI11_PARSE(app, argc, argv);
  prompt_tokens = std::max(prompt_tokens, 1);

  auto model = LoadModel(model_path);
  if (!model.ok()) {
    fmt::print(stderr, "{}\n", model.status().ToString());
    return 1;
  }
  ThreadPool pool(threads);
  auto lm_or = CreateCausalLM(*model, ShardSpec{}, &pool);
  if (!lm_or.ok()) {
    fmt::print(stderr, "{}\n", lm_or.status().ToString());
    return 1;
  }
  CausalLM& lm = **lm_or;
  const int block_size = 16;
  const int64_t max_tokens = std::max(prompt_tokens, 32 + decode_tokens) + block_size;
  const int64_t num_blocks = max_tokens / block_size + 1;
  if (auto st = lm.AllocateKvCache(num_blocks, block_size); !st.ok()) {
    fmt::print(stderr, "{}\n", st.ToString());
    return 1;
  }
  std::vector<int32_t> table(num_blocks);
  for (int64_t i = 0; i < num_blocks; ++i) table[i] = static_cast<int32_t>(i);
  const int64_t vocab = lm.config().vocab_size;
  std::vector<int32_t> prompt(prompt_tokens);
  for (int i = 0; i < prompt_tokens; ++i) prompt[i] = static_cast<int32_t>((i * 7919) % (vocab - 100) + 50);

  std::vector<float> logits;
  auto forward = [&](std::span<const int32_t> tokens, int64_t start) {
    ForwardBatch b;
    b.seqs.push_back({tokens, start, table, true});
    if (auto st = lm.Forward(b, &logits); !st.ok()) {
      fmt::print(stderr, "{}\n", st.ToString());
      std::exit(1);
    }
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  };

  forward(std::span<const int32_t>(prompt).first(8), 0);  // warm-up: page in the weights
  double best_prompt = 0, best_decode = 0, best_prompt_cpu = 0, best_decode_cpu = 0;
  for (int r = 0; r < repeats; ++r) {
    double c0 = ProcessCpuSeconds();
    auto t0 = std::chrono::steady_clock::now();
    forward(prompt, 0);
    auto t1 = std::chrono::steady_clock::now();
    best_prompt = std::max(best_prompt, prompt_tokens / Seconds(t0, t1));
    best_prompt_cpu = std::max(best_prompt_cpu, prompt_tokens / (ProcessCpuSeconds() - c0));

    std::vector<int32_t> seq(prompt.begin(), prompt.begin() + std::min(32, prompt_tokens));
    seq.push_back(forward(std::span<const int32_t>(seq), 0));
    c0 = ProcessCpuSeconds();
    t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < decode_tokens; ++i) {
      const int64_t pos = static_cast<int64_t>(seq.size()) - 1;
      seq.push_back(forward(std::span<const int32_t>(seq).subspan(pos, 1), pos));
    }
    t1 = std::chrono::steady_clock::now();
    best_decode = std::max(best_decode, decode_tokens / Seconds(t0, t1));
    best_decode_cpu = std::max(best_decode_cpu, decode_tokens / (ProcessCpuSeconds() - c0));
  }
  fmt::print("model: {}\nthreads: {}\nweight_bytes: {}\n", model_path, threads, lm.WeightBytes());
  fmt::print("prompt_tokens_per_s: {:.1f}\n", best_prompt);
  fmt::print("decode_tokens_per_s: {:.1f}\n", best_decode);
  fmt::print("prompt_tokens_per_cpu_s: {:.1f}\n", best_prompt_cpu);
  fmt::print("decode_tokens_per_cpu_s: {:.1f}\n", best_decode_cpu);
  fmt::print("decode_weight_gb_per_s: {:.2f}\n", best_decode * lm.WeightBytes() / 1e9);
  return 0;
}

}  // namespace
}  // namespace shoal::worker

int main(int argc, char** argv) { return shoal::worker::Run(argc, argv); }
