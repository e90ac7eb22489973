// Every CUDA kernel against the CPU backend on random inputs (label cuda). Where there is
// no GPU (no driver, no device) each test reports "skipped: no GPU" instead of failing.
//
// Tolerances, relative to the largest reference value: f32 activations 1e-5 for the
// elementwise ops (the same f32 arithmetic in another order) and 1e-4 for GEMMs (cuBLAS
// sums in its own order); f16/bf16 one rounding of the output (2^-10 / 2^-7) plus the
// f32 error, since inputs are rounded to the type before both sides see them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "worker/kernels/cpu/ops.h"
#include "worker/kernels/cpu/quant.h"
#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/device.h"
#include "worker/kernels/cuda/gemm.h"
#include "worker/kernels/cuda/ops.h"

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

double OutputTolerance(DType t, double f32_tolerance) {
  return f32_tolerance + (t == DType::kF32 ? 0.0 : t == DType::kF16 ? 1.0 / 1024 : 1.0 / 128);
}

void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, double tolerance) {
  ASSERT_EQ(got.size(), want.size());
  double scale = 0, worst = 0;
  size_t at = 0;
  for (float w : want) scale = std::max(scale, std::fabs(static_cast<double>(w)));
  for (size_t i = 0; i < got.size(); ++i) {
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

TEST_P(CudaKernels, GemmMatchesAnF32ReferenceAndAccumulates) {
  SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int64_t T = 9, in = 320, out = 200;
  const Typed x = Round(Random(T * in, 7), t), w = Round(Random(out * in, 8, 0.05f), t);
  const std::vector<float> y0 = Random(T * out, 9);
  std::vector<float> want(T * out);
  for (int64_t r = 0; r < T; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t i = 0; i < in; ++i) s += static_cast<double>(x.values[r * in + i]) * w.values[o * in + i];
      want[r * out + o] = static_cast<float>(s);
    }
  }
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

INSTANTIATE_TEST_SUITE_P(Activations, CudaKernels, ::testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                         [](const ::testing::TestParamInfo<DType>& info) { return std::string(DTypeName(info.param)); });

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
