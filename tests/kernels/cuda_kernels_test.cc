// Every CUDA kernel against the CPU backend (or a host reference) on random inputs (label
// cuda). Where there is
// no GPU (no driver, no device) each test reports "skipped: no GPU" instead of failing.
//
// Tolerances, relative to the largest reference value: f32 activations 1e-5 for the
// elementwise ops (the same f32 arithmetic in another order) and 1e-4 for GEMMs (cuBLAS
// sums in its own order); f16/bf16 one rounding of the output (2^-10 / 2^-7) plus the
// f32 error, since inputs are rounded to the type before both sides see them.
#include <gtest/gtest.h>
#include <pthread.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "tests/kernels/mma_tile.h"
#include "worker/engine/sampler.h"
#include "worker/kernels/cpu/attention.h"
#include "worker/kernels/cpu/fp8_matmul.h"
#include "worker/kernels/cpu/mla_attention.h"
#include "worker/kernels/cpu/ops.h"
#include "worker/kernels/cpu/thread_pool.h"
#include "worker/kernels/cpu/quant.h"
#include "worker/kernels/cuda/attention.h"
#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/device.h"
#include "worker/kernels/cuda/fp8.h"
#include "worker/kernels/cuda/fp8_gemm.h"
#include "worker/kernels/cuda/gemm.h"
#include "worker/kernels/cuda/moe_routing.h"
#include "worker/kernels/cuda/grouped_gemv.h"
#include "worker/kernels/cuda/ops.h"
#include "worker/kernels/cuda/sampling.h"
#include "worker/models/deepseek_moe.h"
#include "worker/models/step_plan.h"

namespace shoal::worker::cuda {
namespace {

#define SKIP_WITHOUT_GPU()                                    \
  do {                                                        \
    std::string why_not;                                      \
    if (CudaDeviceCount(&why_not) == 0) GTEST_SKIP() << "skipped: " << why_not; \
  } while (0)

uint16_t FloatToBf16(float f) {  // round to nearest even, as __float2bfloat16_rn
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

size_t ElementBytes(DType t) { return t == DType::kF32 ? 4 : 2; }

// Host values rounded to `t`, and their bytes in `t`.
struct Typed {
  std::vector<float> values;
  std::vector<std::byte> bytes;
};

Typed Round(const std::vector<float>& v, DType t) {
  Typed out{v, std::vector<std::byte>(v.size() * ElementBytes(t))};
  for (size_t i = 0; i < v.size(); ++i) {
    if (t == DType::kF32) {
      std::memcpy(&out.bytes[4 * i], &v[i], 4);
      continue;
    }
    const uint16_t h = t == DType::kF16 ? cpu::FloatToHalf(v[i]) : FloatToBf16(v[i]);
    out.values[i] = t == DType::kF16 ? cpu::HalfToFloat(h) : cpu::Bf16ToFloat(h);
    std::memcpy(&out.bytes[2 * i], &h, 2);
  }
  return out;
}

std::vector<float> Decode(const std::vector<std::byte>& bytes, DType t) {
  std::vector<float> out(bytes.size() / ElementBytes(t));
  for (size_t i = 0; i < out.size(); ++i) {
    if (t == DType::kF32) {
      std::memcpy(&out[i], &bytes[4 * i], 4);
    } else {
      uint16_t h;
      std::memcpy(&h, &bytes[2 * i], 2);
      out[i] = t == DType::kF16 ? cpu::HalfToFloat(h) : cpu::Bf16ToFloat(h);
    }
  }
  return out;
}

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

DeviceBuffer Upload(const void* data, size_t bytes) {
  DeviceBuffer b(bytes);
  b.CopyFromHost(data, bytes);
  return b;
}

std::vector<std::byte> Download(const DeviceBuffer& b) {
  std::vector<std::byte> out(b.bytes());
  b.CopyToHost(out.data(), out.size());
  return out;
}

// A step's rows on the device: which sequence and position each is, over block tables
// already uploaded.
struct RowsOnDevice {
  RowsOnDevice(const std::vector<int32_t>& seq, const std::vector<int64_t>& pos, const DeviceBuffer& tables,
               int64_t blocks_per_seq)
      : seq_buf(Upload(seq.data(), seq.size() * 4)), pos_buf(Upload(pos.data(), pos.size() * 8)) {
    rows = {seq_buf.as<int32_t>(), pos_buf.as<int64_t>(), tables.as<int32_t>(), blocks_per_seq,
            static_cast<int64_t>(seq.size())};
  }
  DeviceBuffer seq_buf, pos_buf;
  DeviceRows rows;
};

// The GPU cache holds exactly the CPU cache's values: for each sequence s and each of its
// lengths[s] positions p, the `width` elements at offset_of(s, p) of both.
void ExpectSameSlots(const std::vector<float>& got, const std::vector<float>& want, const std::vector<int64_t>& lengths,
                     int64_t width, const std::function<int64_t(int, int64_t)>& offset_of) {
  for (size_t s = 0; s < lengths.size(); ++s) {
    for (int64_t p = 0; p < lengths[s]; ++p) {
      const int64_t at = offset_of(static_cast<int>(s), p);
      for (int64_t e = 0; e < width; ++e) {
        ASSERT_EQ(got[at + e], want[at + e]) << "sequence " << s << " position " << p << " element " << e;
      }
    }
  }
}

double OutputTolerance(DType t, double f32_tolerance) {
  return f32_tolerance + (t == DType::kF32 ? 0.0 : t == DType::kF16 ? 1.0 / 1024 : 1.0 / 128);
}

void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, double tolerance) {
  ASSERT_EQ(got.size(), want.size());
  double scale = 0, worst = 0;
  size_t at = 0;
  for (float w : want) scale = std::max(scale, std::fabs(static_cast<double>(w)));
  for (size_t i = 0; i < got.size(); ++i) {
    // A NaN compares false with everything: count it as an error of its own.
    if (std::isnan(got[i]) != std::isnan(want[i])) {
      ADD_FAILURE() << "element " << i << ": " << got[i] << " vs " << want[i];
      return;
    }
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (e > worst) worst = e, at = i;
  }
  EXPECT_LE(worst, tolerance * std::max(scale, 1e-30)) << "worst at " << at << ": " << got[at] << " vs " << want[at];
}

class CudaKernels : public ::testing::TestWithParam<DType> {};

TEST_P(CudaKernels, RmsNormWithResidualMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int64_t T = 5, n = 1000;  // n not a multiple of the block, to cover the tails
  const Typed x = Round(Random(T * n, 1), t), r = Round(Random(T * n, 2), t);
  const std::vector<float> w = Random(n, 3);
  // CPU: h = round_t(x + r), then the norm in f32.
  std::vector<float> h(T * n), want(T * n);
  for (int64_t i = 0; i < T * n; ++i) h[i] = Round({x.values[i] + r.values[i]}, t).values[0];
  cpu::RmsNorm(h.data(), w.data(), want.data(), T, n, 1e-6f);

  DeviceBuffer dx = Upload(x.bytes.data(), x.bytes.size()), dr = Upload(r.bytes.data(), r.bytes.size());
  DeviceBuffer dw = Upload(w.data(), w.size() * 4), dout(x.bytes.size());
  RmsNorm(nullptr, t, dx.data(), dr.data(), dw.as<float>(), dout.data(), T, n, 1e-6f);
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectClose(Decode(Download(dx), t), h, 0);  // the residual stream, exactly
  ExpectClose(Decode(Download(dout), t), want, OutputTolerance(t, 1e-5));
}

TEST_P(CudaKernels, RopeMatchesCpuInBothPairings) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int64_t T = 7, heads = 3, hd = 64, ld = heads * hd + 16;  // a row stride wider than the heads
  cpu::RopeTable table(hd, 10000.0, RopeScaling{}, 64);
  const std::vector<int64_t> positions = {0, 1, 2, 17, 33, 60, 63};
  std::vector<float> cos_sin[2];
  for (int64_t p = 0; p < table.num_positions(); ++p) {
    cos_sin[0].insert(cos_sin[0].end(), table.cos(p), table.cos(p) + hd / 2);
    cos_sin[1].insert(cos_sin[1].end(), table.sin(p), table.sin(p) + hd / 2);
  }
  DeviceBuffer dcos = Upload(cos_sin[0].data(), cos_sin[0].size() * 4);
  DeviceBuffer dsin = Upload(cos_sin[1].data(), cos_sin[1].size() * 4);
  DeviceBuffer dpos = Upload(positions.data(), positions.size() * 8);
  for (bool interleaved : {false, true}) {
    const Typed x = Round(Random(T * ld, 4), t);
    std::vector<float> want = x.values;
    cpu::ApplyRope(table, want.data(), T, ld, positions.data(), heads, hd, interleaved);
    DeviceBuffer dx = Upload(x.bytes.data(), x.bytes.size());
    ApplyRope(nullptr, t, dx.data(), T, ld, dpos.as<int64_t>(), heads, hd, hd, dcos.as<float>(), dsin.as<float>(),
              interleaved);
    SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
    SCOPED_TRACE(interleaved ? "interleaved" : "rotate_half");
    ExpectClose(Decode(Download(dx), t), want, OutputTolerance(t, 1e-5));
  }
}

// The fused step after a llama block's q/k/v GEMM gives what its four kernels give in turn
// (AddBias, ApplyRope on q and on k, WriteKv): the same queries in place and the same
// cache, with and without bias, in both pairings, rotating all of a head or part of it.
TEST_P(CudaKernels, RopeAndWriteKvMatchesBiasRopeAndWriteKvInTurn) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int64_t heads = 6, kv_heads = 2, hd = 64, width = (heads + 2 * kv_heads) * hd, ld = width + 8;
  const int block_size = 16, blocks_per_seq = 4;
  const int64_t num_blocks = 2 * blocks_per_seq;
  const std::vector<int32_t> tables = {5, 1, 7, 3, 0, 6, 2, 4};
  const std::vector<int32_t> seq = {0, 0, 0, 1, 1};
  const std::vector<int64_t> pos = {0, 1, 2, 40, 63};
  const int64_t T = static_cast<int64_t>(seq.size());
  DeviceBuffer dtables = Upload(tables.data(), tables.size() * 4);
  const RowsOnDevice rows(seq, pos, dtables, blocks_per_seq);
  const std::vector<float> bias = Random(width, 41, 0.5f);
  DeviceBuffer dbias = Upload(bias.data(), bias.size() * 4);
  const size_t cache_bytes = num_blocks * block_size * kv_heads * hd * ElementBytes(t);
  for (const int64_t rotary : {hd, hd / 2}) {
    cpu::RopeTable table(rotary, 10000.0, RopeScaling{}, 64);
    std::vector<float> cos, sin;
    for (int64_t p = 0; p < table.num_positions(); ++p) {
      cos.insert(cos.end(), table.cos(p), table.cos(p) + rotary / 2);
      sin.insert(sin.end(), table.sin(p), table.sin(p) + rotary / 2);
    }
    DeviceBuffer dcos = Upload(cos.data(), cos.size() * 4), dsin = Upload(sin.data(), sin.size() * 4);
    for (const bool interleaved : {false, true}) {
      for (const bool with_bias : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "rotary " << rotary << (interleaved ? " interleaved" : " rotate_half")
                                          << (with_bias ? " bias" : ""));
        const std::vector<float> qkv = Random(T * ld, 42);
        const std::vector<std::byte> zeros(cache_bytes);
        DeviceBuffer want_qkv = Upload(qkv.data(), qkv.size() * 4), got_qkv = Upload(qkv.data(), qkv.size() * 4);
        DeviceBuffer want_k = Upload(zeros.data(), cache_bytes), want_v = Upload(zeros.data(), cache_bytes);
        DeviceBuffer got_k = Upload(zeros.data(), cache_bytes), got_v = Upload(zeros.data(), cache_bytes);
        const DeviceKvLayer want_cache{want_k.data(), want_v.data(), num_blocks, block_size, kv_heads, hd, t};
        const DeviceKvLayer got_cache{got_k.data(), got_v.data(), num_blocks, block_size, kv_heads, hd, t};
        float* w = want_qkv.as<float>();
        if (with_bias) AddBias(nullptr, w, T, ld, dbias.as<float>(), width);
        ApplyRope(nullptr, DType::kF32, w, T, ld, rows.rows.row_pos, heads, hd, rotary, dcos.as<float>(),
                  dsin.as<float>(), interleaved);
        ApplyRope(nullptr, DType::kF32, w + heads * hd, T, ld, rows.rows.row_pos, kv_heads, hd, rotary,
                  dcos.as<float>(), dsin.as<float>(), interleaved);
        WriteKv(nullptr, want_cache, rows.rows, w + heads * hd, ld, w + (heads + kv_heads) * hd, ld);
        RopeAndWriteKv(nullptr, got_cache, rows.rows, got_qkv.as<float>(), ld, with_bias ? dbias.as<float>() : nullptr,
                       heads, rotary, dcos.as<float>(), dsin.as<float>(), interleaved);
        SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
        // The queries (the first heads * hd of each row) in place; the rest of qkv is not read again.
        const std::vector<float> want_rows = Decode(Download(want_qkv), DType::kF32);
        const std::vector<float> got_rows = Decode(Download(got_qkv), DType::kF32);
        std::vector<float> want_q, got_q;
        for (int64_t r = 0; r < T; ++r) {
          want_q.insert(want_q.end(), want_rows.begin() + r * ld, want_rows.begin() + r * ld + heads * hd);
          got_q.insert(got_q.end(), got_rows.begin() + r * ld, got_rows.begin() + r * ld + heads * hd);
        }
        // One rounding apart at most (a fused multiply-add where the other has two roundings).
        ExpectClose(got_q, want_q, 1e-6);
        ExpectClose(Decode(Download(got_k), t), Decode(Download(want_k), t), OutputTolerance(t, 1e-6));
        ExpectClose(Decode(Download(got_v), t), Decode(Download(want_v), t), 0.0);
      }
    }
  }
}

TEST_P(CudaKernels, SiluMulMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int64_t n = 4099;
  const Typed g = Round(Random(n, 5, 3.0f), t), u = Round(Random(n, 6), t);
  std::vector<float> want(n);
  cpu::SiluMul(g.values.data(), u.values.data(), want.data(), n);
  DeviceBuffer dg = Upload(g.bytes.data(), g.bytes.size()), du = Upload(u.bytes.data(), u.bytes.size());
  SiluMul(nullptr, t, dg.data(), du.data(), dg.data(), n);  // in place over gate, as the model runs it
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectClose(Decode(Download(dg), t), want, OutputTolerance(t, 1e-5));
}

// y[T, out] = x[T, in] · w[out, in]ᵀ in double, the exact answer a GEMM is held to.
std::vector<float> ReferenceGemm(const std::vector<float>& x, const std::vector<float>& w, int64_t T, int64_t in,
                                 int64_t out) {
  std::vector<float> y(T * out);
  for (int64_t r = 0; r < T; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t i = 0; i < in; ++i) s += static_cast<double>(x[r * in + i]) * w[o * in + i];
      y[r * out + o] = static_cast<float>(s);
    }
  }
  return y;
}

TEST_P(CudaKernels, GemmMatchesAnF32ReferenceAndAccumulates) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int64_t T = 9, in = 320, out = 200;
  const Typed x = Round(Random(T * in, 7), t), w = Round(Random(out * in, 8, 0.05f), t);
  const std::vector<float> y0 = Random(T * out, 9);
  std::vector<float> want = ReferenceGemm(x.values, w.values, T, in, out);
  DeviceBuffer dx = Upload(x.bytes.data(), x.bytes.size()), dw = Upload(w.bytes.data(), w.bytes.size());
  DeviceBuffer dy = Upload(y0.data(), y0.size() * 4);
  CublasGemm gemm(nullptr);
  gemm.Run(t, dx.data(), dw.data(), T, in, out, DType::kF32, dy.data(), /*accumulate=*/false);
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectClose(Decode(Download(dy), DType::kF32), want, 1e-4);

  dy.CopyFromHost(y0.data(), y0.size() * 4);
  gemm.Run(t, dx.data(), dw.data(), T, in, out, DType::kF32, dy.data(), /*accumulate=*/true);
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  for (int64_t i = 0; i < T * out; ++i) want[i] += y0[i];
  ExpectClose(Decode(Download(dy), DType::kF32), want, 1e-4);
}

// The decoder's other GEMM cases: y in the inputs' own type (gate_up), and a single row (a
// decode step at batch 1, for which cuBLAS may pick a different kernel than for 9 rows).
TEST_P(CudaKernels, GemmWritesTheInputTypeForOneRowAndMany) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int64_t in = 320, out = 200;
  for (const int64_t T : {int64_t{1}, int64_t{9}}) {
    SCOPED_TRACE(T);
    const Typed x = Round(Random(T * in, 13), t), w = Round(Random(out * in, 14, 0.05f), t);
    const std::vector<float> want = ReferenceGemm(x.values, w.values, T, in, out);
    DeviceBuffer dx = Upload(x.bytes.data(), x.bytes.size()), dw = Upload(w.bytes.data(), w.bytes.size());
    DeviceBuffer dy(T * out * ElementBytes(t));
    CublasGemm gemm(nullptr);
    gemm.Run(t, dx.data(), dw.data(), T, in, out, t, dy.data(), /*accumulate=*/false);
    SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
    ExpectClose(Decode(Download(dy), t), want, OutputTolerance(t, 1e-4));
  }
}

// Three sequences in one launch: a decode row after 37 cached tokens, a 5-row prompt chunk
// after 10, a fresh 7-row prompt; scattered block tables. Head shapes: GQA of 4 heads a KV
// head with head_dim 80 (the tile's words past the head stay zero), Qwen2-7B's 7 of 128,
// 12 heads on one KV head (two blocks of 6), plain multi-head attention with head_dim 34
// (slots not 16-byte multiples: loaded word by word), and head_dim 256. Keys and values
// are rounded to the cache type first, so the CPU's f32 cache holds the same numbers the
// GPU's cache does.
TEST_P(CudaKernels, PagedAttentionMatchesCpuOverMixedRows) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  struct Shape {
    int64_t heads, kv_heads, hd;
  };
  for (const Shape shape : {Shape{8, 2, 80}, Shape{28, 4, 128}, Shape{12, 1, 64}, Shape{3, 3, 34}, Shape{4, 2, 256}}) {
  SCOPED_TRACE(::testing::Message() << shape.heads << " heads over " << shape.kv_heads << ", head_dim " << shape.hd);
  const int64_t heads = shape.heads, kv_heads = shape.kv_heads, hd = shape.hd, width = kv_heads * hd;
  const int block_size = 16, blocks_per_seq = 4;
  const int64_t num_blocks = 3 * blocks_per_seq;
  struct Seq {
    int64_t start, num_new;
  };
  const std::vector<Seq> seqs = {{37, 1}, {10, 5}, {0, 7}};
  std::vector<int32_t> tables;  // [3, blocks_per_seq], interleaved so neighbours are not adjacent
  for (int s = 0; s < 3; ++s) {
    for (int b = 0; b < blocks_per_seq; ++b) tables.push_back(static_cast<int32_t>(b * 3 + (2 - s)));
  }
  // Every position each sequence holds, past and new, in the order written.
  std::vector<int32_t> all_seq;
  std::vector<int64_t> all_pos;
  for (int s = 0; s < 3; ++s) {
    for (int64_t p = 0; p < seqs[s].start + seqs[s].num_new; ++p) all_seq.push_back(s), all_pos.push_back(p);
  }
  const int64_t n_all = static_cast<int64_t>(all_pos.size());
  const std::vector<float> k = Round(Random(n_all * width, 10), t).values, v = Round(Random(n_all * width, 11), t).values;

  // CPU: an f32 cache holding the rounded values; queries are the new rows.
  std::vector<float> kc(num_blocks * block_size * width), vc(kc.size());
  const cpu::PagedKvLayer cpu_cache{kc.data(), vc.data(), num_blocks, block_size, kv_heads, hd, DType::kF32};
  std::vector<cpu::AttentionSequence> cpu_seqs;
  std::vector<int32_t> q_seq;
  std::vector<int64_t> q_pos;
  int64_t written = 0, first_row = 0;
  for (int s = 0; s < 3; ++s) {
    const std::span<const int32_t> table(&tables[s * blocks_per_seq], blocks_per_seq);
    const int64_t n = seqs[s].start + seqs[s].num_new;
    cpu::WriteKv(cpu_cache, {0, n, 0, table}, &k[written * width], width, &v[written * width], width);
    written += n;
    cpu_seqs.push_back({first_row, seqs[s].num_new, seqs[s].start, table});
    for (int64_t i = 0; i < seqs[s].num_new; ++i) q_seq.push_back(s), q_pos.push_back(seqs[s].start + i);
    first_row += seqs[s].num_new;
  }
  const int64_t rows = first_row, ldq = heads * hd;
  const std::vector<float> q = Random(rows * ldq, 12);
  std::vector<float> want(rows * ldq);
  ThreadPool pool(1);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  cpu::PagedAttention(&pool, cpu_cache, cpu_seqs, q.data(), ldq, heads, scale, want.data(), ldq);

  // GPU: write every position through WriteKv, then attend for the new rows.
  DeviceBuffer dk_cache(num_blocks * block_size * width * ElementBytes(t)), dv_cache(dk_cache.bytes());
  const DeviceKvLayer cache{dk_cache.data(), dv_cache.data(), num_blocks, block_size, kv_heads, hd, t};
  DeviceBuffer dtables = Upload(tables.data(), tables.size() * 4);
  const RowsOnDevice all_dev(all_seq, all_pos, dtables, blocks_per_seq);
  DeviceBuffer dk = Upload(k.data(), k.size() * 4), dv = Upload(v.data(), v.size() * 4);
  WriteKv(nullptr, cache, all_dev.rows, dk.as<float>(), width, dv.as<float>(), width);
  const RowsOnDevice q_dev(q_seq, q_pos, dtables, blocks_per_seq);
  DeviceBuffer dq = Upload(q.data(), q.size() * 4), dout(q.size() * 4);
  // The f32 cores within 1e-4 of the CPU; the tensor cores within their probabilities'
  // rounding more (as TiledPromptAttentionMatchesTheRowKernel).
  for (const AttentionCores cores : {AttentionCores::kBest, AttentionCores::kF32}) {
    const bool tensor_cores = cores == AttentionCores::kBest && t != DType::kF32 && hd % 8 == 0 && hd <= 128;
    SCOPED_TRACE(tensor_cores ? "tensor cores" : "f32 cores");
    PagedAttention(nullptr, cache, q_dev.rows, dq.as<float>(), ldq, heads, scale, dout.as<float>(), ldq, {}, cores);
    SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
    ExpectClose(Decode(Download(dout), DType::kF32), want,
                1e-4 + (tensor_cores ? (t == DType::kF16 ? 1.0 / 4096 : 1.0 / 512) : 0.0));
  }

  // The cache holds exactly the rounded keys wherever the CPU's does.
  std::vector<int64_t> lengths;
  for (const Seq& q : seqs) lengths.push_back(q.start + q.num_new);
  ExpectSameSlots(Decode(Download(dk_cache), t), kc, lengths, width, [&](int s, int64_t p) {
    return cpu_cache.Offset(std::span<const int32_t>(&tables[s * blocks_per_seq], blocks_per_seq), p);
  });
  }
}

// Split-K: a decode row over 1000 positions, one over 5 (fewer positions than splits)
// and a 3-row prompt, each (row, head)'s positions over 2, 7, 32 and 64 blocks, give what one
// block per (row, head) gives, for the standard cache (on both cores) and MLA's latent one.
TEST_P(CudaKernels, AttentionSplitOverPositionsMatchesOneBlockPerHead) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int64_t heads = 4, kv_heads = 2, hd = 64, width = kv_heads * hd;
  const int block_size = 16, blocks_per_seq = 64;  // 1024 positions per sequence
  const int64_t num_blocks = 3 * blocks_per_seq;
  std::vector<int32_t> tables;
  for (int s = 0; s < 3; ++s) {
    for (int b = 0; b < blocks_per_seq; ++b) tables.push_back(static_cast<int32_t>(b * 3 + s));
  }
  const std::vector<int64_t> lengths = {1000, 5, 3};  // positions each sequence holds
  std::vector<int32_t> all_seq, q_seq;
  std::vector<int64_t> all_pos, q_pos;
  for (int s = 0; s < 3; ++s) {
    for (int64_t p = 0; p < lengths[s]; ++p) all_seq.push_back(s), all_pos.push_back(p);
  }
  for (int64_t p : {int64_t{999}, int64_t{4}, int64_t{0}, int64_t{1}, int64_t{2}}) q_pos.push_back(p);
  q_seq = {0, 1, 2, 2, 2};
  const int64_t n_all = static_cast<int64_t>(all_pos.size()), rows = 5;
  DeviceBuffer dtables = Upload(tables.data(), tables.size() * 4);
  const RowsOnDevice all_dev(all_seq, all_pos, dtables, blocks_per_seq);
  const RowsOnDevice q_dev(q_seq, q_pos, dtables, blocks_per_seq);
  const DeviceRows all = all_dev.rows;
  const DeviceRows queries = q_dev.rows;
  EXPECT_EQ(AttentionSplits(1, 28, 4, 1024), 32);  // 4 blocks (7 heads each): 32 splits of 32 positions
  EXPECT_EQ(AttentionSplits(1, 28, 4, 1000), 32);  // rounded up to a power of two
  EXPECT_EQ(AttentionSplits(1, 28, 4, 1100), 64);
  EXPECT_EQ(AttentionSplits(64, 28, 4, 1024), 2);  // 256 blocks: twice as many are enough
  EXPECT_EQ(AttentionSplits(64, 32, 32, 1024), 1);  // 2048 blocks fill the GPU
  EXPECT_EQ(AttentionSplits(1, 16, 1, 0), 1);
  EXPECT_EQ(AttentionSplits(1, 1, 1, 1 << 20), 64);
  EXPECT_EQ(AttentionSplits(8, 32, 8, 1 << 20), 8);  // 64 blocks: 512 in all

  // Standard cache.
  const std::vector<float> k = Random(n_all * width, 61), v = Random(n_all * width, 62);
  DeviceBuffer dk_cache(num_blocks * block_size * width * ElementBytes(t)), dv_cache(dk_cache.bytes());
  const DeviceKvLayer cache{dk_cache.data(), dv_cache.data(), num_blocks, block_size, kv_heads, hd, t};
  DeviceBuffer dk = Upload(k.data(), k.size() * 4), dv = Upload(v.data(), v.size() * 4);
  WriteKv(nullptr, cache, all, dk.as<float>(), width, dv.as<float>(), width);
  const std::vector<float> q = Random(rows * heads * hd, 63);
  DeviceBuffer dq = Upload(q.data(), q.size() * 4), dwant(q.size() * 4), dgot(q.size() * 4);
  PagedAttention(nullptr, cache, queries, dq.as<float>(), heads * hd, heads, 0.125f, dwant.as<float>(), heads * hd,
                 {}, AttentionCores::kF32);
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> want = Decode(Download(dwant), DType::kF32);
  // Both cores' splits against the f32 cores' single block; the tensor cores within their
  // probabilities' rounding (each split rounds against its own max).
  const double tensor_tolerance = t == DType::kF16 ? 1.0 / 4096 : t == DType::kBF16 ? 1.0 / 512 : 1e-5;
  for (const AttentionCores cores : {AttentionCores::kBest, AttentionCores::kF32}) {
    for (int splits : {1, 2, 7, 32, 64}) {
      SCOPED_TRACE(::testing::Message() << splits << " splits, " << (cores == AttentionCores::kBest ? "best" : "f32")
                                        << " cores");
      DeviceBuffer scratch(std::max<size_t>(4, AttentionPartialFloats(rows, heads, splits, hd) * 4));
      PagedAttention(nullptr, cache, queries, dq.as<float>(), heads * hd, heads, 0.125f, dgot.as<float>(),
                     heads * hd, {splits, scratch.as<float>()}, cores);
      SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
      ExpectClose(Decode(Download(dgot), DType::kF32), want, cores == AttentionCores::kBest ? tensor_tolerance : 1e-5);
    }
  }

  // MLA's latent cache (entry 576 = 512 + 64).
  if (t == DType::kBF16) return;
  const int64_t latent = 512, rope = 64, entry = latent + rope;
  const std::vector<float> entries = Random(n_all * entry, 64);
  DeviceBuffer dlat(num_blocks * block_size * entry * ElementBytes(t));
  const DeviceLatentLayer lat{dlat.data(), num_blocks, block_size, latent, rope, t};
  DeviceBuffer dentries = Upload(entries.data(), entries.size() * 4);
  WriteLatents(nullptr, lat, all, dentries.as<float>(), entry);
  const std::vector<float> ql = Random(rows * heads * entry, 65, 0.05f);
  DeviceBuffer dql = Upload(ql.data(), ql.size() * 4), dlwant(rows * heads * latent * 4), dlgot(dlwant.bytes());
  MlaLatentAttention(nullptr, lat, queries, dql.as<float>(), heads * entry, heads, 0.1f, dlwant.as<float>(),
                     heads * latent);
  DeviceBuffer scratch(AttentionPartialFloats(rows, heads, 7, latent) * 4);
  MlaLatentAttention(nullptr, lat, queries, dql.as<float>(), heads * entry, heads, 0.1f, dlgot.as<float>(),
                     heads * latent, {7, scratch.as<float>()});
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectClose(Decode(Download(dlgot), DType::kF32), Decode(Download(dlwant), DType::kF32), 1e-5);
}

// One tensor-core tile (mma.cuh) against the host's sum: a lane's fragments gathered by
// the documented layout give C += A B exactly where the products are (f16/bf16 elements
// multiply exactly in f32; only the f32 sums round), and A split into two roundings gives
// the f32 A's product within 2^-15 (bf16) or 2^-20 (f16) of the largest term.
TEST(CudaTensorCores, TileFollowsTheFragmentLayout) {
  SKIP_WITHOUT_GPU();
  for (const DType t : {DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(t));
    const std::vector<float> a = Random(16 * 16, 91), c0 = Random(16 * 8, 93);
    const Typed a_t = Round(a, t), b = Round(Random(16 * 8, 92), t);
    DeviceBuffer da = Upload(a.data(), a.size() * 4), db = Upload(b.bytes.data(), b.bytes.size());
    for (const bool split : {false, true}) {
      SCOPED_TRACE(split ? "A as two roundings" : "A rounded once");
      DeviceBuffer dc = Upload(c0.data(), c0.size() * 4);
      MmaTileForTest(t, da.as<float>(), db.as<uint16_t>(), dc.as<float>(), split);
      const std::vector<float> got = Decode(Download(dc), DType::kF32);
      const std::vector<float>& a_used = split ? a : a_t.values;
      const double rel = !split ? 1e-6 : t == DType::kBF16 ? 1.0 / 32768 : 1.0 / (1 << 20);
      for (int i = 0; i < 16; ++i) {
        for (int j = 0; j < 8; ++j) {
          double want = c0[i * 8 + j], largest = std::fabs(want);
          for (int k = 0; k < 16; ++k) {
            const double term = static_cast<double>(a_used[i * 16 + k]) * b.values[k * 8 + j];
            want += term;
            largest = std::max(largest, std::fabs(term));
          }
          ASSERT_NEAR(got[i * 8 + j], want, rel * 16 * largest + 1e-7) << "C[" << i << "][" << j << "]";
        }
      }
    }
  }
}

// cp.async's copies land where they were sent (a row not read is zeros), and ldmatrix gives
// each lane the words mma.cuh's LoadMatrices documents, plain and transposed: the layout
// the attention kernels' key and value fragments rest on.
TEST(CudaTensorCores, MatrixLoadsFollowTheFragmentLayout) {
  SKIP_WITHOUT_GPU();
  constexpr int kUnreadRow = 11;
  std::vector<uint16_t> matrix(16 * 16);
  for (int i = 0; i < 16 * 16; ++i) matrix[i] = static_cast<uint16_t>(1000 + 7 * i);
  DeviceBuffer dm = Upload(matrix.data(), matrix.size() * 2), dout(32 * 8 * 4);
  MatrixLoadsForTest(dm.as<uint16_t>(), kUnreadRow, dout.as<uint32_t>());
  std::vector<uint32_t> got(32 * 8);
  dout.CopyToHost(got.data(), got.size() * 4);
  const auto element = [&](int r, int c) -> uint32_t { return r == kUnreadRow ? 0 : matrix[16 * r + c]; };
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
      const int r0 = 8 * (i % 2), c0 = 8 * (i / 2);
      EXPECT_EQ(got[8 * lane + i], element(r0 + g, c0 + 2 * t) | (element(r0 + g, c0 + 2 * t + 1) << 16))
          << "lane " << lane << " matrix " << i;
      EXPECT_EQ(got[8 * lane + 4 + i], element(r0 + 2 * t, c0 + g) | (element(r0 + 2 * t + 1, c0 + g) << 16))
          << "lane " << lane << " matrix " << i << " transposed";
    }
  }
}

// A step of prompt chunks for the tiled-attention tests: sequence s has seqs[s].start
// cached positions and seqs[s].num_new new rows, 8 blocks of 16 positions each (block
// tables interleaved over the three sequences); chunks of more than one row as tiles of
// kQueryTileRows, single rows listed as untiled (the per-row kernel's), or as tiles of one
// row too with tile_every_row.
struct PromptStep {
  struct Seq {
    int64_t start, num_new;
  };
  static constexpr int kBlockSize = 16, kBlocksPerSeq = 8;
  explicit PromptStep(const std::vector<Seq>& seqs, bool tile_every_row = false) {
    const int n = static_cast<int>(seqs.size());
    for (int s = 0; s < n; ++s) {
      for (int b = 0; b < kBlocksPerSeq; ++b) tables.push_back(static_cast<int32_t>(b * n + (n - 1 - s)));
    }
    for (int s = 0; s < n; ++s) {
      for (int64_t p = 0; p < seqs[s].start + seqs[s].num_new; ++p) all_seq.push_back(s), all_pos.push_back(p);
      for (int64_t i = 0; i < seqs[s].num_new; ++i) q_seq.push_back(s), q_pos.push_back(seqs[s].start + i);
      if (seqs[s].num_new == 1 && !tile_every_row) {
        untiled.push_back(static_cast<int32_t>(rows));
      } else {
        for (int64_t i = 0; i < seqs[s].num_new; i += kQueryTileRows) {
          QueryTile tile;
          tile.first_row = static_cast<int32_t>(rows + i);
          tile.num_rows = static_cast<int32_t>(std::min<int64_t>(kQueryTileRows, seqs[s].num_new - i));
          tile.seq = s;
          tile.first_pos = seqs[s].start + i;
          tiles.push_back(tile);
          max_tile_rows = std::max<int64_t>(max_tile_rows, tile.num_rows);
        }
      }
      rows += seqs[s].num_new;
    }
    num_blocks = static_cast<int64_t>(tables.size());
  }
  int64_t cached() const { return static_cast<int64_t>(all_pos.size()); }
  std::vector<int32_t> tables, all_seq, q_seq, untiled;
  std::vector<int64_t> all_pos, q_pos;
  std::vector<QueryTile> tiles;
  int64_t rows = 0, num_blocks = 0, max_tile_rows = 0;
};

// Prompt chunks through the tiled kernel and the rest through the per-row one (its rows
// given as a list) give what the per-row kernel gives for every row: a 45-row chunk after
// 10 cached positions (tiles of 32 + 13), a fresh 70-row prompt (32 + 32 + 6) and a decode
// row. Shapes: GQA 8 heads over 2 (one block of 4 a group on the tensor cores) with
// head_dim 64, 80 (padded lanes, half an mma k-step unused) and 256 (f32 cores only); 7
// heads over 1 at 128 (blocks of 4 and 3); 12 over 2 at 72 (two blocks of 3, a k-step half
// past head_dim); MHA at 34 (not 16-byte slots: f32 cores). The tensor cores round each
// probability to the cache type (f16: 2^-11 relative, bf16: 2^-8) before it weights a value,
// so their outputs are within about that of the f32 kernel's, which is within 1e-5.
TEST_P(CudaKernels, TiledPromptAttentionMatchesTheRowKernel) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  struct Shape {
    int64_t heads, kv_heads, hd;
  };
  const double tensor_tolerance = t == DType::kF16 ? 1.0 / 4096 : t == DType::kBF16 ? 1.0 / 512 : 1e-5;
  for (const Shape shape : {Shape{8, 2, 64}, Shape{8, 2, 80}, Shape{8, 2, 256}, Shape{7, 1, 128}, Shape{12, 2, 72},
                            Shape{3, 3, 34}}) {
    const int64_t heads = shape.heads, kv_heads = shape.kv_heads, hd = shape.hd, width = kv_heads * hd;
    SCOPED_TRACE(::testing::Message() << heads << " heads over " << kv_heads << ", head_dim " << hd);
    const PromptStep step({{10, 45}, {0, 70}, {90, 1}});
    const int block_size = PromptStep::kBlockSize, blocks_per_seq = PromptStep::kBlocksPerSeq;
    const int64_t num_blocks = step.num_blocks;
    const std::vector<int32_t>& tables = step.tables;
    const std::vector<QueryTile>& tiles = step.tiles;
    const std::vector<int32_t>& untiled = step.untiled;
    const int64_t n_all = step.cached(), rows = step.rows, ldq = heads * hd;
    const std::vector<float> k = Random(n_all * width, 81), v = Random(n_all * width, 82);
    DeviceBuffer dk_cache(num_blocks * block_size * width * ElementBytes(t)), dv_cache(dk_cache.bytes());
    const DeviceKvLayer cache{dk_cache.data(), dv_cache.data(), num_blocks, block_size, kv_heads, hd, t};
    DeviceBuffer dtables = Upload(tables.data(), tables.size() * 4);
    const RowsOnDevice all_dev(step.all_seq, step.all_pos, dtables, blocks_per_seq);
    DeviceBuffer dk = Upload(k.data(), k.size() * 4), dv = Upload(v.data(), v.size() * 4);
    WriteKv(nullptr, cache, all_dev.rows, dk.as<float>(), width, dv.as<float>(), width);
    const RowsOnDevice q_dev(step.q_seq, step.q_pos, dtables, blocks_per_seq);
    const std::vector<float> q = Random(rows * ldq, 83);
    DeviceBuffer dq = Upload(q.data(), q.size() * 4), dwant(q.size() * 4), dgot(q.size() * 4);
    const DeviceRows all_rows = q_dev.rows;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    PagedAttention(nullptr, cache, all_rows, dq.as<float>(), ldq, heads, scale, dwant.as<float>(), ldq, {},
                   AttentionCores::kF32);
    DeviceBuffer dtiles = Upload(tiles.data(), tiles.size() * sizeof(QueryTile));
    DeviceBuffer duntiled = Upload(untiled.data(), untiled.size() * 4);
    DeviceRows rest = all_rows;
    rest.num_rows = static_cast<int64_t>(untiled.size());
    rest.row_ids = duntiled.as<int32_t>();
    // The f32 cores last: the split check below keeps their tiled rows.
    for (const AttentionCores cores : {AttentionCores::kBest, AttentionCores::kF32}) {
      const bool tensor_cores = cores == AttentionCores::kBest && t != DType::kF32 && hd % 8 == 0 && hd <= 128;
      SCOPED_TRACE(tensor_cores ? "tensor cores" : "f32 cores");
      SHOAL_CUDA_CHECK(cudaMemset(dgot.data(), 0xff, dgot.bytes()));  // NaNs wherever nothing writes
      PagedAttentionTiled(nullptr, cache, all_rows, dtiles.as<QueryTile>(), static_cast<int64_t>(tiles.size()),
                          dq.as<float>(), ldq, heads, scale, dgot.as<float>(), ldq, cores);
      PagedAttention(nullptr, cache, rest, dq.as<float>(), ldq, heads, scale, dgot.as<float>(), ldq, {}, cores);
      SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
      ExpectClose(Decode(Download(dgot), DType::kF32), Decode(Download(dwant), DType::kF32),
                  tensor_cores ? tensor_tolerance : 1e-5);
    }
    // The untiled rows split over positions too (decode beside a prompt: the step's usual
    // shape), the scratch sized for the listed rows only: the f32 cores' tiled rows stay.
    DeviceBuffer scratch(AttentionPartialFloats(rest.num_rows, heads, 7, hd) * 4);
    for (const AttentionCores cores : {AttentionCores::kBest, AttentionCores::kF32}) {
      const bool tensor_cores = cores == AttentionCores::kBest && t != DType::kF32 && hd % 8 == 0 && hd <= 128;
      SCOPED_TRACE(tensor_cores ? "split, tensor cores" : "split, f32 cores");
      PagedAttention(nullptr, cache, rest, dq.as<float>(), ldq, heads, scale, dgot.as<float>(), ldq,
                     {7, scratch.as<float>()}, cores);
      SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
      ExpectClose(Decode(Download(dgot), DType::kF32), Decode(Download(dwant), DType::kF32),
                  tensor_cores ? tensor_tolerance : 1e-5);
    }
  }
}

// MLA on the tensor cores gives what the per-row kernel gives for every row, within the
// probabilities' rounding (as the tiled GQA test): prompt tiles with a decode row left to
// the per-row kernel; then every row a tile (decode rows as tiles of one, as the DeepSeek
// model runs them), unsplit and split over positions 3 and 8 ways (empty splits
// included: 8 splits of a 46-position row). Entries: DeepSeek's (512 + 64) with 4 heads
// (two rows' pairs a block), a tiny model's (32 + 8) with 3 heads (pairs straddling rows
// and blocks), 96 + 16 with 5. An f32 cache is not the tensor cores' (MlaTilesOnTensorCores).
TEST_P(CudaKernels, MlaTiledAttentionMatchesTheRowKernel) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  struct Shape {
    int64_t latent, rope, heads;
  };
  for (const Shape shape : {Shape{512, 64, 4}, Shape{32, 8, 3}, Shape{96, 16, 5}}) {
    const int64_t latent = shape.latent, rope = shape.rope, heads = shape.heads, entry = latent + rope;
    SCOPED_TRACE(::testing::Message() << latent << " + " << rope << ", " << heads << " heads");
    const std::vector<PromptStep::Seq> seqs = {{10, 45}, {0, 40}, {45, 1}};
    const PromptStep step(seqs), every_row(seqs, /*tile_every_row=*/true);
    const int64_t num_blocks = step.num_blocks, rows = step.rows, ldq = heads * entry, ldo = heads * latent;
    DeviceBuffer dcache(num_blocks * PromptStep::kBlockSize * entry * ElementBytes(t));
    const DeviceLatentLayer cache{dcache.data(), num_blocks, PromptStep::kBlockSize, latent, rope, t};
    if (t == DType::kF32) {
      EXPECT_FALSE(MlaTilesOnTensorCores(cache));
      continue;
    }
    ASSERT_TRUE(MlaTilesOnTensorCores(cache));
    DeviceBuffer dtables = Upload(step.tables.data(), step.tables.size() * 4);
    const RowsOnDevice all_dev(step.all_seq, step.all_pos, dtables, PromptStep::kBlocksPerSeq);
    const std::vector<float> entries = Random(step.cached() * entry, 61);
    DeviceBuffer dentries = Upload(entries.data(), entries.size() * 4);
    WriteLatents(nullptr, cache, all_dev.rows, dentries.as<float>(), entry);
    const RowsOnDevice q_dev(step.q_seq, step.q_pos, dtables, PromptStep::kBlocksPerSeq);
    const std::vector<float> q = Random(rows * ldq, 62, 2.0f);
    DeviceBuffer dq = Upload(q.data(), q.size() * 4), dwant(rows * ldo * 4), dgot(rows * ldo * 4);
    const float scale = 1.0f / std::sqrt(static_cast<float>(entry));
    MlaLatentAttention(nullptr, cache, q_dev.rows, dq.as<float>(), ldq, heads, scale, dwant.as<float>(), ldo);
    const std::vector<float> want = Decode(Download(dwant), DType::kF32);
    const double tolerance = t == DType::kF16 ? 1.0 / 4096 : 1.0 / 512;
    {
      SCOPED_TRACE("prompt tiles, a decode row per row");
      SHOAL_CUDA_CHECK(cudaMemset(dgot.data(), 0xff, dgot.bytes()));  // NaNs wherever nothing writes
      DeviceBuffer dtiles = Upload(step.tiles.data(), step.tiles.size() * sizeof(QueryTile));
      DeviceBuffer duntiled = Upload(step.untiled.data(), step.untiled.size() * 4);
      MlaLatentAttentionTiled(nullptr, cache, q_dev.rows, dtiles.as<QueryTile>(),
                              static_cast<int64_t>(step.tiles.size()), step.max_tile_rows, dq.as<float>(), ldq, heads,
                              scale, dgot.as<float>(), ldo);
      DeviceRows rest = q_dev.rows;
      rest.num_rows = static_cast<int64_t>(step.untiled.size());
      rest.row_ids = duntiled.as<int32_t>();
      MlaLatentAttention(nullptr, cache, rest, dq.as<float>(), ldq, heads, scale, dgot.as<float>(), ldo);
      SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
      ExpectClose(Decode(Download(dgot), DType::kF32), want, tolerance);
    }
    DeviceBuffer dtiles = Upload(every_row.tiles.data(), every_row.tiles.size() * sizeof(QueryTile));
    for (const int splits : {1, 3, 8}) {
      SCOPED_TRACE(::testing::Message() << "every row a tile, " << splits << " splits");
      SHOAL_CUDA_CHECK(cudaMemset(dgot.data(), 0xff, dgot.bytes()));
      DeviceBuffer scratch(std::max<size_t>(4, AttentionPartialFloats(rows, heads, splits, latent) * 4));
      MlaLatentAttentionTiled(nullptr, cache, q_dev.rows, dtiles.as<QueryTile>(),
                              static_cast<int64_t>(every_row.tiles.size()), every_row.max_tile_rows, dq.as<float>(),
                              ldq, heads, scale, dgot.as<float>(), ldo, {splits, scratch.as<float>()});
      SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
      ExpectClose(Decode(Download(dgot), DType::kF32), want, tolerance);
    }
  }
}

// A sequence whose block table is exactly as long as its positions need (100 positions,
// 7 blocks of 16, the table's last entry the allocation's last word), through every
// attention kernel: tiles of 32 keys and split ranges that end inside a block must not
// read the table past it. The results agree kernel with kernel; under the emulator's
// AddressSanitizer tree (SHOAL_SIMT_ASAN=1) and compute-sanitizer's memcheck (the GPU
// bundle) a read past the table's end stops the test. Unsplit, a block walks 4 tiles, so
// the tensor-core kernels' two shared-memory tiles are each filled a second time while
// the other is read (a missing barrier before those copies shows here).
TEST_P(CudaKernels, AttentionReadsNoBlockTableEntryPastTheSequencesLastBlock) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  constexpr int kBlockSize = 16;
  constexpr int64_t kPositions = 100, kBlocks = (kPositions + kBlockSize - 1) / kBlockSize;
  std::vector<int32_t> table(kBlocks);
  for (int64_t b = 0; b < kBlocks; ++b) table[b] = static_cast<int32_t>(kBlocks - 1 - b);
  DeviceBuffer dtable = Upload(table.data(), table.size() * 4);
  std::vector<int32_t> all_seq(kPositions, 0);
  std::vector<int64_t> all_pos(kPositions);
  std::iota(all_pos.begin(), all_pos.end(), 0);
  const RowsOnDevice all_dev(all_seq, all_pos, dtable, kBlocks);
  // The last 45 positions as query rows: one tile of 32 and one of 13, or every row a tile.
  constexpr int64_t kRows = 45;
  std::vector<int32_t> q_seq(kRows, 0);
  std::vector<int64_t> q_pos(kRows);
  std::iota(q_pos.begin(), q_pos.end(), kPositions - kRows);
  const RowsOnDevice q_dev(q_seq, q_pos, dtable, kBlocks);
  const auto tile_of = [&](int64_t first, int64_t rows) {
    QueryTile tile;
    tile.first_row = static_cast<int32_t>(first);
    tile.num_rows = static_cast<int32_t>(rows);
    tile.first_pos = q_pos[first];
    return tile;
  };
  std::vector<QueryTile> tiles, row_tiles;
  for (int64_t i = 0; i < kRows; i += kQueryTileRows) {
    tiles.push_back(tile_of(i, std::min<int64_t>(kQueryTileRows, kRows - i)));
  }
  for (int64_t i = 0; i < kRows; ++i) row_tiles.push_back(tile_of(i, 1));
  DeviceBuffer dtiles = Upload(tiles.data(), tiles.size() * sizeof(QueryTile));
  DeviceBuffer drow_tiles = Upload(row_tiles.data(), row_tiles.size() * sizeof(QueryTile));
  const double tolerance = t == DType::kF16 ? 1.0 / 4096 : t == DType::kBF16 ? 1.0 / 512 : 1e-5;
  {
    SCOPED_TRACE("GQA, 8 heads over 2, head_dim 64");
    const int64_t heads = 8, kv_heads = 2, hd = 64, width = kv_heads * hd, ldq = heads * hd;
    DeviceBuffer dk(kBlocks * kBlockSize * width * ElementBytes(t)), dv(dk.bytes());
    const DeviceKvLayer cache{dk.data(), dv.data(), kBlocks, kBlockSize, kv_heads, hd, t};
    const std::vector<float> k = Random(kPositions * width, 71), v = Random(kPositions * width, 72);
    DeviceBuffer dkin = Upload(k.data(), k.size() * 4), dvin = Upload(v.data(), v.size() * 4);
    WriteKv(nullptr, cache, all_dev.rows, dkin.as<float>(), width, dvin.as<float>(), width);
    const std::vector<float> q = Random(kRows * ldq, 73);
    DeviceBuffer dq = Upload(q.data(), q.size() * 4), dwant(kRows * ldq * 4), dgot(dwant.bytes());
    const float scale = 0.125f;
    PagedAttention(nullptr, cache, q_dev.rows, dq.as<float>(), ldq, heads, scale, dwant.as<float>(), ldq, {},
                   AttentionCores::kF32);
    const std::vector<float> want = Decode(Download(dwant), DType::kF32);
    for (const AttentionCores cores : {AttentionCores::kBest, AttentionCores::kF32}) {
      SCOPED_TRACE(cores == AttentionCores::kBest ? "best cores" : "f32 cores");
      for (const int splits : {1, 3, 8}) {
        SCOPED_TRACE(::testing::Message() << splits << " splits");
        DeviceBuffer scratch(std::max<size_t>(4, AttentionPartialFloats(kRows, heads, splits, hd) * 4));
        PagedAttention(nullptr, cache, q_dev.rows, dq.as<float>(), ldq, heads, scale, dgot.as<float>(), ldq,
                       {splits, scratch.as<float>()}, cores);
        ExpectClose(Decode(Download(dgot), DType::kF32), want, tolerance);
      }
      PagedAttentionTiled(nullptr, cache, q_dev.rows, dtiles.as<QueryTile>(), static_cast<int64_t>(tiles.size()),
                          dq.as<float>(), ldq, heads, scale, dgot.as<float>(), ldq, cores);
      ExpectClose(Decode(Download(dgot), DType::kF32), want, tolerance);
    }
  }
  {
    SCOPED_TRACE("MLA, 32 + 8, 3 heads");
    const int64_t latent = 32, rope = 8, heads = 3, entry = latent + rope, ldq = heads * entry, ldo = heads * latent;
    DeviceBuffer dcache(kBlocks * kBlockSize * entry * ElementBytes(t));
    const DeviceLatentLayer cache{dcache.data(), kBlocks, kBlockSize, latent, rope, t};
    const std::vector<float> entries = Random(kPositions * entry, 74);
    DeviceBuffer dentries = Upload(entries.data(), entries.size() * 4);
    WriteLatents(nullptr, cache, all_dev.rows, dentries.as<float>(), entry);
    const std::vector<float> q = Random(kRows * ldq, 75);
    DeviceBuffer dq = Upload(q.data(), q.size() * 4), dwant(kRows * ldo * 4), dgot(dwant.bytes());
    const float scale = 1.0f / std::sqrt(static_cast<float>(entry));
    MlaLatentAttention(nullptr, cache, q_dev.rows, dq.as<float>(), ldq, heads, scale, dwant.as<float>(), ldo);
    const std::vector<float> want = Decode(Download(dwant), DType::kF32);
    for (const int splits : {1, 3, 8}) {
      SCOPED_TRACE(::testing::Message() << splits << " splits");
      DeviceBuffer scratch(std::max<size_t>(4, AttentionPartialFloats(kRows, heads, splits, latent) * 4));
      MlaLatentAttention(nullptr, cache, q_dev.rows, dq.as<float>(), ldq, heads, scale, dgot.as<float>(), ldo,
                         {splits, scratch.as<float>()});
      ExpectClose(Decode(Download(dgot), DType::kF32), want, 1e-5);
      if (!MlaTilesOnTensorCores(cache)) continue;
      MlaLatentAttentionTiled(nullptr, cache, q_dev.rows, drow_tiles.as<QueryTile>(), kRows, 1, dq.as<float>(), ldq,
                              heads, scale, dgot.as<float>(), ldo, {splits, scratch.as<float>()});
      ExpectClose(Decode(Download(dgot), DType::kF32), want, tolerance);
      if (splits == 1) {
        MlaLatentAttentionTiled(nullptr, cache, q_dev.rows, dtiles.as<QueryTile>(),
                                static_cast<int64_t>(tiles.size()), kQueryTileRows, dq.as<float>(), ldq, heads, scale,
                                dgot.as<float>(), ldo);
        ExpectClose(Decode(Download(dgot), DType::kF32), want, tolerance);
      }
    }
  }
}

// DeepSeek's decode rows replayed from a CUDA graph: their kernel (81 KB of shared memory,
// above the 48 KB a kernel gets without opting in) must be opted in before the decode step
// is captured, which the prompt step before it does for every pair kernel (the emulator
// refuses an opt-in inside a capture, so one left to the decode row's first launch ends
// this test). The replayed row matches the same launch run eagerly, exactly.
TEST_P(CudaKernels, MlaDecodeRowsReplayFromAGraphCapturedAfterThePromptStep) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  if (t == DType::kF32) GTEST_SKIP() << "f32 latent caches take the f32 kernels, which need no opt-in";
  const int64_t latent = 512, rope = 64, heads = 16, entry = latent + rope, ldq = heads * entry, ldo = heads * latent;
  const PromptStep prompt({{0, 39}}), decode({{39, 1}}, /*tile_every_row=*/true);
  DeviceBuffer dcache(prompt.num_blocks * PromptStep::kBlockSize * entry * ElementBytes(t));
  const DeviceLatentLayer cache{dcache.data(), prompt.num_blocks, PromptStep::kBlockSize, latent, rope, t};
  ASSERT_TRUE(MlaTilesOnTensorCores(cache));
  DeviceBuffer dtables = Upload(prompt.tables.data(), prompt.tables.size() * 4);
  std::vector<int32_t> all_seq(40, 0);
  std::vector<int64_t> all_pos(40);
  std::iota(all_pos.begin(), all_pos.end(), 0);
  const RowsOnDevice all_dev(all_seq, all_pos, dtables, PromptStep::kBlocksPerSeq);
  const std::vector<float> entries = Random(40 * entry, 76);
  DeviceBuffer dentries = Upload(entries.data(), entries.size() * 4);
  WriteLatents(nullptr, cache, all_dev.rows, dentries.as<float>(), entry);
  const float scale = 1.0f / std::sqrt(static_cast<float>(entry));
  cudaStream_t stream = nullptr;
  SHOAL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  {
    SCOPED_TRACE("the prompt step, eager");
    const RowsOnDevice q_dev(prompt.q_seq, prompt.q_pos, dtables, PromptStep::kBlocksPerSeq);
    const std::vector<float> q = Random(prompt.rows * ldq, 77);
    DeviceBuffer dq = Upload(q.data(), q.size() * 4), dout(prompt.rows * ldo * 4);
    DeviceBuffer dtiles = Upload(prompt.tiles.data(), prompt.tiles.size() * sizeof(QueryTile));
    // The non-blocking stream does not wait for the legacy stream's WriteLatents, nor for
    // the DMA of a pageable cudaMemcpy, which may return before it lands.
    SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
    MlaLatentAttentionTiled(stream, cache, q_dev.rows, dtiles.as<QueryTile>(),
                            static_cast<int64_t>(prompt.tiles.size()), prompt.max_tile_rows, dq.as<float>(), ldq,
                            heads, scale, dout.as<float>(), ldo);
    SHOAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  const RowsOnDevice q_dev(decode.q_seq, decode.q_pos, dtables, PromptStep::kBlocksPerSeq);
  const std::vector<float> q = Random(ldq, 78);
  DeviceBuffer dq = Upload(q.data(), q.size() * 4), dwant(ldo * 4), dgot(ldo * 4);
  DeviceBuffer dtiles = Upload(decode.tiles.data(), decode.tiles.size() * sizeof(QueryTile));
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());  // the uploads have landed (as above)
  const auto step = [&](float* out) {
    MlaLatentAttentionTiled(stream, cache, q_dev.rows, dtiles.as<QueryTile>(), 1, 1, dq.as<float>(), ldq, heads,
                            scale, out, ldo);
  };
  // The decode kernel's first launch is the captured one; the eager one comes after.
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  SHOAL_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  step(dgot.as<float>());
  SHOAL_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  SHOAL_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  SHOAL_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  step(dwant.as<float>());
  SHOAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::vector<float> want = Decode(Download(dwant), DType::kF32), got = Decode(Download(dgot), DType::kF32);
  EXPECT_EQ(got, want);
  SHOAL_CUDA_CHECK(cudaGraphExecDestroy(exec));
  SHOAL_CUDA_CHECK(cudaGraphDestroy(graph));
  SHOAL_CUDA_CHECK(cudaStreamDestroy(stream));
}

// Per-head products as MLA uses them, against a per-head reference: queries into latent
// space through [in, out] slices (W_uk), latents out through [out, in] slices (W_uv), the
// heads' inputs and outputs interleaved within wider rows (strided, not dense).
TEST_P(CudaKernels, BatchedGemmMultipliesEachHeadsSliceInBothLayouts) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int64_t T = 5, heads = 3, in = 48, out = 40, head_rows = in + out;  // a head: in rows, then out rows
  const int64_t ldx = heads * in + 7, ldy = heads * out + 3;               // padded rows
  const Typed x = Round(Random(T * ldx, 21), t), w = Round(Random(heads * head_rows * out, 22, 0.1f), t);
  DeviceBuffer dx = Upload(x.bytes.data(), x.bytes.size()), dw = Upload(w.bytes.data(), w.bytes.size());
  CublasGemm gemm(nullptr);
  for (const bool out_by_in : {false, true}) {
    SCOPED_TRACE(out_by_in ? "W [out, in]" : "W [in, out]");
    // Each head's storage is head_rows rows of `out` (kv_b_proj's rank columns): the
    // first `in` rows as an [in, out] W (W_uk), the next `out` rows as an [out, in'] W
    // with in' = out (W_uv); rows `out` apart in both.
    const int64_t k_in = out_by_in ? out : in;  // the product's inner size
    const int64_t w_offset = out_by_in ? in * out : 0;
    std::vector<float> want(T * ldy, 0.0f);
    for (int64_t h = 0; h < heads; ++h) {
      const float* wh = w.values.data() + w_offset + h * head_rows * out;
      for (int64_t r = 0; r < T; ++r) {
        for (int64_t o = 0; o < out; ++o) {
          double sum = 0;
          for (int64_t i = 0; i < k_in; ++i) {
            const float wv = out_by_in ? wh[o * out + i] : wh[i * out + o];
            sum += static_cast<double>(x.values[r * ldx + h * in + i]) * wv;
          }
          want[r * ldy + h * out + o] = static_cast<float>(sum);
        }
      }
    }
    DeviceBuffer dy(T * ldy * 4);
    SHOAL_CUDA_CHECK(cudaMemset(dy.data(), 0, dy.bytes()));
    gemm.RunBatched(t, {dx.data(), ldx, in}, {dw.as<std::byte>() + w_offset * ElementBytes(t), out, head_rows * out},
                    out_by_in, T, k_in, out, DType::kF32, dy.data(), ldy, out, heads, /*accumulate=*/false);
    SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
    ExpectClose(Decode(Download(dy), DType::kF32), want, 1e-4);  // padding stays 0 in both
  }
}

// MLA's absorbed attention against the CPU's: DeepSeek-V2/V3's entry (512 latent + 64
// rope), 4 heads (one block) and 12 (two blocks of 6 sharing nothing), a decode row over 40 cached
// positions, a 6-row chunk after 9, a fresh 3-row prompt; scattered block tables. The
// entries are rounded to the cache type first, so both caches hold the same numbers.
TEST_P(CudaKernels, MlaLatentAttentionMatchesCpuOverMixedRows) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  if (t == DType::kBF16) GTEST_SKIP() << "the CPU latent cache keeps f32 or f16; bf16 is covered by the model tests";
  const int64_t latent = 512, rope = 64, entry = latent + rope;
  for (const int64_t heads : {int64_t{4}, int64_t{12}}) {  // one block of heads, two of 6
  SCOPED_TRACE(heads);
  const int block_size = 16, blocks_per_seq = 4;
  const int64_t num_blocks = 3 * blocks_per_seq;
  struct Seq {
    int64_t start, num_new;
  };
  const std::vector<Seq> seqs = {{40, 1}, {9, 6}, {0, 3}};
  std::vector<int32_t> tables;
  for (int s = 0; s < 3; ++s) {
    for (int b = 0; b < blocks_per_seq; ++b) tables.push_back(static_cast<int32_t>(b * 3 + (2 - s)));
  }
  std::vector<int32_t> all_seq;
  std::vector<int64_t> all_pos;
  for (int s = 0; s < 3; ++s) {
    for (int64_t p = 0; p < seqs[s].start + seqs[s].num_new; ++p) all_seq.push_back(s), all_pos.push_back(p);
  }
  const int64_t n_all = static_cast<int64_t>(all_pos.size());
  const std::vector<float> entries = Round(Random(n_all * entry, 31), t).values;

  std::vector<float> cpu_data(num_blocks * block_size * entry);
  const cpu::PagedLatentLayer cpu_cache{cpu_data.data(), num_blocks, block_size, latent, rope, DType::kF32};
  std::vector<cpu::AttentionSequence> cpu_seqs;
  std::vector<int32_t> q_seq;
  std::vector<int64_t> q_pos;
  int64_t written = 0, first_row = 0;
  for (int s = 0; s < 3; ++s) {
    const std::span<const int32_t> table(&tables[s * blocks_per_seq], blocks_per_seq);
    const int64_t n = seqs[s].start + seqs[s].num_new;
    cpu::WriteLatents(cpu_cache, {0, n, 0, table}, &entries[written * entry], entry);
    written += n;
    cpu_seqs.push_back({first_row, seqs[s].num_new, seqs[s].start, table});
    for (int64_t i = 0; i < seqs[s].num_new; ++i) q_seq.push_back(s), q_pos.push_back(seqs[s].start + i);
    first_row += seqs[s].num_new;
  }
  const int64_t rows = first_row, ldq = heads * entry, ldo = heads * latent;
  const std::vector<float> q = Random(rows * ldq, 32, 0.05f);
  std::vector<float> want(rows * ldo);
  ThreadPool pool(1);
  const float scale = 0.07f;
  cpu::MlaLatentAttention(&pool, cpu_cache, cpu_seqs, q.data(), ldq, heads, scale, want.data(), ldo);

  DeviceBuffer dcache(num_blocks * block_size * entry * ElementBytes(t));
  const DeviceLatentLayer cache{dcache.data(), num_blocks, block_size, latent, rope, t};
  DeviceBuffer dtables = Upload(tables.data(), tables.size() * 4);
  const RowsOnDevice all_dev(all_seq, all_pos, dtables, blocks_per_seq);
  DeviceBuffer dentries = Upload(entries.data(), entries.size() * 4);
  WriteLatents(nullptr, cache, all_dev.rows, dentries.as<float>(), entry);
  const RowsOnDevice q_dev(q_seq, q_pos, dtables, blocks_per_seq);
  DeviceBuffer dq = Upload(q.data(), q.size() * 4), dout(want.size() * 4);
  MlaLatentAttention(nullptr, cache, q_dev.rows, dq.as<float>(), ldq, heads, scale, dout.as<float>(), ldo);
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectClose(Decode(Download(dout), DType::kF32), want, 1e-4);
  // The cache holds exactly the rounded entries wherever the CPU's does.
  std::vector<int64_t> lengths;
  for (const Seq& q : seqs) lengths.push_back(q.start + q.num_new);
  ExpectSameSlots(Decode(Download(dcache), t), cpu_data, lengths, entry, [&](int s, int64_t p) {
    return cpu_cache.Offset(std::span<const int32_t>(&tables[s * blocks_per_seq], blocks_per_seq), p);
  });
  }
}

// DeepSeek's latent norm: the first n of wider f32 rows normalized in place (the rope
// part after them untouched), and into the GEMM type with its own stride.
TEST_P(CudaKernels, RmsNormStridedNormalizesInPlaceWithinWiderRows) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int64_t rows = 3, n = 96, ld = 130;
  const std::vector<float> x = Random(rows * ld, 41);
  const std::vector<float> w = Random(n, 42);
  std::vector<float> want = x;
  for (int64_t r = 0; r < rows; ++r) cpu::RmsNorm(&x[r * ld], w.data(), &want[r * ld], 1, n, 1e-6f);
  DeviceBuffer dx = Upload(x.data(), x.size() * 4), dw = Upload(w.data(), w.size() * 4);
  DeviceBuffer dout(rows * n * ElementBytes(t));
  RmsNormStrided(nullptr, dx.as<float>(), ld, dw.as<float>(), t, dout.data(), n, rows, n, 1e-6f);
  RmsNormStrided(nullptr, dx.as<float>(), ld, dw.as<float>(), DType::kF32, dx.data(), ld, rows, n, 1e-6f);
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectClose(Decode(Download(dx), DType::kF32), want, 1e-5);
  std::vector<float> want_dense(rows * n);
  for (int64_t r = 0; r < rows; ++r) std::copy_n(&want[r * ld], n, &want_dense[r * n]);
  ExpectClose(Decode(Download(dout), t), want_dense, OutputTolerance(t, 1e-5));
}

// The mixture of experts' data movement: tokens gathered into an expert's rows, exactly;
// expert outputs added back with their weights, slot by slot, skipping other ranks' (-1).
TEST_P(CudaKernels, GatherRowsAndAddWeightedRowsRouteTokensThroughExperts) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int64_t T = 4, n = 70, k = 2;
  const Typed src = Round(Random(T * n, 51), t);
  const std::vector<int32_t> gather = {3, 0, 0, 2, 1};
  DeviceBuffer dsrc = Upload(src.bytes.data(), src.bytes.size()), dgather = Upload(gather.data(), gather.size() * 4);
  DeviceBuffer dg(gather.size() * n * ElementBytes(t));
  GatherRows(nullptr, t, dsrc.data(), dgather.as<int32_t>(), dg.data(), static_cast<int64_t>(gather.size()), n);
  const std::vector<float> expert_out = Random(5 * n, 52);
  const std::vector<int32_t> slot_rows = {1, 2, 4, -1, 3, -1, -1, 0};  // token t's slots 2t, 2t+1
  const std::vector<float> weights = {0.5f, 0.25f, 2.0f, 9.0f, -1.0f, 9.0f, 9.0f, 0.75f};
  const std::vector<float> h0 = Random(T * n, 53);
  std::vector<float> want = h0;
  for (int64_t tok = 0; tok < T; ++tok) {
    for (int64_t j = 0; j < k; ++j) {
      const int32_t row = slot_rows[tok * k + j];
      if (row < 0) continue;
      for (int64_t c = 0; c < n; ++c) want[tok * n + c] += weights[tok * k + j] * expert_out[row * n + c];
    }
  }
  DeviceBuffer dout = Upload(expert_out.data(), expert_out.size() * 4), dslots = Upload(slot_rows.data(), slot_rows.size() * 4);
  DeviceBuffer dweights = Upload(weights.data(), weights.size() * 4), dh = Upload(h0.data(), h0.size() * 4);
  AddWeightedRows(nullptr, dout.as<float>(), dslots.as<int32_t>(), dweights.as<float>(), k, dh.as<float>(), T, n);
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> got = Decode(Download(dg), t);
  for (size_t i = 0; i < gather.size(); ++i) {
    for (int64_t c = 0; c < n; ++c) ASSERT_EQ(got[i * n + c], src.values[gather[i] * n + c]) << "row " << i;
  }
  ExpectClose(Decode(Download(dh), DType::kF32), want, 1e-6);
}

// The decoder's norm: f32 residual rows in, the GEMM input type out, optionally gathering
// rows (the final norm over the want_logits rows).
TEST_P(CudaKernels, RmsNormRowsMatchesCpuAndGathersRows) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int64_t T = 6, n = 1000;
  const std::vector<float> x = Random(T * n, 21), w = Random(n, 22);
  const std::vector<int32_t> rows = {5, 0, 3};
  DeviceBuffer dx = Upload(x.data(), x.size() * 4), dw = Upload(w.data(), w.size() * 4);
  DeviceBuffer drows = Upload(rows.data(), rows.size() * 4);
  for (bool gather : {false, true}) {
    const int64_t R = gather ? 3 : T;
    std::vector<float> want(R * n);
    for (int64_t r = 0; r < R; ++r) cpu::RmsNorm(&x[(gather ? rows[r] : r) * n], w.data(), &want[r * n], 1, n, 1e-5f);
    DeviceBuffer dout(R * n * ElementBytes(t));
    RmsNormRows(nullptr, dx.as<float>(), gather ? drows.as<int32_t>() : nullptr, dw.as<float>(), t, dout.data(), R, n,
                1e-5f);
    SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
    SCOPED_TRACE(gather ? "gathered rows" : "all rows");
    ExpectClose(Decode(Download(dout), t), want, OutputTolerance(t, 1e-5));
  }
}

TEST_P(CudaKernels, SiluMulRowsMatchesCpuOverPackedGateUp) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int64_t T = 3, n = 1031;
  const Typed gu = Round(Random(T * 2 * n, 23, 3.0f), t);
  std::vector<float> want(T * n);
  for (int64_t r = 0; r < T; ++r) cpu::SiluMul(&gu.values[r * 2 * n], &gu.values[r * 2 * n + n], &want[r * n], n);
  DeviceBuffer dgu = Upload(gu.bytes.data(), gu.bytes.size()), dout(T * n * ElementBytes(t));
  SiluMulRows(nullptr, t, dgu.data(), dout.data(), T, n);
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectClose(Decode(Download(dout), t), want, OutputTolerance(t, 1e-5));
}

// A table of the weight type, f32 rows out: exactly the CPU's dequantized rows. Then the
// table as a tensor rank's slice of the vocabulary: ids outside it give zero rows.
TEST_P(CudaKernels, EmbeddingLookupMatchesCpuExactlyAndZeroesIdsOutsideItsSlice) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int64_t vocab = 50, width = 72;
  const Typed table = Round(Random(vocab * width, 24), t);
  const std::vector<int32_t> ids = {7, 0, 49, 7, 13};
  const int64_t T = static_cast<int64_t>(ids.size());
  const cpu::WeightMatrix m{t, table.bytes.data(), vocab, width, static_cast<size_t>(width * ElementBytes(t))};
  std::vector<float> want(T * width);
  cpu::EmbeddingLookup(m, ids.data(), T, want.data());
  DeviceBuffer dtable = Upload(table.bytes.data(), table.bytes.size()), dids = Upload(ids.data(), ids.size() * 4);
  DeviceBuffer dout(T * width * 4);
  EmbeddingLookup(nullptr, t, dtable.data(), width, dids.as<int32_t>(), T, dout.as<float>(), 0, vocab);
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectClose(Decode(Download(dout), DType::kF32), want, 0);

  // Rows [5, 20) of the table as a slice starting at id 5: 7, 7 and 13 are in it.
  const int64_t first = 5, count = 15;
  const std::byte* slice = dtable.as<std::byte>() + first * width * ElementBytes(t);
  EmbeddingLookup(nullptr, t, slice, width, dids.as<int32_t>(), T, dout.as<float>(), first, count);
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  for (int64_t r = 0; r < T; ++r) {
    if (ids[r] < first || ids[r] >= first + count) std::fill_n(&want[r * width], width, 0.0f);
  }
  SCOPED_TRACE("vocabulary slice [5, 20)");
  ExpectClose(Decode(Download(dout), DType::kF32), want, 0);
}

// f32 → t rounds to nearest even as the host does, t → f32 is exact.
TEST_P(CudaKernels, CastRoundsToNearestEvenAndWidensExactly) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int64_t n = 3001;
  const std::vector<float> x = Random(n, 25, 10.0f);
  const Typed rounded = Round(x, t);
  DeviceBuffer dx = Upload(x.data(), n * 4), dt(n * ElementBytes(t)), dback(n * 4);
  Cast(nullptr, DType::kF32, dx.data(), t, dt.data(), n);
  Cast(nullptr, t, dt.data(), DType::kF32, dback.data(), n);
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(Download(dt), rounded.bytes);
  ExpectClose(Decode(Download(dback), DType::kF32), rounded.values, 0);
}

INSTANTIATE_TEST_SUITE_P(Activations, CudaKernels, ::testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                         [](const ::testing::TestParamInfo<DType>& info) { return std::string(DTypeName(info.param)); });

TEST(CudaDecoderKernels, AddBiasAddsToEachRowWithinItsStride) {
  SKIP_WITHOUT_GPU();
  const int64_t T = 4, n = 300, ld = 320;
  const std::vector<float> y = Random(T * ld, 26), b = Random(n, 27);
  std::vector<float> want = y;
  for (int64_t r = 0; r < T; ++r) {
    for (int64_t i = 0; i < n; ++i) want[r * ld + i] += b[i];
  }
  DeviceBuffer dy = Upload(y.data(), y.size() * 4), db = Upload(b.data(), b.size() * 4);
  AddBias(nullptr, dy.as<float>(), T, ld, db.as<float>(), n);
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectClose(Decode(Download(dy), DType::kF32), want, 0);  // the padding past n untouched too
}

TEST(CudaDecoderKernels, AddIntoAddsElementwise) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 4099;
  const std::vector<float> x = Random(n, 29), y = Random(n, 30);
  std::vector<float> want(n);
  for (int64_t i = 0; i < n; ++i) want[i] = y[i] + x[i];
  DeviceBuffer dx = Upload(x.data(), n * 4), dy = Upload(y.data(), n * 4);
  AddInto(nullptr, dx.as<float>(), dy.as<float>(), n);
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  ExpectClose(Decode(Download(dy), DType::kF32), want, 0);
}

// Rows whose maximum repeats (the lowest index wins, as std::max_element), sits in the
// last element, or is -inf everywhere; a vocabulary not a multiple of the block.
TEST(CudaDecoderKernels, ArgmaxRowsMatchesMaxElementWithTies) {
  SKIP_WITHOUT_GPU();
  const int64_t rows = 5, n = 152064 + 7;
  std::vector<float> logits = Random(rows * n, 28);
  logits[0 * n + 100] = 50.0f;
  logits[0 * n + 90000] = 50.0f;  // tie: 100 wins
  logits[1 * n + n - 1] = 60.0f;
  std::fill_n(&logits[2 * n], n, -INFINITY);
  logits[3 * n + 5] = std::nanf("");  // never chosen
  logits[3 * n + 6] = 40.0f;
  std::vector<int32_t> want(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = &logits[r * n];
    want[r] = static_cast<int32_t>(std::max_element(row, row + n, [](float a, float b) {
                                     return std::isnan(a) || (!std::isnan(b) && a < b);
                                   }) - row);
  }
  ASSERT_EQ(want[0], 100);
  ASSERT_EQ(want[2], 0);
  DeviceBuffer dl = Upload(logits.data(), logits.size() * 4), dout(rows * 4);
  ArgmaxRows(nullptr, dl.as<float>(), rows, n, dout.as<int32_t>());
  std::vector<int32_t> got(rows);
  dout.CopyToHost(got.data(), rows * 4);
  EXPECT_EQ(got, want);
}

// The engine sampler's rules on the GPU: for rows of every kind (greedy with penalties,
// plain temperature, top-k, top-p, both with min-p, penalties with top-p, top-k 1, many
// tied logits under top-k and top-p, a temperature too small to divide by, an odd
// vocabulary past the block width; flat rows, which mostly take the whole row, and peaked
// ones, which take the candidates in shared memory), each with its own penalty tokens, and
// 48 draws each, SampleRows picks exactly Sampler::Sample's token from the same draw; a
// row with a NaN answers -1.
TEST(CudaSampling, SampleRowsMakeTheHostSamplersChoices) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 5003;
  struct Case {
    SamplingOptions o;
    bool ties = false;
    float head = 0.0f;  // > 0: 32 tokens at about this logit over a tail of N(0, 1), as a
                        // model's few likely tokens stand over a long tail
    float head_step = 0.25f;  // the logit between one head token and the next
  };
  auto opts = [](float t, int32_t k, float p, float min_p, float rep = 1, float pres = 0, float freq = 0) {
    SamplingOptions o;
    o.temperature = t, o.top_k = k, o.top_p = p, o.min_p = min_p;
    o.repetition_penalty = rep, o.presence_penalty = pres, o.frequency_penalty = freq;
    return o;
  };
  const std::vector<Case> cases = {
      {opts(0, 0, 1, 0, 1.3f, 0.5f, 0.2f)},      {opts(0.7f, 0, 1, 0)},
      {opts(1.0f, 40, 1, 0)},                     {opts(0.9f, 0, 0.9f, 0)},
      {opts(1.2f, 50, 0.8f, 0.05f)},              {opts(1.0f, 0, 1, 0.1f)},
      {opts(0.8f, 0, 0.95f, 0, 1.3f, 0.5f, 0.2f)}, {opts(1.0f, 1, 1, 0)},
      {opts(1.0f, 10, 0.5f, 0), true},            {opts(0.5f, 0, 0.7f, 0), true},
      {opts(1e-7f, 0, 1, 0, 1.1f, 0.1f, 0.2f)},  // below kGreedyTemperature: greedy, no draw
      // Peaked rows, whose kept tokens lie in a few bands below the largest probability
      // (the candidates' path): DeepSeek-R1's recommended 0.6 and top-p 0.95, a narrow
      // top-p, min-p alone, all three, ties under top-p; and a top-k past kCandidates and a
      // flat row's top-p 0.99999, which take the whole row.
      {opts(0.6f, 0, 0.95f, 0), false, 10.0f},    {opts(1.0f, 0, 0.5f, 0), false, 10.0f},
      {opts(1.0f, 0, 1, 0.05f), false, 10.0f},     {opts(0.8f, 20, 0.9f, 0.02f, 1.2f), false, 10.0f},
      {opts(1.0f, 0, 0.99f, 0), true, 10.0f},      {opts(1.0f, 4500, 1, 0), false, 10.0f},
      {opts(1.0f, 0, 0.99999f, 0)},
      // A top-k that takes exactly the candidates (32 tied tokens well above a tail that
      // holds a third of the mass): top-p's target is still of the mass top-k kept.
      {opts(1.0f, 32, 0.9f, 0), false, 6.0f, 0.0f},
  };
  // 20 prompt tokens and 10 output tokens with repeats, for the penalties; each case
  // shifts them, so every row reads its own range of penalty tokens.
  const std::vector<int32_t> base_tokens = {5,  9,  5, 400, 17, 2, 2,  2,  900, 31, 31, 77, 5000, 3, 3,
                                            44, 12, 4, 4,   8,  9, 9, 17, 1000, 2,  31, 31, 31,   7, 4999};
  const int64_t num_prompt = 20;
  std::vector<std::vector<int32_t>> case_tokens;
  std::vector<PenaltyToken> penalties;
  std::vector<std::pair<int32_t, int32_t>> case_range;
  for (size_t c = 0; c < cases.size(); ++c) {
    std::vector<int32_t> tokens = base_tokens;
    for (int32_t& t : tokens) t = static_cast<int32_t>((t + 37 * c) % n);
    std::map<int32_t, int32_t> counts;  // distinct tokens, with their output counts
    for (size_t i = 0; i < tokens.size(); ++i) counts[tokens[i]] += static_cast<int64_t>(i) >= num_prompt ? 1 : 0;
    const int32_t begin = static_cast<int32_t>(penalties.size());
    for (auto [t, count] : counts) penalties.push_back({t, count});
    case_range.push_back({begin, static_cast<int32_t>(penalties.size())});
    case_tokens.push_back(std::move(tokens));
  }

  constexpr int kDraws = 48;
  const int64_t rows = static_cast<int64_t>(cases.size()) * kDraws + 1;  // + the NaN row
  std::vector<float> logits(rows * n);
  std::vector<SamplingRow> params(rows);
  std::vector<int32_t> want(rows, -1);
  std::vector<std::vector<float>> host_probs(cases.size());  // each case's, as the host draws from them
  for (size_t c = 0; c < cases.size(); ++c) {
    std::vector<float> row = Random(n, 70 + static_cast<uint32_t>(c), cases[c].head > 0.0f ? 1.0f : 3.0f);
    if (cases[c].ties) {
      for (float& x : row) x = std::round(x);  // a few values, each held by hundreds of tokens
    }
    if (cases[c].head > 0.0f) {  // tied: 4 values 8 tokens each
      for (int j = 0; j < 32; ++j) row[(j * 157 + 11 * c) % n] = cases[c].head - cases[c].head_step * (cases[c].ties ? j / 8 : j);
    }
    if (!Sampler::IsGreedy(cases[c].o)) {
      std::vector<float> scratch = row;
      Sampler::ApplyPenalties(scratch, cases[c].o, case_tokens[c], num_prompt);
      for (float& l : scratch) l *= 1.0f / cases[c].o.temperature;
      host_probs[c] = Sampler::TruncatedProbs(scratch, cases[c].o.top_k, cases[c].o.top_p, cases[c].o.min_p);
    }
    std::mt19937_64 host_rng(1000 + c), draws(1000 + c);
    for (int d = 0; d < kDraws; ++d) {
      const int64_t r = static_cast<int64_t>(c) * kDraws + d;
      std::copy(row.begin(), row.end(), logits.begin() + r * n);
      std::vector<float> scratch = row;
      want[r] = Sampler::Sample(scratch, cases[c].o, case_tokens[c], num_prompt, &host_rng, false, 0).token_id;
      const SamplingOptions& o = cases[c].o;
      SamplingRow& p = params[r];
      p.temperature = o.temperature, p.top_k = o.top_k, p.top_p = o.top_p, p.min_p = o.min_p;
      p.repetition_penalty = o.repetition_penalty, p.presence_penalty = o.presence_penalty;
      p.frequency_penalty = o.frequency_penalty;
      p.penalty_begin = case_range[c].first, p.penalty_end = case_range[c].second;
      if (!Sampler::IsGreedy(o)) p.uniform = Sampler::Uniform(&draws);
    }
  }
  logits[(rows - 1) * n + 77] = std::nanf("");
  params[rows - 1].temperature = 1.0f;

  DeviceBuffer dlogits = Upload(logits.data(), logits.size() * 4), dparams = Upload(params.data(), params.size() * sizeof(SamplingRow));
  DeviceBuffer dpen = Upload(penalties.data(), penalties.size() * sizeof(PenaltyToken)), dout(rows * 4);
  SampleRows(nullptr, dlogits.as<float>(), rows, n, dparams.as<SamplingRow>(), dpen.as<PenaltyToken>(), dout.as<int32_t>());
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<int32_t> got(rows);
  dout.CopyToHost(got.data(), rows * 4);
  // The host's token, unless a GPU's expf (within 2 ulps, where the host's is correctly
  // rounded) moved a running sum across the uniform: then the device's token is one the
  // host's own draw gives for a uniform within 1e-6 of it (the sums' error is below 1e-6),
  // and that happens to a few draws at most (about 1e-5 of them are that close).
  const auto draw_at = [](const std::vector<float>& probs, double u) {  // Sample's draw
    double cum = 0.0;
    int32_t last_kept = 0;
    for (int32_t i = 0; i < static_cast<int32_t>(probs.size()); ++i) {
      if (probs[i] <= 0.0f) continue;
      last_kept = i, cum += probs[i];
      if (u < cum) return i;
    }
    return last_kept;
  };
  int moved = 0;
  for (int64_t r = 0; r + 1 < rows; ++r) {
    if (got[r] == want[r]) continue;
    const std::vector<float>& probs = host_probs[r / kDraws];
    const double u = params[r].uniform, tolerance = 1e-6;
    const bool nearby = !probs.empty() && got[r] >= 0 && got[r] < n && probs[got[r]] > 0.0f &&
                        draw_at(probs, u - tolerance) <= got[r] && got[r] <= draw_at(probs, u + tolerance);
    EXPECT_TRUE(nearby) << "case " << r / kDraws << " draw " << r % kDraws << ": device " << got[r] << ", host "
                        << want[r];
    moved += nearby;
  }
  EXPECT_LE(moved, 2) << "draws whose token a uniform within 1e-6 would change";
  EXPECT_EQ(got[rows - 1], -1) << "a NaN row";
  // The draws reach more than one token where the distribution allows it.
  std::map<int32_t, int> seen;
  for (int d = 0; d < kDraws; ++d) ++seen[got[1 * kDraws + d]];
  EXPECT_GT(seen.size(), 1u);
  seen.clear();  // and from the candidates (the peaked top-p 0.95 row)
  for (int d = 0; d < kDraws; ++d) ++seen[got[11 * kDraws + d]];
  EXPECT_GT(seen.size(), 1u);
}

// The draw narrows the row to one of 32 units, then to one of 32 pieces of it, then scans
// the piece a warp at a time. Uniforms placed 2% and 98% into the kept tokens on either
// side of unit and piece boundaries (and 0, and the largest double below 1) take exactly
// those tokens, for a row that keeps every token, one whose top-k past kCandidates leaves
// zeros between kept tokens, and a peaked top-k whose 8 kept tokens sit at the boundaries
// (the candidates' path).
TEST(CudaSampling, TheDrawTakesTheTokenWhoseRunningSumPassesTheUniformAcrossUnitBoundaries) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 40009;  // units of 1251 tokens, pieces of 40 (a warp's scan and 8 more)
  const int64_t unit = (n + 31) / 32, piece = (unit + 31) / 32;
  const std::vector<int64_t> boundaries = {piece, 5 * piece, unit, 16 * unit + 7 * piece, 31 * unit};
  struct Case {
    int32_t top_k;
    bool peaked;
  };
  const std::vector<Case> cases = {{0, false}, {4500, false}, {8, true}};
  std::vector<float> logits;
  std::vector<SamplingRow> params;
  std::vector<int32_t> want;
  for (size_t c = 0; c < cases.size(); ++c) {
    std::vector<float> row = Random(n, 140 + static_cast<uint32_t>(c), 1.0f);
    if (cases[c].peaked) {
      const int64_t head[] = {0, piece - 1, piece, unit - 1, unit, 31 * unit - 1, 31 * unit, n - 1};
      for (int j = 0; j < 8; ++j) row[head[j]] = 12.0f - 0.3f * j;
    }
    const std::vector<float> p = Sampler::TruncatedProbs(row, cases[c].top_k, 1.0f, 0.0f);
    std::vector<double> cum(n + 1, 0.0);  // cum[i]: the mass before token i
    for (int64_t i = 0; i < n; ++i) cum[i + 1] = cum[i] + p[i];
    std::vector<std::pair<double, int32_t>> draws;  // (uniform, the token it must take)
    int64_t first = 0, last = n - 1;
    while (p[first] <= 0.0f) ++first;
    while (p[last] <= 0.0f) --last;
    draws.push_back({0.0, static_cast<int32_t>(first)});
    draws.push_back({std::nextafter(1.0, 0.0), static_cast<int32_t>(last)});
    for (const int64_t b : boundaries) {
      int64_t before = b - 1, after = b;
      while (before > 0 && p[before] <= 0.0f) --before;
      while (after + 1 < n && p[after] <= 0.0f) ++after;
      for (const int64_t t : {before, after}) {
        ASSERT_GT(p[t], 0.0f);
        for (const double f : {0.02, 0.98}) draws.push_back({cum[t] + f * p[t], static_cast<int32_t>(t)});
      }
    }
    for (const auto& [u, token] : draws) {
      logits.insert(logits.end(), row.begin(), row.end());
      SamplingRow r;
      r.temperature = 1.0f, r.top_k = cases[c].top_k, r.uniform = u;
      params.push_back(r);
      want.push_back(token);
    }
  }
  const int64_t rows = static_cast<int64_t>(params.size());
  const PenaltyToken none{0, 0};
  DeviceBuffer dlogits = Upload(logits.data(), logits.size() * 4), dparams = Upload(params.data(), params.size() * sizeof(SamplingRow));
  DeviceBuffer dpen = Upload(&none, sizeof(none)), dout(rows * 4);
  SampleRows(nullptr, dlogits.as<float>(), rows, n, dparams.as<SamplingRow>(), dpen.as<PenaltyToken>(), dout.as<int32_t>());
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<int32_t> got(rows);
  dout.CopyToHost(got.data(), rows * 4);
  for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(got[r], want[r]) << "row " << r << " uniform " << params[r].uniform;
}

// FP8 weights read in place: every e4m3 code (NaNs excepted) under per-row block scales,
// a width that is not a multiple of 16 (the scalar tail) and one that is (16-byte loads),
// 1, 3 and 8 rows of x in each activation type, y written and accumulated; and the
// widened matrix, exactly code * scale.
TEST_P(CudaKernels, Fp8GemvAndDequantizeMatchTheExactProducts) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  std::mt19937 rng(91);
  // 200 and 1000: the scalar tail; 384 and 1040: 16-byte loads, 1040 past one 512-column
  // sweep of the warp and with a partial last block.
  for (const int64_t cols : {int64_t{200}, int64_t{384}, int64_t{1000}, int64_t{1040}}) {
    SCOPED_TRACE(cols);
    const int64_t rows = 37, scale_cols = Fp8ScaleCols(cols);
    std::vector<uint8_t> codes(rows * cols);
    for (uint8_t& c : codes) {
      do {
        c = static_cast<uint8_t>(rng());
      } while ((c & 0x7f) == 0x7f);  // no NaN
    }
    std::vector<float> scales(rows * scale_cols);
    for (float& sc : scales) sc = std::uniform_real_distribution<float>(1e-3f, 2e-2f)(rng);
    std::vector<float> w(rows * cols);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        w[r * cols + c] = cpu::E4M3ToFloat(codes[r * cols + c]) * scales[r * scale_cols + c / kFp8ScaleBlock];
      }
    }
    DeviceBuffer dcodes = Upload(codes.data(), codes.size()), dscales = Upload(scales.data(), scales.size() * 4);
    const Fp8Matrix m{dcodes.as<uint8_t>(), dscales.as<float>(), rows, cols};
    DeviceBuffer dw(rows * cols * 4);
    Fp8Dequantize(nullptr, m, DType::kF32, dw.data());
    SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_EQ(Decode(Download(dw), DType::kF32), w);
    // Widened into the activation type, and a view of rows [5, 37) (how experts are read).
    DeviceBuffer dwt(rows * cols * ElementBytes(t));
    Fp8Dequantize(nullptr, m, t, dwt.data());
    SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_EQ(Decode(Download(dwt), t), Round(w, t).values);
    const Fp8Matrix tail{dcodes.as<uint8_t>() + 5 * cols, dscales.as<float>() + 5 * scale_cols, rows - 5, cols};
    {
      const Typed x = Round(Random(2 * cols, 95), t);
      const std::vector<float> w_tail(w.begin() + 5 * cols, w.end());
      const std::vector<float> want = ReferenceGemm(x.values, w_tail, 2, cols, rows - 5);
      DeviceBuffer dx = Upload(x.bytes.data(), x.bytes.size()), dy(2 * (rows - 5) * 4);
      Fp8Gemv(nullptr, tail, t, dx.data(), 2, DType::kF32, dy.data(), /*accumulate=*/false);
      SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
      ExpectClose(Decode(Download(dy), DType::kF32), want, 1e-5);
    }
    for (const int64_t T : {int64_t{1}, int64_t{3}, kFp8GemvMaxRows}) {
      SCOPED_TRACE(T);
      const Typed x = Round(Random(T * cols, 92 + static_cast<uint32_t>(T)), t);
      std::vector<float> want = ReferenceGemm(x.values, w, T, cols, rows);
      const std::vector<float> y0 = Random(T * rows, 93);
      DeviceBuffer dx = Upload(x.bytes.data(), x.bytes.size()), dy = Upload(y0.data(), y0.size() * 4);
      Fp8Gemv(nullptr, m, t, dx.data(), T, DType::kF32, dy.data(), /*accumulate=*/false);
      SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
      ExpectClose(Decode(Download(dy), DType::kF32), want, 1e-5);
      dy.CopyFromHost(y0.data(), y0.size() * 4);
      Fp8Gemv(nullptr, m, t, dx.data(), T, DType::kF32, dy.data(), /*accumulate=*/true);
      SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
      for (size_t i = 0; i < want.size(); ++i) want[i] += y0[i];
      ExpectClose(Decode(Download(dy), DType::kF32), want, 1e-5);
      // y in the activation type (gate_up), written and accumulated.
      const Typed yt0 = Round(y0, t);
      DeviceBuffer dyt = Upload(yt0.bytes.data(), yt0.bytes.size());
      Fp8Gemv(nullptr, m, t, dx.data(), T, t, dyt.data(), /*accumulate=*/true);
      SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
      std::vector<float> want_t = ReferenceGemm(x.values, w, T, cols, rows);
      for (size_t i = 0; i < want_t.size(); ++i) want_t[i] += yt0.values[i];
      ExpectClose(Decode(Download(dyt), t), want_t, OutputTolerance(t, 1e-5));
    }
  }
}

// A stack of `stack` matrices of rows x cols on the device, of type t or (fp8) as FP8 codes
// with random block scales, and the values they stand for.
struct MatrixStack {
  std::vector<float> values;
  DeviceBuffer data, scales;
  StackedMatrices matrices;
};

MatrixStack MakeMatrixStack(DType t, bool fp8, int64_t stack, int64_t rows, int64_t cols, std::mt19937& rng) {
  MatrixStack out;
  const int64_t scale_cols = Fp8ScaleCols(cols);
  out.values.resize(stack * rows * cols);
  if (fp8) {
    std::vector<uint8_t> codes(out.values.size());
    std::vector<float> scales(stack * rows * scale_cols);
    for (uint8_t& c : codes) {
      do {
        c = static_cast<uint8_t>(rng());
      } while ((c & 0x7f) == 0x7f);
    }
    for (float& sc : scales) sc = std::uniform_real_distribution<float>(1e-3f, 2e-2f)(rng);
    for (int64_t r = 0; r < stack * rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        out.values[r * cols + c] = cpu::E4M3ToFloat(codes[r * cols + c]) * scales[r * scale_cols + c / kFp8ScaleBlock];
      }
    }
    out.data = Upload(codes.data(), codes.size());
    out.scales = Upload(scales.data(), scales.size() * 4);
  } else {
    const Typed typed = Round(Random(out.values.size(), 31), t);
    out.values = typed.values;
    out.data = Upload(typed.bytes.data(), typed.bytes.size());
  }
  out.matrices = StackedMatrices{out.data.data(), fp8 ? out.scales.as<float>() : nullptr, fp8 ? DType::kF8E4M3 : t,
                                 rows, cols, rows};
  return out;
}

// A stack of three matrices, each group of rows times its own: groups of 1, 3, 20 and 33
// rows (one pass of 8 rows, several, and past kGroupedGemvMaxRows, which only the
// planner's choice bounds), weights of the activation type and FP8 with block scales,
// widths with the scalar tail and with 16-byte loads, short and long, y in f32 (written,
// then accumulated) and in the activation type, through the 8-row kernel and the one-row
// one. Rows outside every group stay as they were.
TEST_P(CudaKernels, GroupedGemvMultipliesEachGroupsRowsByItsMatrix) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  std::mt19937 rng(17);
  const std::vector<GemvGroup> groups = {{2, 0, 1, 0}, {0, 1, 3, 0}, {1, 4, 20, 0}, {2, 30, 33, 0}};
  const int64_t total_rows = 63, rows = 37, stack = 3;
  // Widths: element loads with a tail, 16-byte loads, and past one warp's span group (1024
  // elements of 16-bit or FP8 weights, 512 of f32: the one-row kernel loads four spans a
  // lane, two for f32, before it multiplies any) with 16-byte loads (ending in a group's
  // first and third span), and with element loads whose tail is in each of a group's spans.
  for (const int64_t cols : {int64_t{203}, int64_t{384}, int64_t{1040}, int64_t{1544}, int64_t{773}, int64_t{1300},
                             int64_t{1543}}) {
    for (const bool fp8 : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "cols " << cols << (fp8 ? " fp8" : " typed"));
      const MatrixStack stack_on_device = MakeMatrixStack(t, fp8, stack, rows, cols, rng);
      const std::vector<float>& w = stack_on_device.values;
      const StackedMatrices m = stack_on_device.matrices;
      const Typed x = Round(Random(total_rows * cols, 32), t);
      const std::vector<float> y0 = Random(total_rows * rows, 33);
      std::vector<float> want(total_rows * rows, 0.0f);
      std::vector<bool> covered(total_rows, false);
      for (const GemvGroup& g : groups) {
        const std::vector<float> xs(x.values.begin() + g.first_row * cols,
                                    x.values.begin() + (g.first_row + g.num_rows) * cols);
        const std::vector<float> ws(w.begin() + g.matrix * rows * cols, w.begin() + (g.matrix + 1) * rows * cols);
        const std::vector<float> y = ReferenceGemm(xs, ws, g.num_rows, cols, rows);
        std::copy(y.begin(), y.end(), want.begin() + g.first_row * rows);
        for (int32_t r = 0; r < g.num_rows; ++r) covered[g.first_row + r] = true;
      }
      for (int64_t r = 0; r < total_rows; ++r) {
        if (!covered[r]) std::copy(y0.begin() + r * rows, y0.begin() + (r + 1) * rows, want.begin() + r * rows);
      }
      DeviceBuffer dgroups = Upload(groups.data(), groups.size() * sizeof(GemvGroup));
      // The groups' true bound, and 1: the one-row kernel (more weight spans in flight)
      // must multiply bigger groups right too, a row a pass.
      for (const int64_t bound : {int64_t{33}, int64_t{1}}) {
      SCOPED_TRACE(::testing::Message() << "max_group_rows " << bound);
      DeviceBuffer dx = Upload(x.bytes.data(), x.bytes.size()), dy = Upload(y0.data(), y0.size() * 4);
      GroupedGemv(nullptr, m, dgroups.as<GemvGroup>(), static_cast<int>(groups.size()), bound, t, dx.data(),
                  DType::kF32, dy.data(), /*accumulate=*/false);
      SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
      ExpectClose(Decode(Download(dy), DType::kF32), want, 1e-5);
      std::vector<float> want_acc = want;
      for (int64_t r = 0; r < total_rows; ++r) {
        for (int64_t o = 0; o < rows; ++o) {
          if (covered[r]) want_acc[r * rows + o] += y0[r * rows + o];
        }
      }
      dy.CopyFromHost(y0.data(), y0.size() * 4);
      GroupedGemv(nullptr, m, dgroups.as<GemvGroup>(), static_cast<int>(groups.size()), bound, t, dx.data(),
                  DType::kF32, dy.data(), /*accumulate=*/true);
      SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
      ExpectClose(Decode(Download(dy), DType::kF32), want_acc, 1e-5);
      const Typed yt0 = Round(y0, t);
      DeviceBuffer dyt = Upload(yt0.bytes.data(), yt0.bytes.size());
      GroupedGemv(nullptr, m, dgroups.as<GemvGroup>(), static_cast<int>(groups.size()), bound, t, dx.data(), t,
                  dyt.data(), /*accumulate=*/false);
      SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
      std::vector<float> want_t = want;
      for (int64_t r = 0; r < total_rows; ++r) {
        if (!covered[r]) std::copy(yt0.values.begin() + r * rows, yt0.values.begin() + (r + 1) * rows, want_t.begin() + r * rows);
      }
      ExpectClose(Decode(Download(dyt), t), want_t, OutputTolerance(t, 1e-5));
      }
    }
  }
}

// The SiLU epilogue: each matrix's rows are 19 gate rows then 19 up rows (a warp a
// feature: the last block's last five warps idle), groups as above through the 8-row and the one-row kernel,
// FP8 and typed weights, short and long rows: y[r, f] = silu(gate) * up of the exact
// products, [rows, 19] in the activation type. Rows outside every group stay as they were.
TEST_P(CudaKernels, GroupedGemvWithTheSiluEpilogueWritesSiluGateTimesUp) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  std::mt19937 rng(23);
  const std::vector<GemvGroup> groups = {{2, 0, 1, 0}, {0, 1, 3, 0}, {1, 4, 20, 0}, {2, 30, 33, 0}};
  const int64_t total_rows = 63, features = 19, rows = 2 * features, stack = 3;
  for (const int64_t cols : {int64_t{203}, int64_t{1040}}) {
    for (const bool fp8 : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "cols " << cols << (fp8 ? " fp8" : " typed"));
      const MatrixStack stack_on_device = MakeMatrixStack(t, fp8, stack, rows, cols, rng);
      const Typed x = Round(Random(total_rows * cols, 41), t);
      const Typed y0 = Round(Random(total_rows * features, 42), t);
      std::vector<float> want = y0.values;
      for (const GemvGroup& g : groups) {
        const std::vector<float> xs(x.values.begin() + g.first_row * cols,
                                    x.values.begin() + (g.first_row + g.num_rows) * cols);
        const std::vector<float> ws(stack_on_device.values.begin() + g.matrix * rows * cols,
                                    stack_on_device.values.begin() + (g.matrix + 1) * rows * cols);
        const std::vector<float> y = ReferenceGemm(xs, ws, g.num_rows, cols, rows);
        for (int32_t r = 0; r < g.num_rows; ++r) {
          for (int64_t f = 0; f < features; ++f) {
            // The products rounded to the output type first, as a SiluMul would read them.
            const float gate = Round({y[r * rows + f]}, t).values[0];
            const float up = Round({y[r * rows + features + f]}, t).values[0];
            want[(g.first_row + r) * features + f] = gate / (1.0f + std::exp(-gate)) * up;
          }
        }
      }
      DeviceBuffer dgroups = Upload(groups.data(), groups.size() * sizeof(GemvGroup));
      DeviceBuffer dx = Upload(x.bytes.data(), x.bytes.size());
      for (const int64_t bound : {int64_t{33}, int64_t{1}}) {
        SCOPED_TRACE(::testing::Message() << "max_group_rows " << bound);
        DeviceBuffer dy = Upload(y0.bytes.data(), y0.bytes.size());
        GroupedGemv(nullptr, stack_on_device.matrices, dgroups.as<GemvGroup>(), static_cast<int>(groups.size()), bound,
                    t, dx.data(), t, dy.data(), /*accumulate=*/false, GemvOutput::kSiluGateTimesUp);
        SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
        ExpectClose(Decode(Download(dy), t), want, OutputTolerance(t, 1e-5));
      }
    }
  }
}

// Activations to FP8 as DeepSeek-V3 quantizes them: each (row, 128 columns) block's scale
// is its amax / 448 exactly (1 for an all-zero block), each code is the e4m3 value nearest
// x / scale (no neighbouring code is nearer), in both scale layouts, with a partial last
// block; and a weight's scale table rewritten block by block is the same numbers. "Nearest"
// is to the f32 quotient, which is what is rounded (DeepSeek's own x / s; the exact
// quotient can lie a hair past a midpoint that the f32 one sits on, and ties go to even).
TEST_P(CudaKernels, Fp8QuantizeRowsPicksTheAmaxScaleAndTheNearestCode) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int64_t rows = 5, cols = 300, blocks = Fp8ScaleCols(cols);
  std::vector<float> raw = Random(rows * cols, 61);
  for (int64_t c = 128; c < 256; ++c) raw[2 * cols + c] = 0.0f;  // an all-zero block
  for (int64_t c = 0; c < cols; ++c) raw[3 * cols + c] *= 1e3f;  // beyond e4m3's range before scaling
  const Typed x = Round(raw, t);
  DeviceBuffer dx = Upload(x.bytes.data(), x.bytes.size());
  for (const bool by_block : {false, true}) {
    SCOPED_TRACE(by_block ? "by block" : "by row");
    const Fp8ScaleLayout layout{by_block, by_block ? rows + 3 : 0};
    const size_t scale_floats = by_block ? blocks * (rows + 3) : rows * blocks;
    DeviceBuffer dcodes(rows * cols), dscales(scale_floats * 4);
    Fp8QuantizeRows(nullptr, t, dx.data(), rows, cols, dcodes.as<uint8_t>(), dscales.as<float>(), layout);
    SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<uint8_t> codes(rows * cols);
    std::vector<float> scales(scale_floats);
    dcodes.CopyToHost(codes.data(), codes.size());
    dscales.CopyToHost(scales.data(), scales.size() * 4);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t b = 0; b < blocks; ++b) {
        float amax = 0;
        for (int64_t c = b * 128; c < std::min(cols, (b + 1) * 128); ++c) amax = std::max(amax, std::fabs(x.values[r * cols + c]));
        const float scale = scales[layout.At(r, b, blocks)];
        ASSERT_EQ(scale, amax > 0 ? amax / 448.0f : 1.0f) << "row " << r << " block " << b;
        for (int64_t c = b * 128; c < std::min(cols, (b + 1) * 128); ++c) {
          const uint8_t code = codes[r * cols + c];
          const double v = x.values[r * cols + c] / scale;  // the f32 quotient
          const double err = std::fabs(cpu::E4M3ToFloat(code) - v);
          ASSERT_LE(std::fabs(cpu::E4M3ToFloat(code)), 448.0f);
          for (const int step : {-1, 1}) {
            const int magnitude = (code & 0x7f) + step;
            if (magnitude < 0 || magnitude > 0x7e) continue;
            const uint8_t other = static_cast<uint8_t>((code & 0x80) | magnitude);
            EXPECT_LE(err, std::fabs(cpu::E4M3ToFloat(other) - v) + 1e-12) << "row " << r << " col " << c;
          }
        }
      }
    }
  }
  // A weight's row-by-row table, block by block.
  const int64_t w_rows = 48;
  const std::vector<float> table = Random(w_rows * blocks, 62);
  DeviceBuffer dtable = Upload(table.data(), table.size() * 4), dby(blocks * (w_rows + 4) * 4);
  Fp8ScalesByBlock(nullptr, dtable.as<float>(), w_rows, blocks, dby.as<float>(), w_rows + 4);
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> by(blocks * (w_rows + 4));
  dby.CopyToHost(by.data(), by.size() * 4);
  for (int64_t r = 0; r < w_rows; ++r) {
    for (int64_t b = 0; b < blocks; ++b) EXPECT_EQ(by[b * (w_rows + 4) + r], table[r * blocks + b]);
  }
}

// The FP8 tensor-core GEMM (Hopper): the probe finds a scale layout, and then
// at DeepSeek-like shapes, for 9 to 300 rows, y in f32 (written and accumulated) and bf16,
// the product matches the exact product of the same quantized operands to 5e-3 of its
// largest value, and the bf16 activations' exact product to 4e-2 (what quantizing the
// activations to e4m3 costs).
TEST(CudaFp8Gemm, BlockScaledTensorCoreGemmMatchesTheExactProduct) {
  SKIP_WITHOUT_GPU();
  int major = 0;
  SHOAL_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  if (major != 9) GTEST_SKIP() << "skipped: cuBLASLt's 128-block-scaled FP8 GEMM is Hopper's (sm_90)";
  CublasGemm reference(nullptr);
  std::string why_not;
  std::unique_ptr<Fp8BlockGemm> gemm = Fp8BlockGemm::Create(nullptr, &reference, &why_not);
  ASSERT_NE(gemm, nullptr) << why_not;
  std::printf("FP8 GEMM scale layouts: %s\n", gemm->layouts().Describe().c_str());
  std::mt19937 rng(71);
  const int64_t rows = 512, cols = 2048, blocks = Fp8ScaleCols(cols);
  std::vector<uint8_t> codes(rows * cols);
  for (uint8_t& c : codes) {
    do {
      c = static_cast<uint8_t>(rng());
    } while ((c & 0x7f) == 0x7f);
  }
  std::vector<float> scales(rows * blocks), w(rows * cols);
  for (float& sc : scales) sc = std::uniform_real_distribution<float>(1e-4f, 1e-3f)(rng);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) w[r * cols + c] = cpu::E4M3ToFloat(codes[r * cols + c]) * scales[r * blocks + c / 128];
  }
  DeviceBuffer dcodes = Upload(codes.data(), codes.size()), dscales = Upload(scales.data(), scales.size() * 4);
  const Fp8Matrix m{dcodes.as<uint8_t>(), dscales.as<float>(), rows, cols};
  for (const int64_t T : {int64_t{9}, int64_t{64}, int64_t{300}}) {
    SCOPED_TRACE(T);
    ASSERT_TRUE(gemm->Supports(T, rows, cols, DType::kF32, false));
    const Typed x = Round(Random(T * cols, 72 + static_cast<uint32_t>(T)), DType::kBF16);
    // The quantized activations, as the GEMM sees them.
    DeviceBuffer dx = Upload(x.bytes.data(), x.bytes.size()), xq(T * cols), xs(T * blocks * 4);
    Fp8QuantizeRows(nullptr, DType::kBF16, dx.data(), T, cols, xq.as<uint8_t>(), xs.as<float>(), Fp8ScaleLayout{});
    SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<uint8_t> qc(T * cols);
    std::vector<float> qs(T * blocks), xdq(T * cols);
    xq.CopyToHost(qc.data(), qc.size());
    xs.CopyToHost(qs.data(), qs.size() * 4);
    for (int64_t i = 0; i < T * cols; ++i) xdq[i] = cpu::E4M3ToFloat(qc[i]) * qs[(i / cols) * blocks + (i % cols) / 128];
    const std::vector<float> exact_q = ReferenceGemm(xdq, w, T, cols, rows);
    const std::vector<float> exact = ReferenceGemm(x.values, w, T, cols, rows);
    DeviceBuffer scratch(gemm->ScratchBytes(T, rows, cols));
    const std::vector<float> y0 = Random(T * rows, 73);
    DeviceBuffer dy = Upload(y0.data(), y0.size() * 4);
    gemm->Run(m, DType::kBF16, dx.data(), T, DType::kF32, dy.data(), false, scratch.data());
    SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> got = Decode(Download(dy), DType::kF32);
    ExpectClose(got, exact_q, 5e-3);
    ExpectClose(got, exact, 4e-2);
    ASSERT_TRUE(gemm->Supports(T, rows, cols, DType::kF32, true));
    dy.CopyFromHost(y0.data(), y0.size() * 4);
    gemm->Run(m, DType::kBF16, dx.data(), T, DType::kF32, dy.data(), true, scratch.data());
    SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> want_acc = exact_q;
    for (size_t i = 0; i < want_acc.size(); ++i) want_acc[i] += y0[i];
    ExpectClose(Decode(Download(dy), DType::kF32), want_acc, 5e-3);
    if (gemm->Supports(T, rows, cols, DType::kBF16, false)) {
      DeviceBuffer dyb(T * rows * 2);
      gemm->Run(m, DType::kBF16, dx.data(), T, DType::kBF16, dyb.data(), false, scratch.data());
      SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
      ExpectClose(Decode(Download(dyb), DType::kBF16), exact_q, OutputTolerance(DType::kBF16, 5e-3));
    } else {
      ADD_FAILURE() << "no bf16-output FP8 GEMM";
    }
  }
  // Shapes off the tensor cores' tiles are refused, for the caller to widen.
  EXPECT_FALSE(gemm->Supports(16, 200, cols, DType::kF32, false));
  EXPECT_FALSE(gemm->Supports(16, rows, 1000, DType::kF32, false));
}

// DeepSeekMoE's routing on the device makes RouteTokens' choices, for V2-Lite's rules
// (softmax, greedy), V2's (group-limited greedy, scaled) and V3's (sigmoid, noaux_tc with a
// bias, normalized): the same experts in the same order, weights within f32 rounding; and
// the device slot plan is PlanExpertSlots' plan of those choices, for all experts and for
// a rank's quarter of them.
TEST(CudaMoeRouting, DeviceRoutingAndPlanMatchTheHosts) {
  SKIP_WITHOUT_GPU();
  struct Case {
    const char* name;
    int64_t experts, k, groups, top_groups;
    DeepseekConfig::TopkMethod method;
    DeepseekConfig::ScoringFunc scoring;
    bool normalize;
    double scaling;
  };
  const Case cases[] = {
      {"v2-lite", 64, 6, 1, 1, DeepseekConfig::TopkMethod::kGreedy, DeepseekConfig::ScoringFunc::kSoftmax, false, 1.0},
      {"v2", 160, 6, 8, 3, DeepseekConfig::TopkMethod::kGroupLimitedGreedy, DeepseekConfig::ScoringFunc::kSoftmax,
       false, 16.0},
      {"v3", 256, 8, 8, 4, DeepseekConfig::TopkMethod::kNoauxTc, DeepseekConfig::ScoringFunc::kSigmoid, true, 2.5},
      // Expert counts off the warp width: lanes past the last expert must stay out.
      {"72 experts", 72, 6, 1, 1, DeepseekConfig::TopkMethod::kGreedy, DeepseekConfig::ScoringFunc::kSoftmax, true,
       1.0},
      {"40 experts in 4 groups", 40, 4, 4, 2, DeepseekConfig::TopkMethod::kNoauxTc,
       DeepseekConfig::ScoringFunc::kSigmoid, true, 2.5},
      {"8 experts", 8, 2, 1, 1, DeepseekConfig::TopkMethod::kGreedy, DeepseekConfig::ScoringFunc::kSoftmax, false,
       1.0},
  };
  std::mt19937 rng(81);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    DeepseekConfig d;
    d.n_routed_experts = c.experts;
    d.num_experts_per_tok = c.k;
    d.n_group = c.groups;
    d.topk_group = c.top_groups;
    d.topk_method = c.method;
    d.scoring_func = c.scoring;
    d.norm_topk_prob = c.normalize;
    d.routed_scaling_factor = c.scaling;
    RouterRules rules;
    rules.num_experts = static_cast<int32_t>(c.experts);
    rules.experts_per_token = static_cast<int32_t>(c.k);
    rules.num_groups = static_cast<int32_t>(c.groups);
    rules.top_groups = static_cast<int32_t>(c.top_groups);
    rules.sigmoid = c.scoring == DeepseekConfig::ScoringFunc::kSigmoid;
    rules.method = c.method == DeepseekConfig::TopkMethod::kGreedy               ? RouterRules::kGreedy
                   : c.method == DeepseekConfig::TopkMethod::kGroupLimitedGreedy ? RouterRules::kGroupLimitedGreedy
                                                                                  : RouterRules::kNoauxTc;
    rules.normalize = c.normalize;
    rules.scaling = static_cast<float>(c.scaling);
    const int64_t T = 29, E = c.experts, k = c.k;
    std::vector<float> logits(T * E), bias;
    std::normal_distribution<float> normal(0.0f, 2.0f);
    for (float& v : logits) v = normal(rng);
    if (c.method == DeepseekConfig::TopkMethod::kNoauxTc) {
      bias.resize(E);
      for (float& b : bias) b = 0.1f * normal(rng);
    }
    const Routing want = RouteTokens(d, logits.data(), T, bias.empty() ? nullptr : bias.data());
    DeviceBuffer dlogits = Upload(logits.data(), logits.size() * 4), dids(T * k * 4), dw(T * k * 4);
    DeviceBuffer dbias = bias.empty() ? DeviceBuffer() : Upload(bias.data(), bias.size() * 4);
    RouteTokensOnDevice(nullptr, rules, dlogits.as<float>(), T, bias.empty() ? nullptr : dbias.as<float>(),
                        dids.as<int32_t>(), dw.as<float>());
    SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<int32_t> ids(T * k);
    std::vector<float> weights(T * k);
    dids.CopyToHost(ids.data(), ids.size() * 4);
    dw.CopyToHost(weights.data(), weights.size() * 4);
    EXPECT_EQ(ids, want.ids);
    for (int64_t i = 0; i < T * k; ++i) {
      EXPECT_NEAR(weights[i], want.weights[i], 1e-5 * std::max(1.0f, std::fabs(want.weights[i]))) << "slot " << i;
    }
    // The plan of the host's choices, both ways.
    DeviceBuffer hids = Upload(want.ids.data(), T * k * 4), hw = Upload(want.weights.data(), T * k * 4);
    for (const ExpertRange local : {ExpertRange{0, E}, ExpertRange{E / 4, E / 2}}) {
      SCOPED_TRACE(::testing::Message() << "experts [" << local.begin << ", " << local.end << ")");
      ExpertSlots plan;
      PlanExpertSlots(want, T, local, &plan);
      const int64_t n = local.end - local.begin, slots = T * k;
      const int64_t num_groups = std::min(n, slots);
      DeviceBuffer gather(slots * 4), rows(slots * 4), sw(slots * 4), groups(num_groups * sizeof(GemvGroup));
      PlanExpertSlotsOnDevice(nullptr, hids.as<int32_t>(), hw.as<float>(), T, static_cast<int32_t>(k),
                              static_cast<int32_t>(local.begin), static_cast<int32_t>(local.end), gather.as<int32_t>(),
                              rows.as<int32_t>(), sw.as<float>(), groups.as<GemvGroup>());
      SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
      std::vector<int32_t> g(slots), r(slots);
      std::vector<float> w(slots);
      std::vector<GemvGroup> gr(num_groups);
      gather.CopyToHost(g.data(), slots * 4);
      rows.CopyToHost(r.data(), slots * 4);
      sw.CopyToHost(w.data(), slots * 4);
      groups.CopyToHost(gr.data(), num_groups * sizeof(GemvGroup));
      const int64_t gathered = plan.gathered();
      EXPECT_EQ(std::vector<int32_t>(g.begin(), g.begin() + gathered), plan.gather);
      for (int64_t i = gathered; i < slots; ++i) EXPECT_EQ(g[i], 0) << "unused gather row " << i;
      EXPECT_EQ(r, plan.slot_rows);
      EXPECT_EQ(w, plan.slot_weights);
      // The experts with rows, as the host plan's GroupedGemv groups, then empty groups.
      ASSERT_LE(plan.small.size(), gr.size());
      for (size_t i = 0; i < gr.size(); ++i) {
        const GemvGroup want_group = i < plan.small.size() ? plan.small[i] : GemvGroup{};
        EXPECT_EQ(gr[i].matrix, want_group.matrix) << "group " << i;
        EXPECT_EQ(gr[i].first_row, want_group.first_row) << "group " << i;
        EXPECT_EQ(gr[i].num_rows, want_group.num_rows) << "group " << i;
      }
    }
  }
}

// A model gone wrong (NaN router logits) must not desynchronize the router's warp: a
// token whose groups all score NaN, and one with a NaN group, get experts in range (k
// distinct ones where sigmoid scoring keeps the other groups finite), and the other
// tokens of the launch keep the host's routes.
TEST(CudaMoeRouting, NanLogitsGiveValidExpertsAndLeaveOtherTokensRoutes) {
  SKIP_WITHOUT_GPU();
  for (const bool noaux : {false, true}) {
    SCOPED_TRACE(noaux ? "noaux_tc" : "group-limited greedy");
    const int64_t T = 9, E = 64, k = 6;
    DeepseekConfig d;
    d.n_routed_experts = E, d.num_experts_per_tok = k, d.n_group = 8, d.topk_group = 3;
    d.topk_method = noaux ? DeepseekConfig::TopkMethod::kNoauxTc : DeepseekConfig::TopkMethod::kGroupLimitedGreedy;
    d.scoring_func = noaux ? DeepseekConfig::ScoringFunc::kSigmoid : DeepseekConfig::ScoringFunc::kSoftmax;
    d.norm_topk_prob = noaux, d.routed_scaling_factor = 2.5;
    RouterRules rules;
    rules.num_experts = E, rules.experts_per_token = k, rules.num_groups = 8, rules.top_groups = 3;
    rules.sigmoid = noaux;
    rules.method = noaux ? RouterRules::kNoauxTc : RouterRules::kGroupLimitedGreedy;
    rules.normalize = noaux, rules.scaling = 2.5f;
    std::mt19937 rng(5);
    std::normal_distribution<float> normal(0.0f, 2.0f);
    std::vector<float> logits(T * E), bias;
    for (float& v : logits) v = normal(rng);
    if (noaux) {
      bias.resize(E);
      for (float& b : bias) b = 0.1f * normal(rng);
    }
    const int64_t all_nan = 3, nan_group = 6;
    for (int64_t e = 0; e < E; ++e) logits[all_nan * E + e] = std::nanf("");
    for (int64_t e = 8; e < 16; ++e) logits[nan_group * E + e] = std::nanf("");
    const Routing want = RouteTokens(d, logits.data(), T, bias.empty() ? nullptr : bias.data());
    DeviceBuffer dlogits = Upload(logits.data(), logits.size() * 4), dids(T * k * 4), dw(T * k * 4);
    DeviceBuffer dbias = bias.empty() ? DeviceBuffer() : Upload(bias.data(), bias.size() * 4);
    RouteTokensOnDevice(nullptr, rules, dlogits.as<float>(), T, bias.empty() ? nullptr : dbias.as<float>(),
                        dids.as<int32_t>(), dw.as<float>());
    SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<int32_t> ids(T * k);
    dids.CopyToHost(ids.data(), ids.size() * 4);
    for (int64_t t = 0; t < T; ++t) {
      const std::vector<int32_t> got(ids.begin() + t * k, ids.begin() + (t + 1) * k);
      if (t == all_nan || t == nan_group) {
        for (int32_t id : got) EXPECT_TRUE(id >= 0 && id < E) << "token " << t << " expert " << id;
        // Sigmoid scores keep the NaN to its group (softmax spreads it over the token).
        if (t == nan_group && noaux) {
          EXPECT_EQ(std::set<int32_t>(got.begin(), got.end()).size(), static_cast<size_t>(k));
        }
      } else {
        EXPECT_EQ(got, std::vector<int32_t>(want.ids.begin() + t * k, want.ids.begin() + (t + 1) * k)) << "token " << t;
      }
    }
  }
}

TEST(CudaDecoderKernels, FillUniformIsInRangeDeterministicAndCentred) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 1 << 20;
  DeviceBuffer a(n * 4), b(n * 4);
  FillUniform(nullptr, DType::kF32, a.data(), n, 7, -0.5f, 0.5f);
  FillUniform(nullptr, DType::kF32, b.data(), n, 7, -0.5f, 0.5f);
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> va = Decode(Download(a), DType::kF32), vb = Decode(Download(b), DType::kF32);
  EXPECT_EQ(va, vb);
  double sum = 0;
  for (float v : va) {
    ASSERT_GE(v, -0.5f);
    ASSERT_LT(v, 0.5f);
    sum += v;
  }
  EXPECT_LT(std::fabs(sum / n), 2e-3);  // the mean of 2^20 draws: sd 0.29 / 1024
}

// Neither needs a GPU: cuBLAS is a library like any other until a handle is created.
TEST(CudaGemm, CublasLoadsAtRunTime) {
  std::string why_not;
  EXPECT_TRUE(LoadCublas(&why_not)) << why_not;
}

// Linked, libcublasLt's static TLS would be carved out of every thread's stack and a
// thread with a small fixed stack (as civetweb creates for the metrics endpoint) would not
// start; dlopen'ed, it must.
TEST(CudaGemm, SmallThreadStacksStartWithCublasLoaded) {
  std::string why_not;
  ASSERT_TRUE(LoadCublas(&why_not)) << why_not;
  pthread_attr_t attr;
  ASSERT_EQ(pthread_attr_init(&attr), 0);
  ASSERT_EQ(pthread_attr_setstacksize(&attr, 64 * 1024), 0);
  pthread_t thread;
  const int rc = pthread_create(&thread, &attr, [](void*) -> void* { return nullptr; }, nullptr);
  pthread_attr_destroy(&attr);
  ASSERT_EQ(rc, 0) << std::strerror(rc);
  pthread_join(thread, nullptr);
}

TEST(CudaDevice, CountIsPositiveOrSaysWhyNot) {
  std::string why_not;
  const int n = CudaDeviceCount(&why_not);
  if (n == 0) {
    EXPECT_EQ(why_not.rfind("no GPU: ", 0), 0u) << why_not;
    GTEST_SKIP() << "skipped: " << why_not;
  }
  EXPECT_TRUE(why_not.empty()) << why_not;
  std::printf("device 0: %s\n", DeviceDescription(0).c_str());
}

}  // namespace
}  // namespace shoal::worker::cuda
