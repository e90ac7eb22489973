// The decode step's heaviest kernels one at a time, at real models' shapes, each against
// the GPU's measured copy bandwidth (bench/cuda_copy_bandwidth.h): where cuda-decode-bench's
// batch-1 fraction of the roofline is lost, kernel by kernel. Every case reads far more
// than the L2 (50-60 MB on Hopper) over its repetitions: weights rotate over enough copies,
// batch-1 attention over 64 sequences' caches.
//
//   gemv_<matrix>_b<rows>_*    R1-Distill-Qwen-7B's dense products, bf16 weights, through the
//                              GEMV kernel (a decode step's default) and through cuBLAS;
//                              gemv_fp8_<matrix>_b1 the same matrices as FP8 codes + scales
//   experts_<proj>_b1_*        DeepSeek-V2-Lite's 6 routed experts of a token in one
//                              GroupedGemv launch, a different 6 of the 64 each time;
//                              experts_<proj>_b64_* a 64-token step's (about 6 rows an
//                              expert, nearly every expert), and _cublas the same as one
//                              cuBLAS GEMM per expert
//   sample_<rule>_b<rows>_*    a step's token choice over Qwen-7B's vocabulary: ArgmaxRows
//                              (greedy) and SampleRows at temperature 0.7 alone, with
//                              top-p 0.95, top-k 50, min-p 0.05 (bytes: the logits once)
//   attention_<shape>_b<N>_*   decode attention over --context cached positions (bf16
//                              cache), the split-K plan the model would use, merge included;
//                              attention_mla_v2lite_tensor_b<N> the same rows as tiles of one
//                              on the tensor cores (what the DeepSeek model runs);
//                              attention_qwen7b_b<N> runs on the tensor cores (the default),
//                              attention_qwen7b_f32_b<N> on the f32 cores
//
// Each case prints _us (mean time a call, launches back to back on one stream) and
// _fraction_of_copy (its bytes read / that time / the copy bandwidth).
//
// Prompt attention is compute, not bandwidth: prompt_attention_qwen7b_p<N>_{tensor,f32}_*
// run one --prompt-token prompt (tiles of 32 rows, causal, bf16 cache) through
// PagedAttentionTiled on the tensor cores and on the f32 cores, and
// prompt_attention_mla_v2lite_p<N>_{tensor,rows}_* DeepSeek-V2-Lite's MLA through
// MlaLatentAttentionTiled and through the per-row kernel; each prints _us, _tflops (useful
// flops a second: 2 (k + v dims) heads N(N+1)/2) and _fraction_of_cublas: that rate over
// cuBLAS's on a bf16 GEMM of [N, 4096] x [4096, 4096] (cublas_bf16_gemm_tflops), the tensor
// cores' rate as the library reaches it; _tensor_speedup is the other time over the tensor
// cores'.
//
//   build-cuda/bench/cuda-kernels-bench [--context 1024] [--prompt 2048] [--reps 50]
//                                       [--only gemv|experts|sampling|attention|prompt]
//
// Without a GPU it prints "skipped: no GPU: ..." and exits 0.
#include <CLI/CLI.hpp>
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda_copy_bandwidth.h"
#include "bench/model_shapes.h"
#include "worker/kernels/cuda/attention.h"
#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/device.h"
#include "worker/kernels/cuda/fp8.h"
#include "worker/kernels/cuda/gemm.h"
#include "worker/kernels/cuda/grouped_gemv.h"
#include "worker/kernels/cuda/ops.h"
#include "worker/kernels/cuda/sampling.h"

namespace shoal::worker {
namespace {

// Enough copies of a buffer that the repetitions stream from memory, not from the L2.
constexpr size_t kRotateBytes = size_t{512} << 20;

int CopiesFor(size_t bytes) { return static_cast<int>(std::max<size_t>(1, (kRotateBytes + bytes - 1) / bytes)); }

// Mean microseconds of one call(rep) over `reps` calls back to back, after 3 untimed.
template <typename Call>
double MeanMicros(cudaStream_t stream, int reps, Call&& call) {
  for (int i = 0; i < 3; ++i) call(i);
  cudaEvent_t start, stop;
  SHOAL_CUDA_CHECK(cudaEventCreate(&start));
  SHOAL_CUDA_CHECK(cudaEventCreate(&stop));
  SHOAL_CUDA_CHECK(cudaEventRecord(start, stream));
  for (int i = 0; i < reps; ++i) call(i);
  SHOAL_CUDA_CHECK(cudaEventRecord(stop, stream));
  SHOAL_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  SHOAL_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return 1e3 * ms / reps;
}

void Report(const std::string& name, double us, double bytes, double bandwidth) {
  fmt::print("{}_us: {:.2f}\n", name, us);
  fmt::print("{}_fraction_of_copy: {:.3f}\n", name, bytes / (us * 1e-6) / bandwidth);
}

cuda::DeviceBuffer Filled(size_t bytes, DType t, uint64_t seed) {
  cuda::DeviceBuffer b(bytes);
  cuda::FillUniform(nullptr, t, b.data(), static_cast<int64_t>(bytes / BlockBytes(t)), seed, -0.5f, 0.5f);
  return b;
}

struct Matrix {
  const char* name;
  int64_t out, in;
  DType x_type;  // what the decoder feeds it: the normed bf16 row, or o_proj's f32 attention output
};

void BenchGemv(cudaStream_t stream, int reps, double bandwidth) {
  const ModelConfig c = R1DistillQwen7B();
  const int64_t h = c.hidden_size, hd = c.head_dim;
  const std::vector<Matrix> matrices = {
      {"qkv", (c.num_heads + 2 * c.num_kv_heads) * hd, h, DType::kBF16},
      {"o", c.num_heads * hd, h, DType::kF32},
      {"gate_up", 2 * c.intermediate_size, h, DType::kBF16},
      {"down", h, c.intermediate_size, DType::kBF16},
      {"lm_head", c.vocab_size, h, DType::kBF16},
  };
  cuda::CublasGemm gemm(stream);
  for (const Matrix& m : matrices) {
    const size_t bytes = static_cast<size_t>(m.out * m.in) * 2;
    const int copies = CopiesFor(bytes);
    std::vector<cuda::DeviceBuffer> w;
    for (int i = 0; i < copies; ++i) w.push_back(Filled(bytes, DType::kBF16, 7 + i));
    const int64_t max_rows = cuda::kGemvMaxRows;
    cuda::DeviceBuffer x = Filled(max_rows * m.in * BlockBytes(m.x_type), m.x_type, 3);
    cuda::DeviceBuffer xb = Filled(max_rows * m.in * 2, DType::kBF16, 4);  // cuBLAS: x of the weights' type
    cuda::DeviceBuffer y(max_rows * m.out * 4);
    for (int64_t rows : {int64_t{1}, max_rows}) {
      const double gemv_us = MeanMicros(stream, reps, [&](int rep) {
        const cuda::StackedMatrices sm{w[rep % copies].data(), nullptr, DType::kBF16, m.out, m.in, m.out};
        cuda::Gemv(stream, sm, rows, m.x_type, x.data(), DType::kF32, y.data(), false);
      });
      Report(fmt::format("gemv_{}_b{}", m.name, rows), gemv_us, static_cast<double>(bytes), bandwidth);
      const double cublas_us = MeanMicros(stream, reps, [&](int rep) {
        gemm.Run(DType::kBF16, xb.data(), w[rep % copies].data(), rows, m.in, m.out, DType::kF32, y.data(), false);
      });
      Report(fmt::format("cublas_{}_b{}", m.name, rows), cublas_us, static_cast<double>(bytes), bandwidth);
    }
    // The same matrix as FP8 codes with a block scale per 128 (DeepSeek-V3's weights).
    const size_t scale_bytes = static_cast<size_t>(m.out * cuda::Fp8ScaleCols(m.in)) * 4;
    const size_t fp8_bytes = static_cast<size_t>(m.out * m.in) + scale_bytes;
    const int fp8_copies = CopiesFor(fp8_bytes);
    w.clear();
    std::vector<cuda::DeviceBuffer> scales;
    for (int i = 0; i < fp8_copies; ++i) {
      w.emplace_back(static_cast<size_t>(m.out * m.in));
      scales.emplace_back(scale_bytes);
      cuda::Fp8FillUniform(nullptr, w.back().as<uint8_t>(), scales.back().as<float>(), m.out, m.in, 9 + i, 0.01f);
    }
    const double fp8_us = MeanMicros(stream, reps, [&](int rep) {
      const cuda::StackedMatrices sm{w[rep % fp8_copies].data(), scales[rep % fp8_copies].as<float>(), DType::kF8E4M3,
                                     m.out, m.in, m.out};
      cuda::Gemv(stream, sm, 1, m.x_type, x.data(), DType::kF32, y.data(), false);
    });
    Report(fmt::format("gemv_fp8_{}_b1", m.name), fp8_us, static_cast<double>(fp8_bytes), bandwidth);
  }
}

// A DeepSeek expert's two products: gate and up as one [2 inter, h] matrix, then down.
struct ExpertProjection {
  const char* name;
  int64_t out, in;
};
std::array<ExpertProjection, 2> ExpertProjections(int64_t h, int64_t inter) {
  return {{{"gate_up", 2 * inter, h}, {"down", h, inter}}};
}

// A decode step of `batch` tokens through DeepSeek-V2-Lite's routed experts: each token's
// k distinct experts drawn at random (a fresh draw each rep), the token-expert pairs sorted
// by expert as the step's permutation leaves them, each expert with rows a group (about
// batch * k / E rows, 6 at batch 64), all through one GroupedGemv launch per projection;
// bytes are the weights of the experts with rows. experts_<proj>_b<batch>_cublas: the same
// groups as one cuBLAS GEMM per expert, what the step plan takes past kGroupedGemvMaxRows.
void BenchExpertsAtBatch(cudaStream_t stream, int reps, double bandwidth, int batch) {
  const DeepseekConfig d = DeepseekV2Lite().deepseek;
  const int64_t h = DeepseekV2Lite().hidden_size, inter = d.moe_intermediate_size, E = d.n_routed_experts;
  const int k = static_cast<int>(d.num_experts_per_tok);
  std::mt19937 rng(6);
  struct Draw {
    std::vector<cuda::GemvGroup> groups;
    int32_t max_rows = 0;
  };
  const int draws = 8;  // steps drawn, taken in turn
  std::vector<Draw> steps(draws);
  std::vector<cuda::GemvGroup> all;
  std::vector<size_t> first_group;
  for (Draw& step : steps) {
    std::vector<int32_t> count(E, 0);
    for (int t = 0; t < batch; ++t) {
      std::vector<int32_t> experts(E);
      std::iota(experts.begin(), experts.end(), 0);
      std::shuffle(experts.begin(), experts.end(), rng);
      for (int i = 0; i < k; ++i) ++count[experts[i]];
    }
    int32_t row = 0;
    for (int32_t e = 0; e < E; ++e) {
      if (count[e] == 0) continue;
      step.groups.push_back({e, row, count[e], 0});
      row += count[e];
      step.max_rows = std::max(step.max_rows, count[e]);
    }
    first_group.push_back(all.size());
    all.insert(all.end(), step.groups.begin(), step.groups.end());
  }
  cuda::DeviceBuffer d_groups(all.size() * sizeof(cuda::GemvGroup));
  d_groups.CopyFromHost(all.data(), d_groups.bytes());
  cuda::CublasGemm gemm(stream);
  for (const ExpertProjection p : ExpertProjections(h, inter)) {
    const size_t matrix_bytes = static_cast<size_t>(p.out * p.in) * 2;
    cuda::DeviceBuffer w = Filled(matrix_bytes * E, DType::kBF16, 13);
    cuda::DeviceBuffer x = Filled(batch * k * p.in * 2, DType::kBF16, 14);
    cuda::DeviceBuffer y(batch * k * p.out * 4);
    const cuda::StackedMatrices sm{w.data(), nullptr, DType::kBF16, p.out, p.in, p.out};
    double bytes = 0;
    for (const Draw& step : steps) bytes += static_cast<double>(matrix_bytes) * step.groups.size();
    bytes /= draws;
    const double us = MeanMicros(stream, reps, [&](int rep) {
      const Draw& step = steps[rep % draws];
      cuda::GroupedGemv(stream, sm, d_groups.as<cuda::GemvGroup>() + first_group[rep % draws],
                        static_cast<int>(step.groups.size()), step.max_rows, DType::kBF16, x.data(), DType::kF32,
                        y.data(), false);
    });
    const std::string name = fmt::format("experts_{}_b{}", p.name, batch);
    Report(name, us, bytes, bandwidth);
    const double cublas_us = MeanMicros(stream, reps, [&](int rep) {
      for (const cuda::GemvGroup& g : steps[rep % draws].groups) {
        gemm.Run(DType::kBF16, x.as<uint8_t>() + static_cast<size_t>(g.first_row) * p.in * 2,
                 w.as<uint8_t>() + static_cast<size_t>(g.matrix) * matrix_bytes, g.num_rows, p.in, p.out, DType::kF32,
                 y.as<uint8_t>() + static_cast<size_t>(g.first_row) * p.out * 4, false);
      }
    });
    Report(name + "_cublas", cublas_us, bytes, bandwidth);
  }
}

void BenchExperts(cudaStream_t stream, int reps, double bandwidth) {
  const DeepseekConfig d = DeepseekV2Lite().deepseek;
  const int64_t h = DeepseekV2Lite().hidden_size, inter = d.moe_intermediate_size, E = d.n_routed_experts;
  const int k = static_cast<int>(d.num_experts_per_tok);
  // Per rep, k distinct experts of the E, the token's row in each group.
  std::mt19937 rng(5);
  std::vector<cuda::GemvGroup> groups;
  for (int rep = 0; rep < reps + 3; ++rep) {
    std::vector<int32_t> experts(E);
    std::iota(experts.begin(), experts.end(), 0);
    std::shuffle(experts.begin(), experts.end(), rng);
    for (int i = 0; i < k; ++i) groups.push_back({experts[i], i, 1, 0});
  }
  cuda::DeviceBuffer d_groups(groups.size() * sizeof(cuda::GemvGroup));
  d_groups.CopyFromHost(groups.data(), d_groups.bytes());
  for (const ExpertProjection p : ExpertProjections(h, inter)) {
    const size_t matrix_bytes = static_cast<size_t>(p.out * p.in) * 2;
    cuda::DeviceBuffer w = Filled(matrix_bytes * E, DType::kBF16, 11);
    cuda::DeviceBuffer x = Filled(k * p.in * 2, DType::kBF16, 12);
    cuda::DeviceBuffer y(k * p.out * 4);
    const cuda::StackedMatrices sm{w.data(), nullptr, DType::kBF16, p.out, p.in, p.out};
    const double us = MeanMicros(stream, reps, [&](int rep) {
      cuda::GroupedGemv(stream, sm, d_groups.as<cuda::GemvGroup>() + rep * k, k, 1, DType::kBF16, x.data(),
                        DType::kF32, y.data(), false);
    });
    Report(fmt::format("experts_{}_b1", p.name), us, static_cast<double>(matrix_bytes) * k, bandwidth);
  }
  BenchExpertsAtBatch(stream, reps, bandwidth, 64);
}

// A step's token choice over R1-Distill-Qwen-7B's 152064-token vocabulary: logits shaped
// like a model's (a few dozen plausible tokens over a long normal tail), restored from a
// pristine copy before each call since SampleRows overwrites them; the copy's own time is
// measured alone and taken off.
void BenchSampling(cudaStream_t stream, int reps, double bandwidth) {
  const int64_t n = R1DistillQwen7B().vocab_size;
  for (const int64_t rows : {int64_t{1}, int64_t{64}}) {
    std::mt19937 rng(21);
    std::normal_distribution<float> tail(0.0f, 2.0f);
    std::vector<float> logits(rows * n);
    for (float& v : logits) v = tail(rng);
    for (int64_t r = 0; r < rows; ++r) {
      for (int j = 0; j < 40; ++j) logits[r * n + (rng() % n)] = 14.0f - 0.3f * j;
    }
    const size_t bytes = logits.size() * 4;
    cuda::DeviceBuffer pristine(bytes), work(bytes), out(rows * 4), penalties(sizeof(cuda::PenaltyToken));
    pristine.CopyFromHost(logits.data(), bytes);
    const double copy_us = MeanMicros(stream, reps, [&](int) {
      SHOAL_CUDA_CHECK(cudaMemcpyAsync(work.data(), pristine.data(), bytes, cudaMemcpyDeviceToDevice, stream));
    });
    const double argmax_us = MeanMicros(stream, reps, [&](int) {
      cuda::ArgmaxRows(stream, pristine.as<float>(), rows, n, out.as<int32_t>());
    });
    Report(fmt::format("sample_greedy_b{}", rows), argmax_us, static_cast<double>(bytes), bandwidth);
    struct Rule {
      const char* name;
      cuda::SamplingRow row;
    };
    cuda::SamplingRow temperature;
    temperature.temperature = 0.7f;
    cuda::SamplingRow top_p = temperature, top_k = temperature, min_p = temperature;
    top_p.top_p = 0.95f;
    top_k.top_k = 50;
    min_p.min_p = 0.05f;
    for (const Rule& rule : {Rule{"temperature", temperature}, Rule{"top_p", top_p}, Rule{"top_k", top_k},
                             Rule{"min_p", min_p}}) {
      std::vector<cuda::SamplingRow> params(rows, rule.row);
      for (int64_t r = 0; r < rows; ++r) params[r].uniform = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
      cuda::DeviceBuffer d_params(params.size() * sizeof(cuda::SamplingRow));
      d_params.CopyFromHost(params.data(), d_params.bytes());
      const double us = MeanMicros(stream, reps, [&](int) {
        SHOAL_CUDA_CHECK(cudaMemcpyAsync(work.data(), pristine.data(), bytes, cudaMemcpyDeviceToDevice, stream));
        cuda::SampleRows(stream, work.as<float>(), rows, n, d_params.as<cuda::SamplingRow>(),
                         penalties.as<cuda::PenaltyToken>(), out.as<int32_t>());
      });
      Report(fmt::format("sample_{}_b{}", rule.name, rows), std::max(us - copy_us, 0.01), static_cast<double>(bytes),
             bandwidth);
    }
  }
}

// A bf16 cache of kSeqs sequences of `context` positions (tables laid out sequence after
// sequence); batch-1 reps take the sequences in turn.
constexpr int kSeqs = 64;
constexpr int kBlockSize = 16;

struct CachedRows {
  cuda::DeviceBuffer tables, seq, pos;
  int64_t blocks_per_seq = 0;
  cuda::DeviceRows Rows(int64_t first_seq, int64_t num_rows) const {
    cuda::DeviceRows r;
    r.row_seq = seq.as<int32_t>() + first_seq;
    r.row_pos = pos.as<int64_t>() + first_seq;
    r.block_tables = tables.as<int32_t>();
    r.max_blocks_per_seq = blocks_per_seq;
    r.num_rows = num_rows;
    return r;
  }
};

CachedRows MakeRows(int64_t context) {
  CachedRows c;
  c.blocks_per_seq = (context + kBlockSize - 1) / kBlockSize;
  std::vector<int32_t> tables(kSeqs * c.blocks_per_seq), seq(kSeqs);
  std::iota(tables.begin(), tables.end(), 0);
  std::iota(seq.begin(), seq.end(), 0);
  const std::vector<int64_t> pos(kSeqs, context - 1);  // each row sees all `context` positions
  c.tables = cuda::DeviceBuffer(tables.size() * 4);
  c.tables.CopyFromHost(tables.data(), c.tables.bytes());
  c.seq = cuda::DeviceBuffer(seq.size() * 4);
  c.seq.CopyFromHost(seq.data(), c.seq.bytes());
  c.pos = cuda::DeviceBuffer(pos.size() * 8);
  c.pos.CopyFromHost(pos.data(), c.pos.bytes());
  return c;
}

void BenchAttention(cudaStream_t stream, int reps, int64_t context, double bandwidth) {
  const CachedRows cached = MakeRows(context);
  const int64_t slots = kSeqs * cached.blocks_per_seq * kBlockSize;
  {
    const ModelConfig c = R1DistillQwen7B();
    const int64_t heads = c.num_heads, kv = c.num_kv_heads, hd = c.head_dim;
    const size_t cache_bytes = slots * kv * hd * 2;
    cuda::DeviceBuffer k = Filled(cache_bytes, DType::kBF16, 21), v = Filled(cache_bytes, DType::kBF16, 22);
    const cuda::DeviceKvLayer cache{k.data(), v.data(), kSeqs * cached.blocks_per_seq, kBlockSize, kv, hd,
                                    DType::kBF16};
    cuda::DeviceBuffer q = Filled(kSeqs * heads * hd * 4, DType::kF32, 23), out(kSeqs * heads * hd * 4);
    for (int64_t batch : {int64_t{1}, int64_t{kSeqs}}) {
      const int splits = cuda::AttentionSplits(batch, heads, kv, context);
      cuda::DeviceBuffer scratch(std::max<size_t>(4, cuda::AttentionPartialFloats(batch, heads, splits, hd) * 4));
      for (const auto cores : {cuda::AttentionCores::kBest, cuda::AttentionCores::kF32}) {
        const double us = MeanMicros(stream, reps, [&](int rep) {
          const int64_t first = batch == 1 ? rep % kSeqs : 0;
          cuda::PagedAttention(stream, cache, cached.Rows(first, batch), q.as<float>() + first * heads * hd,
                               heads * hd, heads, 0.088f, out.as<float>(), heads * hd, {splits, scratch.as<float>()},
                               cores);
        });
        const std::string name =
            fmt::format("attention_qwen7b{}_b{}", cores == cuda::AttentionCores::kF32 ? "_f32" : "", batch);
        fmt::print("{}_splits: {}\n", name, splits);
        Report(name, us, static_cast<double>(batch) * context * kv * hd * 2 * 2, bandwidth);
      }
    }
  }
  {
    const DeepseekConfig d = DeepseekV2Lite().deepseek;
    const int64_t heads = DeepseekV2Lite().num_heads, latent = d.kv_lora_rank, entry = latent + d.qk_rope_head_dim;
    cuda::DeviceBuffer data = Filled(slots * entry * 2, DType::kBF16, 31);
    const cuda::DeviceLatentLayer cache{data.data(), kSeqs * cached.blocks_per_seq, kBlockSize, latent,
                                        d.qk_rope_head_dim, DType::kBF16};
    cuda::DeviceBuffer q = Filled(kSeqs * heads * entry * 4, DType::kF32, 32), out(kSeqs * heads * latent * 4);
    // The decoder's way with a tensor-core cache: every row a tile of one (MlaLatentAttentionTiled).
    // alone[s]: sequence s's row as a launch's only row; together[s]: as row s of all kSeqs.
    std::vector<cuda::QueryTile> alone(kSeqs), together(kSeqs);
    for (int i = 0; i < kSeqs; ++i) {
      alone[i].num_rows = together[i].num_rows = 1;
      alone[i].seq = together[i].seq = i;
      alone[i].first_pos = together[i].first_pos = context - 1;
      together[i].first_row = i;
    }
    cuda::DeviceBuffer dalone(kSeqs * sizeof(cuda::QueryTile)), dtogether(kSeqs * sizeof(cuda::QueryTile));
    dalone.CopyFromHost(alone.data(), dalone.bytes());
    dtogether.CopyFromHost(together.data(), dtogether.bytes());
    for (int64_t batch : {int64_t{1}, int64_t{kSeqs}}) {
      const int splits = cuda::AttentionSplits(batch, heads, 1, context);
      cuda::DeviceBuffer scratch(std::max<size_t>(4, cuda::AttentionPartialFloats(batch, heads, splits, latent) * 4));
      for (const bool tensor : {false, true}) {
        const double us = MeanMicros(stream, reps, [&](int rep) {
          const int64_t first = batch == 1 ? rep % kSeqs : 0;
          const cuda::AttentionSplit split{splits, scratch.as<float>()};
          if (tensor) {
            const cuda::QueryTile* tiles =
                batch == 1 ? dalone.as<cuda::QueryTile>() + first : dtogether.as<cuda::QueryTile>();
            cuda::MlaLatentAttentionTiled(stream, cache, cached.Rows(first, batch), tiles, batch, 1,
                                          q.as<float>() + first * heads * entry, heads * entry, heads, 0.07f,
                                          out.as<float>(), heads * latent, split);
          } else {
            cuda::MlaLatentAttention(stream, cache, cached.Rows(first, batch), q.as<float>() + first * heads * entry,
                                     heads * entry, heads, 0.07f, out.as<float>(), heads * latent, split);
          }
        });
        const std::string name = fmt::format("attention_mla_v2lite{}_b{}", tensor ? "_tensor" : "", batch);
        fmt::print("{}_splits: {}\n", name, splits);
        Report(name, us, static_cast<double>(batch) * context * entry * 2, bandwidth);
      }
    }
  }
}

// One sequence whose whole prompt is one chunk: positions 0..prompt-1, tiles of 32 rows.
struct PromptChunk {
  explicit PromptChunk(int64_t prompt) : blocks((prompt + kBlockSize - 1) / kBlockSize) {
    std::vector<int32_t> table(blocks), seq(prompt, 0);
    std::iota(table.begin(), table.end(), 0);
    std::vector<int64_t> pos(prompt);
    std::iota(pos.begin(), pos.end(), int64_t{0});
    std::vector<cuda::QueryTile> tiles;
    for (int64_t i = 0; i < prompt; i += cuda::kQueryTileRows) {
      cuda::QueryTile t;
      t.first_row = static_cast<int32_t>(i);
      t.num_rows = static_cast<int32_t>(std::min<int64_t>(cuda::kQueryTileRows, prompt - i));
      t.first_pos = i;
      tiles.push_back(t);
    }
    num_tiles = static_cast<int64_t>(tiles.size());
    dtable = cuda::DeviceBuffer(table.size() * 4);
    dseq = cuda::DeviceBuffer(seq.size() * 4);
    dpos = cuda::DeviceBuffer(pos.size() * 8);
    dtiles = cuda::DeviceBuffer(tiles.size() * sizeof(cuda::QueryTile));
    dtable.CopyFromHost(table.data(), dtable.bytes());
    dseq.CopyFromHost(seq.data(), dseq.bytes());
    dpos.CopyFromHost(pos.data(), dpos.bytes());
    dtiles.CopyFromHost(tiles.data(), dtiles.bytes());
    rows = {dseq.as<int32_t>(), dpos.as<int64_t>(), dtable.as<int32_t>(), blocks, prompt};
  }
  int64_t blocks, num_tiles = 0;
  cuda::DeviceBuffer dtable, dseq, dpos, dtiles;
  cuda::DeviceRows rows;
};

// A prompt case's lines: _us, _tflops, _fraction_of_cublas.
double ReportPrompt(const std::string& name, double us, double flops, double cublas_tflops) {
  const double tflops = flops / (us * 1e-6) / 1e12;
  fmt::print("{}_us: {:.1f}\n{}_tflops: {:.2f}\n{}_fraction_of_cublas: {:.3f}\n", name, us, name, tflops, name,
             tflops / cublas_tflops);
  return us;
}

void BenchPrompt(cudaStream_t stream, int reps, int64_t prompt) {
  // The peer: cuBLAS's bf16 tensor-core rate on a GEMM of the prompt's rows.
  cuda::CublasGemm gemm(stream);
  constexpr int64_t kWidth = 4096;
  cuda::DeviceBuffer x = Filled(prompt * kWidth * 2, DType::kBF16, 41);
  cuda::DeviceBuffer w = Filled(kWidth * kWidth * 2, DType::kBF16, 42);
  cuda::DeviceBuffer y(prompt * kWidth * 4);
  const double gemm_us = MeanMicros(stream, reps, [&](int) {
    gemm.Run(DType::kBF16, x.data(), w.data(), prompt, kWidth, kWidth, DType::kF32, y.data(), false);
  });
  const double cublas_tflops = 2.0 * prompt * kWidth * kWidth / (gemm_us * 1e-6) / 1e12;
  fmt::print("cublas_bf16_gemm_tflops: {:.1f}\n", cublas_tflops);
  const PromptChunk chunk(prompt);
  const cuda::QueryTile* tiles = chunk.dtiles.as<cuda::QueryTile>();
  const double pairs = static_cast<double>(prompt) * (prompt + 1) / 2;  // (query, key) pairs, causal
  {
    const ModelConfig c = R1DistillQwen7B();
    const int64_t heads = c.num_heads, kv = c.num_kv_heads, hd = c.head_dim;
    const size_t cache_bytes = chunk.blocks * kBlockSize * kv * hd * 2;
    cuda::DeviceBuffer k = Filled(cache_bytes, DType::kBF16, 43), v = Filled(cache_bytes, DType::kBF16, 44);
    const cuda::DeviceKvLayer cache{k.data(), v.data(), chunk.blocks, kBlockSize, kv, hd, DType::kBF16};
    cuda::DeviceBuffer q = Filled(prompt * heads * hd * 4, DType::kF32, 45), out(prompt * heads * hd * 4);
    const double flops = 4.0 * hd * heads * pairs;
    double tensor_us = 0;
    for (const auto cores : {cuda::AttentionCores::kBest, cuda::AttentionCores::kF32}) {
      const bool tensor = cores == cuda::AttentionCores::kBest;
      const double us = ReportPrompt(
          fmt::format("prompt_attention_qwen7b_p{}_{}", prompt, tensor ? "tensor" : "f32"),
          MeanMicros(stream, reps, [&](int) {
            cuda::PagedAttentionTiled(stream, cache, chunk.rows, tiles, chunk.num_tiles, q.as<float>(), heads * hd,
                                      heads, 0.088f, out.as<float>(), heads * hd, cores);
          }),
          flops, cublas_tflops);
      if (tensor) tensor_us = us;
      if (!tensor) fmt::print("prompt_attention_qwen7b_p{}_tensor_speedup: {:.2f}\n", prompt, us / tensor_us);
    }
  }
  {
    // DeepSeek-V2-Lite's MLA: tiles on the tensor cores against every row through the
    // per-row (decode) kernel, which is what a prompt chunk took before.
    const DeepseekConfig d = DeepseekV2Lite().deepseek;
    const int64_t heads = DeepseekV2Lite().num_heads, latent = d.kv_lora_rank, entry = latent + d.qk_rope_head_dim;
    cuda::DeviceBuffer data = Filled(chunk.blocks * kBlockSize * entry * 2, DType::kBF16, 46);
    const cuda::DeviceLatentLayer cache{data.data(), chunk.blocks, kBlockSize, latent, d.qk_rope_head_dim,
                                        DType::kBF16};
    cuda::DeviceBuffer q = Filled(prompt * heads * entry * 4, DType::kF32, 47), out(prompt * heads * latent * 4);
    const double flops = 2.0 * (entry + latent) * heads * pairs;
    const double tensor_us = ReportPrompt(fmt::format("prompt_attention_mla_v2lite_p{}_tensor", prompt),
        MeanMicros(stream, reps, [&](int) {
          cuda::MlaLatentAttentionTiled(stream, cache, chunk.rows, tiles, chunk.num_tiles, cuda::kQueryTileRows,
                                        q.as<float>(), heads * entry, heads, 0.07f, out.as<float>(), heads * latent);
        }),
        flops, cublas_tflops);
    const double row_us = ReportPrompt(fmt::format("prompt_attention_mla_v2lite_p{}_rows", prompt),
        MeanMicros(stream, reps, [&](int) {
          cuda::MlaLatentAttention(stream, cache, chunk.rows, q.as<float>(), heads * entry, heads, 0.07f,
                                   out.as<float>(), heads * latent);
        }),
        flops, cublas_tflops);
    fmt::print("prompt_attention_mla_v2lite_p{}_tensor_speedup: {:.2f}\n", prompt, row_us / tensor_us);
  }
}

}  // namespace
}  // namespace shoal::worker

int main(int argc, char** argv) {
  using namespace shoal::worker;
  CLI::App app{"The CUDA decode step's kernels one by one against the copy bandwidth"};
  int64_t context = 1024, prompt = 2048;
  int reps = 50;
  std::string only;
  app.add_option("--context", context, "cached positions each attention row sees")->check(CLI::Range(1, 1 << 20));
  app.add_option("--prompt", prompt, "prompt tokens of the prompt-attention cases")->check(CLI::Range(1, 1 << 16));
  app.add_option("--reps", reps, "timed calls per case")->check(CLI::Range(1, 100000));
  app.add_option("--only", only, "one group of cases: gemv, experts, sampling, attention or prompt")
      ->check(CLI::IsMember({"gemv", "experts", "sampling", "attention", "prompt"}));
  CLI11_PARSE(app, argc, argv);

  std::string why_not;
  if (cuda::CudaDeviceCount(&why_not) == 0) {
    fmt::print("skipped: {}\n", why_not);
    return 0;
  }
  if (!cuda::LoadCublas(&why_not)) {
    fmt::print("skipped: {}\n", why_not);
    return 0;
  }
  fmt::print("device: {}\n", cuda::DeviceDescription(0));
  const double bandwidth = CopyBandwidth(size_t{1} << 30, 10);
  fmt::print("device_copy_bandwidth_gbs: {:.1f}\n", bandwidth / 1e9);
  cudaStream_t stream = nullptr;
  SHOAL_CUDA_CHECK(cudaStreamCreate(&stream));
  if (only.empty() || only == "gemv") BenchGemv(stream, reps, bandwidth);
  if (only.empty() || only == "experts") BenchExperts(stream, reps, bandwidth);
  if (only.empty() || only == "sampling") BenchSampling(stream, reps, bandwidth);
  if (only.empty() || only == "attention") BenchAttention(stream, reps, context, bandwidth);
  if (only.empty() || only == "prompt") BenchPrompt(stream, std::min(reps, 20), prompt);  // calls of milliseconds
  SHOAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaStreamDestroy(stream);
  return 0;
}
