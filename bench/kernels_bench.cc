// CPU kernel throughput next to the machine's memory bandwidth, measured in the same run.
//   mem_read_gb_per_s           streaming read of a buffer far larger than the caches
//   matmul_<type>_t1_gb_per_s   decode-shaped matmul (one token) cycling through ~100 MB of
//                               weights, as a decode step does; memory bound when good
//   matmul_<type>_t1_hot_gb_per_cpu_s  the same matmul on one matrix that stays in cache,
//                               per CPU-second: the kernel's compute ceiling, which must sit
//                               well above the memory bandwidth for decode to be memory bound
//   ratio_<type>_t1_vs_mem      the two above divided: 1.0 = at the bandwidth roofline
//   matmul_<type>_t128_gops     prefill-shaped matmul (128 tokens), 2·T·in·out per call
// Results are validated against the scalar reference before timing.
//
//   build/bench/kernels-bench --threads 2
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "worker/kernels/cpu/matmul.h"
#include "worker/kernels/cpu/quant.h"
#include "worker/kernels/cpu/reference.h"
#include "worker/kernels/cpu/thread_pool.h"

namespace shoal::worker::cpu {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Process CPU seconds: on a machine shared with other work, rates per CPU-second stay
// comparable between runs when wall-clock rates do not.
double CpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

std::vector<std::byte> RandomRows(DType dt, int64_t rows, int64_t cols, std::mt19937& rng) {
  std::vector<std::byte> out(rows * RowBytes(dt, cols));
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : out) b = static_cast<std::byte>(byte(rng));
  // Sane scales (and float weights) so results are finite and comparable.
  const size_t block = BlockBytes(dt);
  const uint16_t scale = FloatToHalf(0.01f);
  if (IsQuantized(dt)) {
    for (size_t off = 0; off < out.size(); off += block) {
      std::memcpy(out.data() + off, &scale, 2);
      if (dt == DType::kQ4_1) std::memcpy(out.data() + off + 2, &scale, 2);
    }
  } else if (dt == DType::kF16) {
    for (size_t off = 0; off < out.size(); off += 2) {
      const uint16_t h = FloatToHalf(static_cast<float>(byte(rng) - 128) / 128.0f);
      std::memcpy(out.data() + off, &h, 2);
    }
  }
  return out;
}

double MemReadGbPerS(ThreadPool& pool) {
  const size_t n = size_t{256} << 20;  // bytes
  std::vector<float> buf(n / 4, 1.0f);
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    std::vector<float> sums(pool.size(), 0);
    auto t0 = Clock::now();
    pool.ParallelFor(static_cast<int64_t>(buf.size() / 32), [&](int64_t b, int64_t e) {
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t i = b * 32; i < e * 32; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(&buf[i]));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(&buf[i + 8]));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(&buf[i + 16]));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(&buf[i + 24]));
      }
      float tmp[8];
      _mm256_storeu_ps(tmp, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
      sums[b * pool.size() / (buf.size() / 32)] += tmp[0];
    });
    best = std::max(best, n / Since(t0) / 1e9);
  }
  return best;
}

bool Validate(ThreadPool& pool, DType dt) {
  std::mt19937 rng(1);
  const int64_t rows = 40, cols = 576, T = 5;
  auto w = RandomRows(dt, rows, cols, rng);
  WeightMatrix m{dt, w.data(), rows, cols, RowBytes(dt, cols)};
  std::vector<float> x(T * cols), y(T * rows), ref(T * rows);
  std::normal_distribution<float> nd;
  for (float& v : x) v = nd(rng);
  MatmulTarget tg{&m, y.data(), rows};
  Matmul(&pool, x.data(), T, cols, {&tg, 1});
  if (IsQuantized(dt)) {
    reference::MatmulQuantizedActivations(x.data(), T, m, ref.data());
  } else {
    reference::Matmul(x.data(), T, m, ref.data());
  }
  double err = 0, scale = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    err = std::max(err, static_cast<double>(std::fabs(y[i] - ref[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(ref[i])));
  }
  return err <= 1e-4 * scale;
}

int Run(int argc, char** argv) {
  CLI::App app{"kernels-bench: CPU matmul throughput vs memory bandwidth"};
  int threads = 2;
  std::vector<std::string> types = {"Q4_1", "Q4_0", "Q8_0", "F16", "F32"};
  app.add_option("--threads", threads);
  app.add_option("--types", types, "weight types to measure");
  CLI11_PARSE(app, argc, argv);
  ThreadPool pool(threads);

  const double mem = MemReadGbPerS(pool);
  fmt::print("threads: {}\nmem_read_gb_per_s: {:.2f}\n", threads, mem);

  const int64_t in = 576, out = 1536;  // SmolLM2's gate/up projection
  for (DType dt : {DType::kQ4_1, DType::kQ4_0, DType::kQ8_0, DType::kF16, DType::kF32}) {
    const std::string name(DTypeName(dt));
    if (std::find(types.begin(), types.end(), name) == types.end()) continue;
    if (!Validate(pool, dt)) {
      fmt::print("matmul_{}: VALIDATION FAILED\n", name);
      return 1;
    }
    std::mt19937 rng(2);
    // Enough distinct matrices to overflow the last-level cache, as a model's layers do.
    const size_t per = RowBytes(dt, in) * out;
    const int copies = static_cast<int>(std::max<size_t>(2, (size_t{100} << 20) / per));
    auto w = RandomRows(dt, out * copies, in, rng);
    std::vector<WeightMatrix> mats;
    for (int c = 0; c < copies; ++c) mats.push_back({dt, w.data() + c * per, out, in, RowBytes(dt, in)});
    std::vector<float> x(128 * in, 0.5f), y(128 * out);

    double best = 0, best_cpu = 0;
    for (int r = 0; r < 3; ++r) {
      auto t0 = Clock::now();
      const double c0 = CpuSeconds();
      for (const WeightMatrix& m : mats) {
        MatmulTarget tg{&m, y.data(), out};
        Matmul(&pool, x.data(), 1, in, {&tg, 1});
      }
      best = std::max(best, per * copies / Since(t0) / 1e9);
      best_cpu = std::max(best_cpu, per * copies / (CpuSeconds() - c0) / 1e9);
    }
    fmt::print("matmul_{}_t1_gb_per_s: {:.2f}\nratio_{}_t1_vs_mem: {:.2f}\n", name, best, name, best / mem);
    fmt::print("matmul_{}_t1_gb_per_cpu_s: {:.2f}\n", name, best_cpu);

    double best_hot_cpu = 0;
    for (int r = 0; r < 3; ++r) {
      const double c0 = CpuSeconds();
      const int reps = 200;
      for (int i = 0; i < reps; ++i) {
        MatmulTarget tg{&mats[0], y.data(), out};
        Matmul(&pool, x.data(), 1, in, {&tg, 1});
      }
      best_hot_cpu = std::max(best_hot_cpu, per * reps / (CpuSeconds() - c0) / 1e9);
    }
    fmt::print("matmul_{}_t1_hot_gb_per_cpu_s: {:.2f}\n", name, best_hot_cpu);

    double best_gops = 0, best_gops_cpu = 0;
    for (int r = 0; r < 2; ++r) {
      auto t0 = Clock::now();
      const double c0 = CpuSeconds();
      const int reps = 8;
      for (int i = 0; i < reps; ++i) {
        MatmulTarget tg{&mats[i % mats.size()], y.data(), out};
        Matmul(&pool, x.data(), 128, in, {&tg, 1});
      }
      best_gops = std::max(best_gops, 2.0 * 128 * in * out * reps / Since(t0) / 1e9);
      best_gops_cpu = std::max(best_gops_cpu, 2.0 * 128 * in * out * reps / (CpuSeconds() - c0) / 1e9);
    }
    fmt::print("matmul_{}_t128_gops: {:.1f}\nmatmul_{}_t128_gops_per_cpu_s: {:.1f}\n", name, best_gops, name, best_gops_cpu);
  }
  return 0;
}

}  // namespace
}  // namespace shoal::worker::cpu

int main(int argc, char** argv) { return shoal::worker::cpu::Run(argc, argv); }
