// Decode speed of the CPU DeepSeek model on a random-weight checkpoint shaped like
// DeepSeek-V2-Lite, scaled down to fit two cores: the MLA dimensions are V2-Lite's own
// (16 heads, kv_lora_rank 512, qk_nope 128, qk_rope 64, v 128, no q_lora_rank), as is the
// MoE layout (64 routed experts, 6 per token, 2 shared, first layer dense); hidden size,
// depth, expert width and vocabulary are smaller. BF16 weights, f16 latent cache.
//
// Validates first (absorbed and expanded MLA give the same logits), then times decode at
// batch 1 and 8 for both MLA forms and prints their ratio:
//   decode_tokens_per_s_b<batch>_<form>   greedy tokens per second over all sequences
//   decode_tokens_per_cpu_s_b<batch>_<form>  the same per CPU-second (stable on a busy machine)
//   ratio_absorbed_vs_expanded_b<batch>   absorbed / expanded (and _cpu_ for the CPU-second rates)
//
//   build/bench/deepseek-bench --threads 2
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <vector>

#include "bench/model_shapes.h"
#include "worker/common/splitmix.h"
#include "worker/kernels/cpu/thread_pool.h"
#include "worker/model/loaded_model.h"
#include "worker/model/mapped_weight_store.h"
#include "worker/model/model_checks.h"
#include "worker/models/deepseek.h"

namespace shoal::worker {
namespace {

// DeepSeek-V2-Lite with every width cut (vocab 102400 -> 8192, hidden 2048 -> 1024,
// dense 10944 -> 2736, experts 1408 -> 176) so a CPU run takes seconds; heads, MLA
// dimensions, routing and YaRN as the real model.
ModelConfig BenchConfig(int64_t layers) {
  ModelConfig c = DeepseekV2Lite();
  c.vocab_size = 8192;
  c.hidden_size = 1024;
  c.intermediate_size = 2736;
  c.num_layers = layers;
  c.max_position_embeddings = 4096;
  c.deepseek.moe_intermediate_size = 176;
  return c;
}

// Uniform in [-1, 1) from a counter: cheap enough to fill a few hundred MB quickly.
float Uniform(uint64_t i) { return static_cast<float>(SplitMix64(i) >> 40) * 0x1p-23f - 1.0f; }

// Random BF16 matrices (uniform, std 1/sqrt(fan_in)) and near-1 F32 norms for every
// tensor the config expects, owned by `buffers` and viewed by the store.
LoadedModel RandomModel(const ModelConfig& c, std::vector<std::vector<uint16_t>>* buffers) {
  std::vector<TensorView> views;
  uint64_t counter = 0;
  absl::Status st = ForEachExpectedTensor(c, [&](const ExpectedTensor& e) -> absl::Status {
    TensorView v;
    v.name = e.name;
    v.shape = e.shape;
    const int64_t n = v.numel();
    buffers->emplace_back(e.shape.size() == 1 ? 2 * n : n);
    std::vector<uint16_t>& b = buffers->back();
    if (e.shape.size() == 1) {
      v.dtype = DType::kF32;
      for (int64_t i = 0; i < n; ++i) {
        const float x = e.name.ends_with("correction_bias") ? 0.0f : 1.0f + 0.1f * Uniform(counter++);
        std::memcpy(&b[2 * i], &x, 4);
      }
    } else {
      v.dtype = DType::kBF16;
      const float scale = std::sqrt(3.0f / static_cast<float>(e.shape.back()));
      for (int64_t i = 0; i < n; ++i) {
        const float x = scale * Uniform(counter++);
        uint32_t u;
        std::memcpy(&u, &x, 4);
        b[i] = static_cast<uint16_t>(u >> 16);
      }
    }
    v.data = reinterpret_cast<const std::byte*>(b.data());
    v.nbytes = b.size() * 2;
    views.push_back(std::move(v));
    return absl::OkStatus();
  });
  if (!st.ok()) std::abort();
  LoadedModel m;
  m.path = "random-deepseek-v2-lite-scaled";
  m.config = c;
  auto store = MappedWeightStore::Create(m.path, std::move(views), {});
  if (!store.ok()) std::abort();
  m.weights = std::move(*store);
  return m;
}

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// CPU seconds of the whole process: on a machine shared with other work, tokens per
// CPU-second stay comparable when wall-clock rates do not.
double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct DecodeRun {
  double tokens_per_s = 0;
  double tokens_per_cpu_s = 0;
  std::vector<float> last_logits;  // sequence 0's, from the last step
};

// `batch` sequences with different prompts: prompt in one step each, then `steps`
// decode steps of the whole batch.
DecodeRun Decode(CausalLM& lm, int batch, int prompt_tokens, int steps) {
  const int block_size = 16;
  const int64_t per_seq = (prompt_tokens + steps + block_size) / block_size + 1;
  if (!lm.AllocateKvCache(per_seq * batch, block_size).ok()) std::abort();
  const int64_t vocab = lm.config().vocab_size;
  std::vector<std::vector<int32_t>> tokens(batch), tables(batch);
  for (int s = 0; s < batch; ++s) {
    for (int i = 0; i < prompt_tokens; ++i) tokens[s].push_back(static_cast<int32_t>((i * 7919 + s * 131) % vocab));
    for (int64_t b = 0; b < per_seq; ++b) tables[s].push_back(static_cast<int32_t>(s * per_seq + b));
  }
  std::vector<float> logits;
  DecodeRun run;
  auto step = [&](bool prompt) {
    ForwardBatch fb;
    for (int s = 0; s < batch; ++s) {
      const int64_t start = prompt ? 0 : static_cast<int64_t>(tokens[s].size()) - 1;
      fb.seqs.push_back({std::span<const int32_t>(tokens[s]).subspan(start), start, tables[s], true});
    }
    if (auto st = lm.Forward(fb, &logits); !st.ok()) {
      fmt::print(stderr, "{}\n", st.ToString());
      std::exit(1);
    }
    run.last_logits.assign(logits.begin(), logits.begin() + vocab);
    for (int s = 0; s < batch; ++s) {
      const float* row = logits.data() + s * vocab;
      tokens[s].push_back(static_cast<int32_t>(std::max_element(row, row + vocab) - row));
    }
  };
  step(true);
  const double c0 = ProcessCpuSeconds();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) step(false);
  run.tokens_per_s = static_cast<double>(batch) * steps / Seconds(t0, std::chrono::steady_clock::now());
  run.tokens_per_cpu_s = static_cast<double>(batch) * steps / (ProcessCpuSeconds() - c0);
  return run;
}

int Run(int argc, char** argv) {
  CLI::App app{"deepseek-bench: DeepSeek MLA/MoE decode tokens/s, absorbed vs expanded MLA"};
  int threads = 2, prompt_tokens = 128, steps = 16, layers = 4;
  app.add_option("--threads", threads);
  app.add_option("--prompt-tokens", prompt_tokens, "context before decoding");
  app.add_option("--decode-steps", steps);
  app.add_option("--layers", layers, "decoder layers (the first is dense)");
  CLI11_PARSE(app, argc, argv);

  const ModelConfig config = BenchConfig(layers);
  std::vector<std::vector<uint16_t>> buffers;
  const LoadedModel model = RandomModel(config, &buffers);
  ThreadPool pool(threads);
  auto absorbed = CreateDeepseek(model, ShardSpec{}, &pool, CausalLMOptions{}, {.mla_mode = MlaMode::kAuto});
  auto expanded = CreateDeepseek(model, ShardSpec{}, &pool, CausalLMOptions{}, {.mla_mode = MlaMode::kExpanded});
  if (!absorbed.ok() || !expanded.ok()) {
    fmt::print(stderr, "{} {}\n", absorbed.status().ToString(), expanded.status().ToString());
    return 1;
  }
  const DeepseekConfig& d = config.deepseek;
  fmt::print("shape: DeepSeek-V2-Lite scaled: hidden {}, layers {} (first dense, intermediate {}), heads {}, "
             "kv_lora_rank {}, qk_nope {}, qk_rope {}, v {}, no q_lora; {} routed experts x {} (top {}), {} shared; "
             "vocab {}; BF16 weights, F16 latent cache\n",
             config.hidden_size, config.num_layers, config.intermediate_size, config.num_heads, d.kv_lora_rank,
             d.qk_nope_head_dim, d.qk_rope_head_dim, d.v_head_dim, d.n_routed_experts, d.moe_intermediate_size,
             d.num_experts_per_tok, d.n_shared_experts, config.vocab_size);
  fmt::print("threads: {}\nweight_bytes: {}\nprompt_tokens: {}\ndecode_steps: {}\n", threads,
             (*absorbed)->WeightBytes(), prompt_tokens, steps);
  fmt::print("kv_bytes_per_token: {}\n", (*absorbed)->KvBytesPerBlock(16) / 16);

  // Validate: the prompt runs expanded in both models, then one decode step runs
  // absorbed in one and expanded in the other; their logits must agree.
  const DecodeRun va = Decode(**absorbed, 1, prompt_tokens, 1), ve = Decode(**expanded, 1, prompt_tokens, 1);
  double num = 0, den = 0;
  for (size_t i = 0; i < va.last_logits.size(); ++i) {
    num = std::max(num, static_cast<double>(std::fabs(va.last_logits[i] - ve.last_logits[i])));
    den = std::max(den, static_cast<double>(std::fabs(ve.last_logits[i])));
  }
  fmt::print("validate_decode_logits_rel_diff: {:.2e}\n", num / den);

  for (int batch : {1, 8}) {
    const DecodeRun a = Decode(**absorbed, batch, prompt_tokens, steps);
    const DecodeRun e = Decode(**expanded, batch, prompt_tokens, steps);
    fmt::print("decode_tokens_per_s_b{}_absorbed: {:.2f}\n", batch, a.tokens_per_s);
    fmt::print("decode_tokens_per_s_b{}_expanded: {:.2f}\n", batch, e.tokens_per_s);
    fmt::print("decode_tokens_per_cpu_s_b{}_absorbed: {:.2f}\n", batch, a.tokens_per_cpu_s);
    fmt::print("decode_tokens_per_cpu_s_b{}_expanded: {:.2f}\n", batch, e.tokens_per_cpu_s);
    fmt::print("ratio_absorbed_vs_expanded_b{}: {:.2f}\n", batch, a.tokens_per_s / e.tokens_per_s);
    fmt::print("ratio_absorbed_vs_expanded_cpu_b{}: {:.2f}\n", batch, a.tokens_per_cpu_s / e.tokens_per_cpu_s);
  }
  return 0;
}

}  // namespace
}  // namespace shoal::worker

int main(int argc, char** argv) { return shoal::worker::Run(argc, argv); }
