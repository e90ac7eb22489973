// The SIMT emulator itself (simt.h, simt_runtime.cc): barriers, warp shuffles, exited
// threads, bad launch configurations and graph capture behave as the hardware's, so the
// cuda tests it runs mean what they say.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "tests/simt/simt_selftest_kernels.h"

namespace shoal::simt_selftest {
namespace {

TEST(SimtEmulator, BlockReductionThroughSharedMemoryAndSyncthreadsSumsEachBlock) {
  const int n = 256, blocks = 3;
  std::vector<int32_t> in(n * blocks);
  std::iota(in.begin(), in.end(), 1);
  std::vector<int32_t> out(blocks, -1);
  BlockSums(nullptr, in.data(), n, blocks, out.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  for (int b = 0; b < blocks; ++b) {
    EXPECT_EQ(out[b], std::accumulate(in.begin() + b * n, in.begin() + (b + 1) * n, 0)) << "block " << b;
  }
}

TEST(SimtEmulator, WarpShufflesSumScanAndGatherWithinEachWarp) {
  const int n = 128;
  std::vector<int32_t> in(n), sum(n), scan(n), gathered(n);
  for (int i = 0; i < n; ++i) in[i] = (i * 7) % 11 - 5;
  WarpSumsAndScans(nullptr, in.data(), n, sum.data(), scan.data(), gathered.data());
  for (int i = 0; i < n; ++i) {
    const int warp = i / 32 * 32;
    EXPECT_EQ(sum[i], std::accumulate(in.begin() + warp, in.begin() + warp + 32, 0)) << i;
    EXPECT_EQ(scan[i], std::accumulate(in.begin() + warp, in.begin() + i + 1, 0)) << i;
    EXPECT_EQ(gathered[i], in[warp + (i % 32 * 7 + 3) % 32]) << i;
  }
}

TEST(SimtEmulator, ThreadsThatReturnEarlyDoNotHoldUpTheBarrier) {
  std::vector<int32_t> in(96);
  std::iota(in.begin(), in.end(), 0);
  int32_t out = -1;
  SumWithExitedThreads(nullptr, in.data(), 96, 40, &out);
  EXPECT_EQ(out, 39 * 40 / 2);
}

// Threads of odd blocks run in the reverse order, so a race on shared memory shows up as
// two blocks that disagree (here: one reads its neighbour's write, the other misses it).
TEST(SimtEmulator, AMissingBarrierMakesEvenAndOddBlocksDisagree) {
  const int n = 64;
  std::vector<int32_t> out(2 * n, -1);
  MissingBarrier(nullptr, n, out.data());
  int differ = 0;
  for (int t = 0; t < n; ++t) differ += out[t] != out[n + t];
  EXPECT_GT(differ, n / 2);
}

// The blocks of one grid run first to last, of the next last to first, so a block that
// reads another block's write of the same grid sees it in one and not in the other.
TEST(SimtEmulator, ConsecutiveGridsRunTheirBlocksInOppositeOrders) {
  const int blocks = 8;
  std::vector<int32_t> first(blocks, 0), second(blocks, 0);
  ReadTheBlockBefore(nullptr, blocks, first.data());
  ReadTheBlockBefore(nullptr, blocks, second.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  std::vector<int32_t> in_order(blocks), reversed(blocks);
  // Forwards each block adds its predecessor's sum; backwards it finds the 0 left there.
  for (int b = 0; b < blocks; ++b) in_order[b] = (b + 1) * (b + 2) / 2, reversed[b] = b + 1;
  // Which of the two launches ran forwards depends on how many grids ran before.
  if (first != in_order) std::swap(first, second);
  EXPECT_EQ(first, in_order);
  EXPECT_EQ(second, reversed);
}

// cp.async copies land when their thread waits (blocks 0 and 1) or at once (2 and 3), so a
// read before the wait sees the old contents in some blocks and the copy in others; after
// the wait and a barrier every block reads every thread's copy.
TEST(SimtEmulator, AsyncCopiesLandByTheWaitAndAReadBeforeItDependsOnTheBlock) {
  std::vector<int32_t> in(32 * 4), out(4 * 32, 0);
  std::iota(in.begin(), in.end(), 100);
  AsyncCopies(nullptr, in.data(), /*mode=*/0, out.data());
  for (int b = 0; b < 4; ++b) {
    for (int t = 0; t < 32; ++t) ASSERT_EQ(out[32 * b + t], in[4 * ((t + 1) % 32)]) << "block " << b;
  }
  AsyncCopies(nullptr, in.data(), /*mode=*/1, out.data());
  for (int t = 0; t < 32; ++t) {
    EXPECT_EQ(out[t], -1);
    EXPECT_EQ(out[32 + t], -1);
    EXPECT_EQ(out[64 + t], in[4 * t]);
    EXPECT_EQ(out[96 + t], in[4 * t]);
  }
}

// Dynamic shared memory: up to 48 KB as given, more only after the kernel opted in (as on
// the hardware); every block starts from 0xff bytes, so a word never written is not 0.
TEST(SimtEmulator, DynamicSharedMemoryAbove48KbNeedsTheKernelToOptIn) {
  std::vector<uint32_t> out(2 * 64, 0);
  EXPECT_EQ(DynamicShared(nullptr, 32 * 1024, /*allow=*/false, out.data()), cudaSuccess);
  EXPECT_EQ(DynamicShared(nullptr, 96 * 1024, /*allow=*/false, out.data()), cudaErrorInvalidConfiguration);
  ASSERT_EQ(DynamicShared(nullptr, 96 * 1024, /*allow=*/true, out.data()), cudaSuccess);
  for (int b = 0; b < 2; ++b) {
    for (int t = 0; t < 32; ++t) {
      EXPECT_EQ(out[64 * b + t], static_cast<uint32_t>((t + 1) % 32 + 1));
      EXPECT_EQ(out[64 * b + 32 + t], 0xffffffffu);
    }
  }
}

TEST(SimtEmulatorDeathTest, AThreadExitingWithCopiesInFlightEndsTheProcess) {
  std::vector<int32_t> in(32 * 4, 7), out(4 * 32, 0);
  EXPECT_DEATH(AsyncCopies(nullptr, in.data(), /*mode=*/2, out.data()),
               "AsyncCopyKernel: a thread exited with cp.async copies it never waited for");
}

TEST(SimtEmulatorDeathTest, FullMaskShuffleAfterLanesExitedEndsTheProcessNamingTheKernel) {
  int32_t out = 0;
  EXPECT_DEATH(ShuffleAfterLanesExited(nullptr, &out), "ShuffleAfterExitKernel: a lane returned while others of its warp wait at a shuffle");
}

// A launch that may overlap the kernel before it (launch.cuh) runs when its threads wait
// for that kernel, and ends the process naming the kernel when one does not.
TEST(SimtEmulatorDeathTest, AnOverlappedLaunchWhoseThreadsDoNotWaitEndsTheProcess) {
  std::vector<int32_t> out(32, 0);
  OverlappedLaunch(nullptr, out.data(), /*wait=*/true);
  for (int t = 0; t < 32; ++t) EXPECT_EQ(out[t], t + 1);
  EXPECT_DEATH(OverlappedLaunch(nullptr, out.data(), /*wait=*/false),
               "OverlappedKernel: a thread exited without WaitForPriorKernel");
}

TEST(SimtEmulatorDeathTest, AMisalignedVectorLoadEndsTheProcessAsOnTheGpu) {
  alignas(16) char bytes[48] = {};
  uint32_t out = 1;
  VectorLoad(nullptr, bytes + 16, &out);
  EXPECT_EQ(out, 0u);
  EXPECT_DEATH(VectorLoad(nullptr, bytes + 4, &out), "misaligned address");
}

TEST(SimtEmulator, MoreThan1024ThreadsIsTheLaunchsInvalidConfiguration) {
  int32_t count = 0;
  LaunchWithThreads(nullptr, 1025, &count);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "the error is read once";
  EXPECT_EQ(count, 0) << "a bad launch runs nothing";
  LaunchWithThreads(nullptr, 1024, &count);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(count, 1024);
}

TEST(SimtEmulator, CapturedWorkRunsOnlyWhenTheGraphIsLaunchedAndEachTimeItIs) {
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  std::vector<int32_t> host(300, 5);
  int32_t* dev = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&dev), host.size() * sizeof(int32_t)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dev, host.data(), host.size() * sizeof(int32_t), cudaMemcpyHostToDevice), cudaSuccess);

  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  AddOne(stream, dev, 300);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  EXPECT_EQ(dev[0], 5) << "capture records, it does not run";
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(dev[0], 7);
  EXPECT_EQ(dev[299], 7);

  // Synchronizing a capturing stream is illegal: the capture ends invalidated.
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaErrorStreamCaptureUnsupported);
  cudaGraph_t bad = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(stream, &bad), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(bad, nullptr);

  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaFree(dev);
  cudaStreamDestroy(stream);
}

// Work on a created stream runs only when something synchronizes with it, so a host read
// the code forgot to order after the work sees the old data (as it may on a GPU).
TEST(SimtEmulator, StreamWorkWaitsForASynchronization) {
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  std::vector<int32_t> v(10, 1);
  AddOne(stream, v.data(), 10);
  EXPECT_EQ(v[0], 1) << "nothing synchronized yet";
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(v[0], 2);
  // A pinned staging buffer rewritten before the copy that reads it has run: the copy
  // takes the new value, which is why the engine synchronizes before reusing staging.
  int32_t staging = 7, dst = 0;
  ASSERT_EQ(cudaMemcpyAsync(&dst, &staging, sizeof(dst), cudaMemcpyHostToDevice, stream), cudaSuccess);
  staging = 8;
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(dst, 8);
  cudaStreamDestroy(stream);
}

TEST(SimtEmulator, DeviceMemoryIsBoundedAndCountedByMemGetInfo) {
  size_t free_before = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_before, &total), cudaSuccess);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, total + 1), cudaErrorMemoryAllocation);
  ASSERT_EQ(cudaMalloc(&p, 1 << 20), cudaSuccess);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 256, 0u);
  size_t free_after = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_after, &total), cudaSuccess);
  EXPECT_EQ(free_before - free_after, size_t{1} << 20);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
}

// The ulps between two floats of the same sign.
int64_t UlpsApart(float x, float y) {
  int32_t a, b;
  std::memcpy(&a, &x, sizeof(a));
  std::memcpy(&b, &y, sizeof(b));
  return std::abs(int64_t{a} - int64_t{b});
}

// The host's arithmetic by default; with -DSHOAL_SIMT_GPU_ARITHMETIC=ON a GPU's deviations
// from it, each of which must actually show (or the tree that runs the cuda tests under
// them would check nothing more than the plain one).
TEST(SimtEmulator, KernelArithmeticIsTheHostsOrDeviatesAsAGpusDoes) {
  const int n = 512;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> exponent(-60.0f, 10.0f), positive(0.5f, 4.0f), any(-2.0f, 2.0f);
  std::vector<float> a(n), b(n), c(n), fused(n), expf_(n), fast_exp(n), rsqrt(n);
  for (int i = 0; i < n; ++i) a[i] = i == 0 ? 0.0f : exponent(rng), b[i] = positive(rng), c[i] = any(rng);
  Arithmetic(nullptr, a.data(), b.data(), c.data(), n, fused.data(), expf_.data(), fast_exp.data(), rsqrt.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(expf_[0], 1.0f);
  EXPECT_EQ(fast_exp[0], 1.0f);
  int fused_differ = 0, expf_differ = 0, fast_differ = 0, rsqrt_differ = 0;
  for (int i = 0; i < n; ++i) {
    volatile float product = a[i] * b[i];  // one rounding, then another for the sum
    const float unfused = product + c[i];
    const float exact_exp = static_cast<float>(std::exp(static_cast<double>(a[i])));
    const float exact_rsqrt = static_cast<float>(1.0 / std::sqrt(static_cast<double>(b[i])));
#if defined(SHOAL_SIMT_GPU_ARITHMETIC)
    EXPECT_EQ(fused[i], std::fma(a[i], b[i], c[i])) << i;
    EXPECT_LE(UlpsApart(expf_[i], exact_exp), 3) << a[i];  // CUDA's 2 ulps, and the host's rounding
    // CUDA's bound for __expf: 2 + floor(|1.173 x|) ulps.
    EXPECT_LE(UlpsApart(fast_exp[i], exact_exp), 2 + static_cast<int64_t>(std::abs(1.173f * a[i]))) << a[i];
    EXPECT_LE(UlpsApart(rsqrt[i], exact_rsqrt), 2) << b[i];
#else
    EXPECT_EQ(fused[i], unfused) << i;
    EXPECT_EQ(expf_[i], std::exp(a[i])) << a[i];
    EXPECT_EQ(fast_exp[i], std::exp(a[i])) << a[i];
    EXPECT_EQ(rsqrt[i], 1.0f / std::sqrt(b[i])) << b[i];
#endif
    fused_differ += fused[i] != unfused;
    expf_differ += expf_[i] != std::exp(a[i]);
    fast_differ += fast_exp[i] != std::exp(a[i]);
    rsqrt_differ += rsqrt[i] != 1.0f / std::sqrt(b[i]);
  }
#if defined(SHOAL_SIMT_GPU_ARITHMETIC)
  EXPECT_GT(fused_differ, n / 50);
  EXPECT_GT(expf_differ, n / 4);
  EXPECT_GT(fast_differ, n / 4);
  EXPECT_GT(rsqrt_differ, n / 4);
#endif
}

}  // namespace
}  // namespace shoal::simt_selftest
