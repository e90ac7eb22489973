// Decode speed of the CUDA model at a real model's shape, with random bf16 weights drawn
// in device memory, against the GPU's measured copy bandwidth (the roofline of a decode
// step, which reads every weight it uses and the context's KV once):
//   --shape r1-distill-qwen-7b  (default) qwen2: hidden 3584, 28 layers, 28 heads over 4
//                               kv heads of 128, intermediate 18944, vocab 152064, q/k/v
//                               biases, untied head
//   --shape deepseek-v2-lite    hidden 2048, 27 layers (the first dense), 16 MLA heads
//                               (nope 128 + rope 64, v 128, latent 512, no q_lora), 64
//                               routed experts of 1408 (6 per token) + 2 shared, vocab
//                               102400, YaRN x40
// bench/cuda_decode_hf.py runs the same workload through Hugging Face transformers;
// bench/cuda_decode_bench.sh runs both and prints ratios.
//
//   decode_b1_tokens_per_s   one sequence, --decode-steps greedy tokens after --context
//   decode_bN_tokens_per_s   --batch sequences, each after --context, in lock-step
//
// A MoE step reads only the experts its tokens chose: exactly num_experts_per_tok per
// layer at batch 1; at batch N the expected number of distinct experts under uniform
// routing, E (1 - (1 - k/E)^N), which random weights approximate.
//
// --weights fp8 (DeepSeek shape) keeps the matrices FP8 on the GPU, one byte a weight plus
// a block scale per 128, as DeepSeek-V3 ships them (random codes; kv_b, embedding and head
// stay bf16).
//
//   build-cuda/bench/cuda-decode-bench [--shape S] [--weights bf16|fp8] [--fp8-gemm tensor-cores|exact]
//                                      [--context 1024] [--decode-steps 64]
//                                      [--batch 64]
//
// Without a GPU it prints "skipped: no GPU: ..." and exits 0.
#include <CLI/CLI.hpp>
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/device.h"
#include "bench/cuda_copy_bandwidth.h"
#include "bench/model_shapes.h"
#include "worker/models/cuda/cuda_causal_lm.h"

namespace shoal::worker {
namespace {

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Weight bytes a step at batch `batch` does not read: the routed experts no token chose
// (expected number under uniform routing; exact at batch 1).
double UnreadExpertBytes(const ModelConfig& c, int batch, double bytes_per_weight) {
  const DeepseekConfig& d = c.deepseek;
  if (!IsDeepseek(c.arch) || d.n_routed_experts == 0) return 0.0;
  const double E = static_cast<double>(d.n_routed_experts), k = static_cast<double>(d.num_experts_per_tok);
  const double touched = batch == 1 ? k : E * (1.0 - std::pow(1.0 - k / E, batch));
  // gate, up and down: bf16, or FP8 codes with a 4-byte scale per 128 of them
  const double expert_bytes = 3.0 * c.hidden_size * d.moe_intermediate_size * bytes_per_weight;
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) moe_layers += d.IsMoeLayer(l) ? 1 : 0;
  return moe_layers * (E - touched) * expert_bytes;
}

struct Sequence {
  std::vector<int32_t> tokens;
  std::vector<int32_t> table;
  int64_t computed = 0;
};

// Feeds every sequence's first `context` tokens, at most `chunk` tokens per step in all
// (prompt chunks of several sequences share a step); the greedy token after the last is
// appended, for Decode to feed.
bool Prefill(CudaCausalLM& lm, std::vector<Sequence>& seqs, int64_t context, int64_t chunk) {
  std::vector<int32_t> next;
  for (;;) {
    ForwardBatch batch;
    std::vector<Sequence*> wanting;
    int64_t budget = chunk;
    for (Sequence& s : seqs) {
      const int64_t left = context - s.computed;
      if (left == 0 || budget == 0) continue;
      const int64_t n = std::min(left, budget);
      batch.seqs.push_back({std::span<const int32_t>(s.tokens).subspan(s.computed, n), s.computed, s.table,
                            n == left});
      if (n == left) wanting.push_back(&s);
      s.computed += n;
      budget -= n;
    }
    if (batch.seqs.empty()) return true;
    const absl::Status st = lm.ForwardGreedy(batch, &next);
    if (!st.ok()) {
      fmt::print(stderr, "prefill: {}\n", st.ToString());
      return false;
    }
    for (size_t i = 0; i < wanting.size(); ++i) wanting[i]->tokens.push_back(next[i]);
  }
}

// `steps` lock-step decode steps over all sequences; returns the seconds they took.
double Decode(CudaCausalLM& lm, std::vector<Sequence>& seqs, int steps) {
  std::vector<int32_t> next;
  const auto t0 = std::chrono::steady_clock::now();
  for (int step = 0; step < steps; ++step) {
    ForwardBatch batch;
    for (Sequence& s : seqs) {
      batch.seqs.push_back({std::span<const int32_t>(s.tokens).subspan(s.computed, 1), s.computed, s.table, true});
      s.computed += 1;
    }
    const absl::Status st = lm.ForwardGreedy(batch, &next);
    if (!st.ok()) {
      fmt::print(stderr, "decode: {}\n", st.ToString());
      return -1;
    }
    for (size_t i = 0; i < seqs.size(); ++i) seqs[i].tokens.push_back(next[i]);
  }
  return Seconds(t0, std::chrono::steady_clock::now());
}

std::vector<Sequence> MakeSequences(int count, int context, int blocks_per_seq, uint32_t seed, int64_t vocab) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab - 1));
  std::vector<Sequence> seqs(count);
  for (int i = 0; i < count; ++i) {
    for (int t = 0; t < context; ++t) seqs[i].tokens.push_back(token(rng));
    for (int b = 0; b < blocks_per_seq; ++b) seqs[i].table.push_back(i * blocks_per_seq + b);
  }
  return seqs;
}

int Run(int argc, char** argv) {
  CLI::App app{"cuda-decode-bench: CUDA decode tokens/s at a real model's shape vs the HBM roofline"};
  int context = 1024, decode_steps = 64, batch = 64, batch_steps = 32, warmup = 4, layers = 0;
  std::string shape = "r1-distill-qwen-7b";
  app.add_option("--shape", shape, "r1-distill-qwen-7b or deepseek-v2-lite")
      ->check(CLI::IsMember({"r1-distill-qwen-7b", "deepseek-v2-lite"}));
  int64_t prefill_chunk = 8192;
  app.add_option("--context", context, "tokens in each sequence's context before decoding");
  app.add_option("--decode-steps", decode_steps, "timed decode steps at batch 1");
  app.add_option("--batch", batch, "sequences of the batched measurement (0: skip it)");
  app.add_option("--batch-steps", batch_steps, "timed decode steps of the batched measurement");
  app.add_option("--warmup", warmup, "untimed decode steps before each measurement");
  app.add_option("--prefill-chunk", prefill_chunk, "most tokens per prefill step");
  app.add_option("--layers", layers, "decoder layers (0: the real shape's; fewer for a quick run)");
  bool graphs = false;
  app.add_flag("--cuda-graphs", graphs, "decode steps replay captured CUDA graphs");
  std::string weights = "bf16";
  app.add_option("--weights", weights, "bf16, or fp8 (deepseek-v2-lite: its matrices FP8 on the GPU, as V3 ships)")
      ->check(CLI::IsMember({"bf16", "fp8"}));
  std::string fp8_gemm = "tensor-cores";
  app.add_option("--fp8-gemm", fp8_gemm,
                 "with --weights fp8, steps of more than 8 rows: tensor-cores (FP8 activations) or exact (widened)")
      ->check(CLI::IsMember({"tensor-cores", "exact"}));
  std::string small_step_matmul = "gemv";
  app.add_option("--small-step-matmul", small_step_matmul,
                 "steps of at most 8 rows, dense weights: gemv (a warp per two output rows) or cublas")
      ->check(CLI::IsMember({"gemv", "cublas"}));
  CLI11_PARSE(app, argc, argv);

  std::string why_not;
  if (cuda::CudaDeviceCount(&why_not) == 0) {
    fmt::print("skipped: {}\n", why_not);
    return 0;
  }
  fmt::print("device: {}\n", cuda::DeviceDescription(0));
  const double bandwidth = CopyBandwidth(size_t{2} << 30, 20);
  fmt::print("device_copy_bandwidth_gbs: {:.1f}\n", bandwidth / 1e9);

  ModelConfig config = shape == "deepseek-v2-lite" ? DeepseekV2Lite() : R1DistillQwen7B();
  if (layers > 0) config.num_layers = layers;
  CausalLMOptions options;
  options.device = Device::kCuda;
  options.device_weight_dtype = weights == "fp8" ? DType::kF8E4M3 : DType::kBF16;
  options.cuda_graphs = graphs;
  options.fp8_gemm = fp8_gemm == "exact" ? CausalLMOptions::Fp8Gemm::kExact : CausalLMOptions::Fp8Gemm::kTensorCores;
  options.small_step_matmul = small_step_matmul == "cublas" ? CausalLMOptions::SmallStepMatmul::kCublas
                                                            : CausalLMOptions::SmallStepMatmul::kGemv;
  options.kv_cache_dtype = DType::kBF16;  // as transformers keeps it for a bf16 model
  auto lm_or = CreateRandomCudaCausalLM(config, options, 1234);
  if (!lm_or.ok()) {
    fmt::print(stderr, "{}\n", lm_or.status().ToString());
    return 1;
  }
  CudaCausalLM& lm = **lm_or;
  const int block_size = 16;
  const int max_seqs = std::max(batch, 1);
  const int blocks_per_seq = (context + warmup + std::max(decode_steps, batch_steps) + block_size) / block_size;
  if (!lm.AllocateKvCache(static_cast<int64_t>(max_seqs) * blocks_per_seq, block_size).ok()) {
    fmt::print(stderr, "KV cache of {} sequences x {} blocks does not fit\n", max_seqs, blocks_per_seq);
    return 1;
  }
  const double weight_bytes = static_cast<double>(lm.WeightBytes());
  const double weight_bytes_per = weights == "fp8" ? 1.0 + 4.0 / 128 : 2.0;
  // A step reads every weight once, except the (untied) embedding table: one row a token.
  const double embed_bytes = static_cast<double>(config.vocab_size) * config.hidden_size * 2;
  const double step_weight_bytes = weight_bytes - (config.tie_word_embeddings ? 0.0 : embed_bytes) -
                                   UnreadExpertBytes(config, 1, weight_bytes_per);
  const double kv_bytes_per_position = static_cast<double>(lm.KvBytesPerBlock(block_size)) / block_size;
  if (IsDeepseek(config.arch)) {
    const DeepseekConfig& d = config.deepseek;
    fmt::print("shape: {} hidden {} layers {} MLA heads {} latent {}+{} experts {} (top {}) +{} shared of {} vocab {}, "
               "{} weights, bf16 latent cache\n",
               shape, config.hidden_size, config.num_layers, config.num_heads, d.kv_lora_rank, d.qk_rope_head_dim,
               d.n_routed_experts, d.num_experts_per_tok, d.n_shared_experts, d.moe_intermediate_size,
               config.vocab_size, weights);
  } else {
    fmt::print("shape: {} qwen2 hidden {} layers {} heads {}/{} head_dim {} intermediate {} vocab {}, bf16 weights, "
               "bf16 KV\n",
               shape, config.hidden_size, config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim,
               config.intermediate_size, config.vocab_size);
  }
  if (weights == "fp8") fmt::print("fp8_gemm: {}\n", fp8_gemm);
  fmt::print("weight_bytes: {:.0f}\n", weight_bytes);
  fmt::print("weight_bytes_read_per_step: {:.0f}\n", step_weight_bytes);
  fmt::print("context: {}\n", context);

  // Batch 1. The model's first forward pays one-time costs (kernel modules load lazily,
  // cuBLAS sets itself up on its first calls): an untimed prefill of the same shape, on the
  // blocks the timed one then overwrites, keeps them out of prefill_b1_tokens_per_s.
  std::vector<Sequence> cold = MakeSequences(1, context, blocks_per_seq, 3, config.vocab_size);
  if (!Prefill(lm, cold, context, prefill_chunk)) return 1;
  std::vector<Sequence> one = MakeSequences(1, context, blocks_per_seq, 1, config.vocab_size);
  auto t0 = std::chrono::steady_clock::now();
  if (!Prefill(lm, one, context, prefill_chunk)) return 1;
  fmt::print("prefill_b1_tokens_per_s: {:.0f}\n", context / Seconds(t0, std::chrono::steady_clock::now()));
  if (Decode(lm, one, warmup) < 0) return 1;
  const double mean_ctx = one[0].computed + decode_steps / 2.0;
  const double s1 = Decode(lm, one, decode_steps);
  if (s1 < 0) return 1;
  const double tps1 = decode_steps / s1;
  const double bytes1 = step_weight_bytes + mean_ctx * kv_bytes_per_position;  // per token
  fmt::print("decode_b1_tokens_per_s: {:.1f}\n", tps1);
  fmt::print("decode_b1_ms_per_token: {:.3f}\n", 1e3 / tps1);
  fmt::print("decode_b1_bytes_per_token: {:.0f}\n", bytes1);
  fmt::print("decode_b1_achieved_gbs: {:.1f}\n", bytes1 * tps1 / 1e9);
  fmt::print("decode_b1_roofline_tokens_per_s: {:.1f}\n", bandwidth / bytes1);
  fmt::print("decode_b1_fraction_of_roofline: {:.3f}\n", tps1 * bytes1 / bandwidth);

  if (graphs) fmt::print("decode_graph_launches: {}\n", lm.graph_launches());
  if (batch > 0) {
    std::vector<Sequence> many = MakeSequences(batch, context, blocks_per_seq, 2, config.vocab_size);
    t0 = std::chrono::steady_clock::now();
    if (!Prefill(lm, many, context, prefill_chunk)) return 1;
    fmt::print("prefill_b{}_tokens_per_s: {:.0f}\n", batch,
               static_cast<double>(batch) * context / Seconds(t0, std::chrono::steady_clock::now()));
    if (Decode(lm, many, warmup) < 0) return 1;
    const double ctx = many[0].computed + batch_steps / 2.0;
    const double sb = Decode(lm, many, batch_steps);
    if (sb < 0) return 1;
    const double tpsb = static_cast<double>(batch) * batch_steps / sb;
    const double step_bytes = step_weight_bytes + UnreadExpertBytes(config, 1, weight_bytes_per) - UnreadExpertBytes(config, batch, weight_bytes_per) +
                              batch * ctx * kv_bytes_per_position;
    fmt::print("decode_b{}_tokens_per_s: {:.1f}\n", batch, tpsb);
    fmt::print("decode_b{}_ms_per_step: {:.3f}\n", batch, 1e3 * sb / batch_steps);
    fmt::print("decode_b{}_bytes_per_step: {:.0f}\n", batch, step_bytes);
    fmt::print("decode_b{}_fraction_of_roofline: {:.3f}\n", batch, step_bytes * batch_steps / sb / bandwidth);
  }
  return 0;
}

}  // namespace
}  // namespace shoal::worker

int main(int argc, char** argv) { return shoal::worker::Run(argc, argv); }
