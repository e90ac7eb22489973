// NCCL all-reduce bus bandwidth over every visible GPU of this machine, the way
// nccl-tests' all_reduce_perf reports it, through Shoal's own NcclCommunicator (the one a
// GPU group's tensor ranks use): one thread per GPU, in-place f32 sums of 8 MiB to
// 1 GiB. For each size:
//   algbw = bytes / time per all-reduce;  busbw = algbw * 2 (n - 1) / n
// (the traffic each link carries in a ring, comparable across GPU counts). The peer run
// side by side is a plain peer-to-peer copy GPU 0 -> GPU 1 (cudaMemcpyPeer) of the
// largest size: the link speed the collective can approach; the last line is the ratio.
//
//   build-cuda/bench/cuda-nccl-bench [--max-mib 1024] [--iters 20]
//
// With fewer than two GPUs, or without libnccl, it prints "skipped: ..." and exits 0.
#include <CLI/CLI.hpp>
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "worker/parallel/nccl_communicator.h"

namespace shoal::worker {
namespace {

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// GPU 0 -> GPU 1 bytes per second over `reps` copies of `bytes`.
double PeerCopyBandwidth(size_t bytes, int reps) {
  void *a = nullptr, *b = nullptr;
  cudaSetDevice(0);
  cudaDeviceEnablePeerAccess(1, 0);
  cudaGetLastError();  // already enabled, or not possible: the copy still works through the host
  if (cudaMalloc(&a, bytes) != cudaSuccess) return 0;
  cudaSetDevice(1);
  cudaDeviceEnablePeerAccess(0, 0);
  cudaGetLastError();
  if (cudaMalloc(&b, bytes) != cudaSuccess) return 0;
  cudaSetDevice(0);
  cudaMemcpyPeer(b, 1, a, 0, bytes);  // warm-up
  cudaDeviceSynchronize();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) cudaMemcpyPeer(b, 1, a, 0, bytes);
  cudaDeviceSynchronize();
  const double s = Seconds(t0, std::chrono::steady_clock::now());
  cudaFree(a);
  cudaSetDevice(1);
  cudaFree(b);
  return static_cast<double>(bytes) * reps / s;
}

int Run(int argc, char** argv) {
  CLI::App app{"cuda-nccl-bench: NCCL all-reduce bus bandwidth over this machine's GPUs"};
  int64_t max_mib = 1024;
  int iters = 20;
  app.add_option("--max-mib", max_mib, "largest all-reduce, MiB")->check(CLI::Range(8, 16384));
  app.add_option("--iters", iters, "timed all-reduces per size")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
  if (n < 2) {
    fmt::print("skipped: an all-reduce across GPUs needs 2, this machine shows {}\n", n);
    return 0;
  }
  std::string why_not;
  if (!NcclAvailable(&why_not)) {
    fmt::print("skipped: {}\n", why_not);
    return 0;
  }
  auto id = NcclCommunicator::NewUniqueId();
  if (!id.ok()) {
    fmt::print(stderr, "{}\n", id.status().ToString());
    return 1;
  }
  std::vector<int> group(n);
  for (int r = 0; r < n; ++r) group[r] = r;
  const size_t max_bytes = static_cast<size_t>(max_mib) << 20;
  std::vector<size_t> sizes;
  for (size_t b = size_t{8} << 20; b <= max_bytes; b *= 2) sizes.push_back(b);
  std::vector<std::vector<double>> seconds(n, std::vector<double>(sizes.size(), 0.0));
  std::vector<std::string> errors(n);
  std::vector<std::thread> ranks;
  for (int r = 0; r < n; ++r) {
    ranks.emplace_back([&, r] {
      auto comm = NcclCommunicator::Create(*id, r, group, std::chrono::seconds(60), r);
      if (!comm.ok()) {
        errors[r] = comm.status().ToString();
        return;
      }
      float* data = nullptr;
      if (cudaMalloc(&data, max_bytes) != cudaSuccess) {
        errors[r] = "cudaMalloc failed";
        return;
      }
      cudaMemset(data, 0, max_bytes);
      cudaDeviceSynchronize();
      for (size_t s = 0; s < sizes.size(); ++s) {
        const std::span<float> span(data, sizes[s] / sizeof(float));
        for (int w = 0; w < 2; ++w) {
          if (absl::Status st = (*comm)->AllReduceSum(span); !st.ok()) {
            errors[r] = st.ToString();
            return;
          }
        }
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < iters; ++i) {
          if (absl::Status st = (*comm)->AllReduceSum(span); !st.ok()) {
            errors[r] = st.ToString();
            return;
          }
        }
        seconds[r][s] = Seconds(t0, std::chrono::steady_clock::now()) / iters;
      }
      cudaFree(data);
    });
  }
  for (std::thread& t : ranks) t.join();
  for (int r = 0; r < n; ++r) {
    if (!errors[r].empty()) {
      fmt::print(stderr, "rank {}: {}\n", r, errors[r]);
      return 1;
    }
  }
  fmt::print("gpus: {}\n", n);
  double best_bus = 0;
  for (size_t s = 0; s < sizes.size(); ++s) {
    double t = 0;  // the slowest rank's time: the collective is done when every rank is
    for (int r = 0; r < n; ++r) t = std::max(t, seconds[r][s]);
    const double alg = static_cast<double>(sizes[s]) / t, bus = alg * 2.0 * (n - 1) / n;
    best_bus = std::max(best_bus, bus);
    fmt::print("allreduce_{}mib: time_us {:.1f} algbw_gbs {:.1f} busbw_gbs {:.1f}\n", sizes[s] >> 20, t * 1e6,
               alg / 1e9, bus / 1e9);
  }
  const double peer = PeerCopyBandwidth(sizes.back(), 10);
  fmt::print("allreduce_peak_busbw_gbs: {:.1f}\n", best_bus / 1e9);
  fmt::print("peer_copy_gpu0_to_gpu1_gbs: {:.1f}\n", peer / 1e9);
  if (peer > 0) fmt::print("ratio_busbw_vs_peer_copy: {:.2f}\n", best_bus / peer);
  return 0;
}

}  // namespace
}  // namespace shoal::worker

int main(int argc, char** argv) { return shoal::worker::Run(argc, argv); }
