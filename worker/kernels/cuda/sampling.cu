#include "worker/kernels/cuda/sampling.h"

#include <cmath>
#include <cstdint>

#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/launch.cuh"

namespace shoal::worker::cuda {
namespace {

constexpr int kThreads = 512;

// (value, index) pairs ordered by value, then by the lower index.
__device__ __forceinline__ bool Better(float v, int64_t i, float best, int64_t best_i) {
  return v > best || (v == best && i < best_i);
}

// One block per row: threads scan strided slices, then warps and the block reduce.
__global__ void __launch_bounds__(kThreads) ArgmaxKernel(const float* logits, int64_t n, int32_t* out) {
  WaitForPriorKernel();
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * n;
  float best = -INFINITY;
  int64_t best_i = n;  // "none yet": loses every comparison with a real index at -inf
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = row[i];
    if (!isnan(v) && Better(v, i, best, best_i)) best = v, best_i = i;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    const float v = __shfl_xor_sync(0xffffffffu, best, offset);
    const int64_t i = __shfl_xor_sync(0xffffffffu, best_i, offset);
    if (Better(v, i, best, best_i)) best = v, best_i = i;
  }
  __shared__ float warp_best[kThreads / 32];
  __shared__ int64_t warp_i[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_best[warp] = best, warp_i[warp] = best_i;
  __syncthreads();
  if (warp == 0) {
    best = lane < blockDim.x / 32 ? warp_best[lane] : -INFINITY;
    best_i = lane < blockDim.x / 32 ? warp_i[lane] : n;
    for (int offset = 16; offset > 0; offset /= 2) {
      const float v = __shfl_xor_sync(0xffffffffu, best, offset);
      const int64_t i = __shfl_xor_sync(0xffffffffu, best_i, offset);
      if (Better(v, i, best, best_i)) best = v, best_i = i;
    }
    // A row of NaNs only: token 0, as std::max_element would answer.
    if (lane == 0) out[blockIdx.x] = static_cast<int32_t>(best_i < n ? best_i : 0);
  }
}

constexpr int kSampleThreads = 1024;
constexpr int kSampleWarps = kSampleThreads / 32;
// Tokens a truncating row's draw can take from shared memory instead of the whole row,
// and the power-of-two bands below the largest probability that may hold them.
constexpr int kCandidates = 4096;
constexpr int kBands = 24;

// Block-wide sum of v over kSampleThreads threads, returned to every thread.
template <typename T>
__device__ T BlockSum(T v) {
  __shared__ T warp_sums[kSampleWarps];
  __shared__ T total;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // a previous call's readers of `total` are done
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kSampleWarps ? warp_sums[lane] : T(0);
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

// Block-wide exclusive prefix sum of v in thread order; *total gets the block's sum.
template <typename T>
__device__ T BlockExclusiveScan(T v, T* total) {
  __shared__ T warp_totals[kSampleWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  T inclusive = v;
  for (int offset = 1; offset < 32; offset *= 2) {
    const T up = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  __syncthreads();
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    T w = lane < kSampleWarps ? warp_totals[lane] : T(0);
    for (int offset = 1; offset < 32; offset *= 2) {
      const T up = __shfl_up_sync(0xffffffffu, w, offset);
      if (lane >= offset) w += up;
    }
    if (lane < kSampleWarps) warp_totals[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  const T before_warp = warp == 0 ? T(0) : warp_totals[warp - 1];
  *total = warp_totals[kSampleWarps - 1];
  return before_warp + inclusive - v;
}

__device__ __forceinline__ uint32_t Bits(float p) { return __float_as_uint(p); }

// The largest bit pattern b <= hi (probabilities are >= 0, so patterns order as values)
// such that keep(b) holds, where keep is monotone (true at 0). At most 31 rounds.
template <typename Keep>
__device__ uint32_t LargestPattern(uint32_t hi, Keep keep) {
  uint32_t lo = 0;  // keep(lo) holds; search (lo, hi]
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo + 1) / 2;
    if (keep(mid)) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Keeps (leaves p as is) every candidate above pattern `cut` and the first `ties`
// candidates, in index order, exactly at it; zeroes the rest. candidate(i) says which
// tokens are still in.
template <typename Candidate>
__device__ void KeepAboveAndFirstTies(float* p, int64_t n, uint32_t cut, int64_t ties, Candidate candidate) {
  int64_t carried = 0;
  for (int64_t base = 0; base < n; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const bool in = i < n && candidate(i);
    const bool tie = in && Bits(p[i]) == cut;
    int64_t chunk_ties = 0;
    const int64_t before = BlockExclusiveScan<int64_t>(tie ? 1 : 0, &chunk_ties);
    if (i < n) {
      const bool keep = in && (Bits(p[i]) > cut || (tie && carried + before < ties));
      if (!keep) p[i] = 0.0f;
    }
    carried += chunk_ties;
  }
  __syncthreads();
}

// [begin, end) of p and the mass before it, as the draw narrows the row down.
struct DrawRange {
  int64_t begin, end;
  double before;
};

// Splits r into one contiguous unit a warp and answers (to every thread) the unit the draw
// falls in: the first whose running mass passes u, else the last holding any mass (rounding
// left u past the sum), else an empty range (nothing kept). Two barriers, whatever r's size.
__device__ DrawRange NarrowDraw(const float* p, DrawRange r, double u) {
  __shared__ double unit_mass[kSampleWarps];
  __shared__ DrawRange narrowed;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t size = (r.end - r.begin + kSampleWarps - 1) / kSampleWarps;
  const int64_t begin = min(r.end, r.begin + warp * size), end = min(r.end, begin + size);
  double m = 0.0;
  for (int64_t i = begin + lane; i < end; i += 32) m += p[i];
  for (int offset = 16; offset > 0; offset /= 2) m += __shfl_xor_sync(0xffffffffu, m, offset);
  if (lane == 0) unit_mass[warp] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    DrawRange chosen{0, 0, r.before};
    double carried = r.before;
    for (int w = 0; w < kSampleWarps; ++w) {
      if (!(unit_mass[w] > 0.0)) continue;
      const int64_t b = min(r.end, r.begin + w * size);
      chosen = {b, min(r.end, b + size), carried};
      carried += unit_mass[w];
      if (u < carried) break;
    }
    narrowed = chosen;
  }
  __syncthreads();
  return narrowed;
}

// The draw over p[0, n): the first kept (positive) token, in index order, whose running sum
// passes u; the last kept one when rounding leaves u above the whole sum (as the host). The
// row narrows to one warp's unit twice (n / 1024 tokens), which warp 0 scans 32 at a time:
// six barriers for any vocabulary, where a block-wide scan takes three every 1024 tokens.
__device__ int64_t DrawInIndexOrder(const float* p, int64_t n, double u) {
  DrawRange r = NarrowDraw(p, DrawRange{0, n, 0.0}, u);
  r = NarrowDraw(p, r, u);
  __shared__ int64_t drawn;
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    double carried = r.before;
    int64_t chosen = -1, last = 0;
    for (int64_t base = r.begin; base < r.end && chosen < 0; base += 32) {
      const int64_t i = base + lane;
      const double v = i < r.end ? static_cast<double>(p[i]) : 0.0;
      double inclusive = v;
      for (int offset = 1; offset < 32; offset *= 2) {
        const double up = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive += up;
      }
      const unsigned kept = __ballot_sync(0xffffffffu, v > 0.0);
      const unsigned passes = __ballot_sync(0xffffffffu, v > 0.0 && u < carried + inclusive);
      if (passes != 0u) chosen = base + __ffs(passes) - 1;
      if (kept != 0u) last = base + 31 - __clz(kept);
      carried += __shfl_sync(0xffffffffu, inclusive, 31);
    }
    if (lane == 0) drawn = chosen >= 0 ? chosen : last;
  }
  __syncthreads();
  const int64_t result = drawn;
  __syncthreads();  // every thread has read `drawn` before a later call writes it
  return result;
}

// Top-k, then top-p over what top-k kept, then min-p over p[0, n) (probabilities in index
// order, pmax the largest), and the draw; returns the position drawn. use_k: top-k cuts
// the whole row, so top-p's target is of the mass it kept, even where p holds only the
// row's candidates and k takes them all. Every thread of the block calls it; p is
// overwritten.
__device__ int64_t TruncateAndDraw(float* p, int64_t n, float pmax, const SamplingRow& P, bool use_k) {
  const bool use_p = P.top_p < 1.0f;
  if (use_k && P.top_k < n) {
    const int64_t k = P.top_k;
    const uint32_t cut = LargestPattern(Bits(pmax), [&](uint32_t b) {
      int64_t c = 0;
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) c += Bits(p[i]) >= b ? 1 : 0;
      return BlockSum<int64_t>(c) >= k;
    });
    int64_t above = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) above += Bits(p[i]) > cut ? 1 : 0;
    above = BlockSum<int64_t>(above);
    KeepAboveAndFirstTies(p, n, cut, k - above, [](int64_t) { return true; });
  }
  if (use_p) {
    // As the host: the target is top_p of the mass top-k kept (of 1 without top-k).
    double mass = 1.0;
    if (use_k) {
      double m = 0.0;
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m += p[i];
      mass = BlockSum<double>(m);
    }
    const double target = static_cast<double>(P.top_p) * mass;
    auto mass_from = [&](uint32_t b, bool strictly) {
      double m = 0.0;
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const uint32_t bits = Bits(p[i]);
        if (p[i] > 0.0f && (strictly ? bits > b : bits >= b)) m += p[i];
      }
      return BlockSum<double>(m);
    };
    // The smallest probability of the kept prefix: the largest cut whose mass at or above
    // it reaches the target (0 when rounding leaves even the whole set short: keep all).
    // No cut above the largest probability: with a target of 0 it keeps the argmax alone.
    const uint32_t cut =
        LargestPattern(Bits(pmax), [&](uint32_t b) { return b == 0 || mass_from(b, false) >= target; });
    if (cut > 0) {
      const double above = mass_from(cut, true);
      const double at = static_cast<double>(__uint_as_float(cut));
      // Ties at the cut join in index order until the running mass reaches the target.
      const int64_t ties = static_cast<int64_t>(ceil((target - above) / at));
      KeepAboveAndFirstTies(p, n, cut, ties < 1 ? 1 : ties, [&](int64_t i) { return p[i] > 0.0f; });
    }
  }
  if (P.min_p > 0.0f) {
    const float cut = P.min_p * pmax;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      if (p[i] < cut) p[i] = 0.0f;
    }
  }
  __syncthreads();
  double kept = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) kept += p[i];
  kept = BlockSum<double>(kept);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) p[i] = static_cast<float>(p[i] / kept);
  __syncthreads();

  return DrawInIndexOrder(p, n, P.uniform);
}

// One block of kSampleThreads per row; the row's logits become its probabilities. The
// bound holds the kernel to the 64 registers a thread that a block of 1024 may have (its
// launch fails past that; sm_80 otherwise takes 68).
__global__ void __launch_bounds__(kSampleThreads) SampleKernel(float* logits, int64_t n, const SamplingRow* rows, const PenaltyToken* penalties,
                             int32_t* out) {
  WaitForPriorKernel();
  const int64_t r = blockIdx.x;
  const SamplingRow P = rows[r];
  float* l = logits + r * n;

  // 1. penalties (each distinct token on one thread: repetition, then presence/frequency).
  for (int64_t e = P.penalty_begin + threadIdx.x; e < P.penalty_end; e += blockDim.x) {
    const PenaltyToken t = penalties[e];
    if (t.token < 0 || t.token >= n) continue;
    float v = l[t.token];
    if (P.repetition_penalty != 1.0f) v = v > 0 ? v / P.repetition_penalty : v * P.repetition_penalty;
    if (t.output_count > 0 && (P.presence_penalty != 0.0f || P.frequency_penalty != 0.0f)) {
      // One fused multiply-add, as the host writes it (std::fma in sampler.cc).
      v = __fsub_rn(v, __fmaf_rn(P.frequency_penalty, static_cast<float>(t.output_count), P.presence_penalty));
    }
    l[t.token] = v;
  }
  __syncthreads();

  // Any NaN fails the row; otherwise the argmax (lowest index on ties).
  float best = -INFINITY;
  int64_t best_i = n;
  int nan = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = l[i];
    if (isnan(v)) {
      nan = 1;
    } else if (Better(v, i, best, best_i)) {
      best = v, best_i = i;
    }
  }
  __shared__ float warp_best[kSampleWarps];
  __shared__ int64_t warp_i[kSampleWarps];
  __shared__ int64_t arg;
  for (int offset = 16; offset > 0; offset /= 2) {
    const float v = __shfl_xor_sync(0xffffffffu, best, offset);
    const int64_t i = __shfl_xor_sync(0xffffffffu, best_i, offset);
    if (Better(v, i, best, best_i)) best = v, best_i = i;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_best[warp] = best, warp_i[warp] = best_i;
  __syncthreads();
  if (warp == 0) {
    best = warp_best[lane];
    best_i = warp_i[lane];
    for (int offset = 16; offset > 0; offset /= 2) {
      const float v = __shfl_xor_sync(0xffffffffu, best, offset);
      const int64_t i = __shfl_xor_sync(0xffffffffu, best_i, offset);
      if (Better(v, i, best, best_i)) best = v, best_i = i;
    }
    if (lane == 0) arg = best_i < n ? best_i : 0;
  }
  if (BlockSum<int>(nan) > 0) {  // BlockSum's barriers also publish `arg`
    if (threadIdx.x == 0) out[r] = -1;
    return;
  }
  if (!(P.temperature >= kGreedyTemperature)) {  // Sampler::IsGreedy
    if (threadIdx.x == 0) out[r] = static_cast<int32_t>(arg);
    return;
  }

  // 2. temperature and softmax: p = exp(l / T - max) / sum (sum in double), in place.
  const float inv_t = 1.0f / P.temperature;
  const float mx = __fmul_rn(l[arg], inv_t);  // rounding is monotone: the max of the scaled row
  __syncthreads();  // every thread has read l[arg] before the loop below overwrites it
  double part = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float e = expf(__fsub_rn(__fmul_rn(l[i], inv_t), mx));  // unfused, as the host
    l[i] = e;
    part += e;
  }
  const double total = BlockSum<double>(part);

  // 3. the candidates: a truncating row's kept tokens all lie in the first few power-of-two
  // bands below the largest probability (band b: exponent b below pmax's), so the
  // normalizing pass counts each band's tokens and mass (each warp its own slice of the
  // row, in index order), and the highest band floor t that top-k (count >= k), else top-p
  // (mass >= top_p, with room for the sums' rounding), else min-p (t <= min_p * pmax) can
  // cut no higher than is the threshold: the tokens at or above it, copied in index order
  // to shared memory, are decided exactly as the whole row would be (every count and mass
  // the truncations test at or above t is the same; every token below t is cut). Rows that
  // truncate nothing, or whose candidates overflow kCandidates, take the whole row.
  const bool use_k = P.top_k > 0 && P.top_k < n, use_p = P.top_p < 1.0f;
  const bool truncates = use_k || use_p || P.min_p > 0.0f;
  const float pmax_written = static_cast<float>(1.0 / total);  // l[arg] is exp(0) = 1
  const int top = static_cast<int>(Bits(pmax_written) >> 23);
  __shared__ int32_t band_count[kSampleWarps][kBands];
  __shared__ double band_mass[kSampleWarps][kBands];
  if (truncates) {
    for (int b = lane; b < kBands; b += 32) band_count[warp][b] = 0, band_mass[warp][b] = 0.0;
    __syncwarp();
  }
  const int64_t slice = (n + kSampleWarps - 1) / kSampleWarps;
  const int64_t slice_begin = min(n, warp * slice), slice_end = min(n, slice_begin + slice);
  for (int64_t i = slice_begin + lane; i < slice_end; i += 32) {
    const float v = static_cast<float>(l[i] / total);
    l[i] = v;
    const int b = top - static_cast<int>(Bits(v) >> 23);
    if (truncates && b >= 0 && b < kBands) {
      atomicAdd(&band_count[warp][b], 1);
      atomicAdd(&band_mass[warp][b], static_cast<double>(v));
    }
  }
  __syncthreads();
  const float pmax = l[arg];
  __shared__ int band, candidates;  // band -1: the whole row
  if (threadIdx.x == 0) {
    band = -1;
    if (truncates && Bits(pmax) == Bits(pmax_written)) {
      int64_t count = 0;
      double mass = 0.0;
      for (int b = 0; b < kBands && top - b >= 1; ++b) {
        for (int w = 0; w < kSampleWarps; ++w) count += band_count[w][b], mass += band_mass[w][b];
        const float band_floor = __uint_as_float(static_cast<uint32_t>(top - b) << 23);
        const bool holds = use_k   ? count >= P.top_k
                           : use_p ? mass >= static_cast<double>(P.top_p) + 1e-9
                                   : band_floor <= P.min_p * pmax;
        if (holds) {
          if (count <= kCandidates) band = b, candidates = static_cast<int>(count);
          break;
        }
      }
    }
  }
  __syncthreads();
  if (band < 0) {
    const int64_t drawn = TruncateAndDraw(l, n, pmax, P, use_k);
    if (threadIdx.x == 0) out[r] = static_cast<int32_t>(drawn);
    return;
  }
  __shared__ float candidate_p[kCandidates];
  __shared__ int32_t candidate_token[kCandidates];
  const uint32_t floor_bits = static_cast<uint32_t>(top - band) << 23;
  int offset = 0;  // the candidates of the warps before this one
  for (int w = 0; w < warp; ++w) {
    for (int b = 0; b <= band; ++b) offset += band_count[w][b];
  }
  for (int64_t base = slice_begin; base < slice_end; base += 32) {
    const int64_t i = base + lane;
    const float v = i < slice_end ? l[i] : 0.0f;
    const bool in = i < slice_end && Bits(v) >= floor_bits;
    const unsigned mask = __ballot_sync(0xffffffffu, in);
    if (in) {
      const int at = offset + __popc(mask & ((1u << lane) - 1u));
      candidate_p[at] = v;
      candidate_token[at] = static_cast<int32_t>(i);
    }
    offset += __popc(mask);
  }
  __syncthreads();
  const int64_t drawn = TruncateAndDraw(candidate_p, candidates, pmax, P, use_k);
  if (threadIdx.x == 0) out[r] = candidate_token[drawn];
}

}  // namespace

void SampleRows(cudaStream_t stream, float* logits, int64_t num_rows, int64_t n, const SamplingRow* rows,
                const PenaltyToken* penalties, int32_t* out) {
  if (num_rows == 0) return;
  LaunchKernel("SampleKernel", SampleKernel, static_cast<unsigned>(num_rows), kSampleThreads, 0, stream, logits, n,
      rows, penalties, out);
}

void ArgmaxRows(cudaStream_t stream, const float* logits, int64_t num_rows, int64_t n, int32_t* out) {
  if (num_rows == 0) return;
  LaunchKernel("ArgmaxKernel", ArgmaxKernel, static_cast<unsigned>(num_rows), kThreads, 0, stream, logits, n, out);
}

}  // namespace shoal::worker::cuda
