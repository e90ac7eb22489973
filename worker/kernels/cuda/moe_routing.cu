#include "worker/kernels/cuda/moe_routing.h"

#include <climits>
#include <cmath>

#include "worker/kernels/cuda/cuda_check.h"
#include "worker/kernels/cuda/launch.cuh"

namespace shoal::worker::cuda {
namespace {

constexpr int kRouteWarps = 4;  // tokens per block
constexpr int kPlanThreads = 1024;  // PlanExpertSlotsKernel's one block
constexpr int kPerLane = kMaxRoutedExperts / 32;

// The better of two candidates: the higher value, ties to the lower index (RouteTokens'
// order). Index INT_MAX is "none", which loses to every real candidate.
__device__ __forceinline__ void Better(float& v, int& i, float v2, int i2) {
  if (v2 > v || (v2 == v && i2 < i)) v = v2, i = i2;
}

// Every lane ends with the same winner only if Better is a total order, which NaN breaks
// (a lane holding one would keep it while the others passed it over, and their loops would
// part ways before the next full-mask shuffle): a NaN score takes part as -inf.
__device__ __forceinline__ void WarpArgmax(float& v, int& i) {
  if (isnan(v)) v = -INFINITY;
  for (int offset = 16; offset > 0; offset /= 2) {
    const float v2 = __shfl_xor_sync(0xffffffffu, v, offset);
    const int i2 = __shfl_xor_sync(0xffffffffu, i, offset);
    Better(v, i, v2, i2);
  }
}

__global__ void RouteTokensKernel(RouterRules r, const float* logits, int64_t num_tokens, const float* bias,
                                  int32_t* ids, float* weights) {
  WaitForPriorKernel();
  __shared__ float s_score[kRouteWarps][kMaxRoutedExperts];
  __shared__ float s_choice[kRouteWarps][kMaxRoutedExperts];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRouteWarps + warp;
  if (t >= num_tokens) return;  // whole warps
  const int E = r.num_experts;
  const float* x = logits + t * E;
  float* score = s_score[warp];
  float* choice = s_choice[warp];

  // Scores: softmax over the experts (max, exponentials, their sum) or each one's sigmoid.
  if (r.sigmoid) {
    for (int e = lane; e < E; e += 32) score[e] = 1.0f / (1.0f + expf(-x[e]));
  } else {
    float m = -INFINITY;
    for (int e = lane; e < E; e += 32) m = fmaxf(m, x[e]);
    for (int offset = 16; offset > 0; offset /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
    float sum = 0.0f;
    for (int e = lane; e < E; e += 32) {
      score[e] = expf(x[e] - m);
      sum += score[e];
    }
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    for (int e = lane; e < E; e += 32) score[e] /= sum;
  }
  for (int e = lane; e < E; e += 32) choice[e] = bias != nullptr ? score[e] + bias[e] : score[e];
  __syncwarp();

  // The groups a token may pick from: lane g scores group g, then top_groups rounds of
  // argmax over the lanes.
  uint32_t groups_allowed = 0xffffffffu;
  const int per_group = E / r.num_groups;
  if (r.method != RouterRules::kGreedy) {
    float gs = -INFINITY;
    int gi = INT_MAX;
    if (lane < r.num_groups) {
      const float* s = choice + lane * per_group;
      if (r.method == RouterRules::kGroupLimitedGreedy) {
        gs = s[0];
        for (int i = 1; i < per_group; ++i) gs = fmaxf(gs, s[i]);
      } else {  // noaux_tc: the sum of the group's two best
        float best = -INFINITY, second = -INFINITY;
        for (int i = 0; i < per_group; ++i) {
          if (s[i] > best) {
            second = best;
            best = s[i];
          } else if (s[i] > second) {
            second = s[i];
          }
        }
        gs = best + second;
      }
      gi = lane;
    }
    groups_allowed = 0;
    for (int round = 0; round < r.top_groups; ++round) {
      float v = gs;
      int i = gi;
      WarpArgmax(v, i);
      if (i == INT_MAX) break;
      groups_allowed |= 1u << i;
      if (lane == i) gs = -INFINITY, gi = INT_MAX;
    }
  }

  // k rounds of argmax over the allowed experts not yet taken.
  uint32_t taken = 0;  // bit j: expert lane + 32 j
  const int k = r.experts_per_token;
  int32_t* out_ids = ids + t * k;
  float* out_w = weights + t * k;
  float sum = 0.0f;
  for (int j = 0; j < k; ++j) {
    float v = -INFINITY;
    int i = INT_MAX;
    for (int q = 0; q < kPerLane; ++q) {
      const int e = lane + 32 * q;
      if (e >= E) break;
      if ((taken >> q) & 1u) continue;
      if (r.method != RouterRules::kGreedy && !((groups_allowed >> (e / per_group)) & 1u)) continue;
      Better(v, i, choice[e], e);
    }
    WarpArgmax(v, i);
    if (i == INT_MAX) i = 0;  // fewer allowed experts than k: not a valid configuration
    if (lane == i % 32) taken |= 1u << (i / 32);
    const float w = score[i];
    sum += w;
    if (lane == 0) {
      out_ids[j] = i;
      out_w[j] = w;
    }
  }
  __syncwarp();
  if (lane == 0) {
    for (int j = 0; j < k; ++j) {
      float w = out_w[j];
      if (r.normalize) w /= sum + 1e-20f;
      out_w[j] = w * r.scaling;
    }
  }
}

__global__ void __launch_bounds__(kPlanThreads) PlanExpertSlotsKernel(const int32_t* ids, const float* weights, int num_tokens, int k, int begin,
                                      int end, int32_t* gather, int32_t* slot_rows, float* slot_weights,
                                      GemvGroup* groups) {
  WaitForPriorKernel();
  __shared__ int32_t s_ids[kMaxPlannedSlots];
  __shared__ int32_t s_row_of[kMaxPlannedSlots];
  __shared__ int32_t s_count[kMaxRoutedExperts];
  __shared__ int32_t s_offset[kMaxRoutedExperts + 1];
  const int slots = num_tokens * k, local = end - begin;
  for (int i = threadIdx.x; i < slots; i += blockDim.x) s_ids[i] = ids[i];
  __syncthreads();
  for (int e = threadIdx.x; e < local; e += blockDim.x) {
    int count = 0;
    for (int i = 0; i < slots; ++i) count += s_ids[i] == begin + e;
    s_count[e] = count;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    // The experts with rows, in expert order, as the launch's first groups (at most T * k
    // of them; the rest of min(local, T * k) empty), so GroupedGemv's grid is not mostly
    // experts without tokens.
    s_offset[0] = 0;
    int m = 0;
    for (int e = 0; e < local; ++e) {
      s_offset[e + 1] = s_offset[e] + s_count[e];
      if (s_count[e] > 0) groups[m++] = GemvGroup{e, s_offset[e], s_count[e], 0};
    }
    for (const int g = min(local, slots); m < g; ++m) groups[m] = GemvGroup{0, 0, 0, 0};
  }
  __syncthreads();
  // Each local expert's slots in slot order, so its tokens in token order.
  for (int e = threadIdx.x; e < local; e += blockDim.x) {
    int row = s_offset[e];
    for (int i = 0; i < slots; ++i) {
      if (s_ids[i] != begin + e) continue;
      gather[row] = i / k;
      s_row_of[i] = row++;
    }
  }
  for (int i = threadIdx.x; i < slots; i += blockDim.x) {
    if (s_ids[i] < begin || s_ids[i] >= end) s_row_of[i] = -1;
  }
  for (int i = s_offset[local] + threadIdx.x; i < slots; i += blockDim.x) gather[i] = 0;
  __syncthreads();
  // Each token's slots by expert id (a token's experts are distinct).
  for (int t = threadIdx.x; t < num_tokens; t += blockDim.x) {
    int order[kMaxExpertsPerTokenOnDevice];
    for (int j = 0; j < k; ++j) {
      int p = j;
      while (p > 0 && s_ids[t * k + order[p - 1]] > s_ids[t * k + j]) {
        order[p] = order[p - 1];
        --p;
      }
      order[p] = j;
    }
    for (int j = 0; j < k; ++j) {
      slot_rows[t * k + j] = s_row_of[t * k + order[j]];
      slot_weights[t * k + j] = weights[t * k + order[j]];
    }
  }
}

}  // namespace

void RouteTokensOnDevice(cudaStream_t stream, const RouterRules& rules, const float* logits, int64_t num_tokens,
                         const float* bias, int32_t* ids, float* weights) {
  if (num_tokens == 0) return;
  if (rules.num_experts <= 0 || rules.num_experts > kMaxRoutedExperts || rules.experts_per_token <= 0 ||
      rules.experts_per_token > kMaxExpertsPerTokenOnDevice || rules.num_groups <= 0 || rules.num_groups > 32 ||
      rules.num_experts % rules.num_groups != 0) {
    DieOnCudaError("RouteTokensOnDevice", "routing rules outside what the kernel takes", __FILE__, __LINE__);
  }
  const unsigned blocks = static_cast<unsigned>((num_tokens + kRouteWarps - 1) / kRouteWarps);
  LaunchKernel("RouteTokensKernel", RouteTokensKernel, blocks, 32 * kRouteWarps, 0, stream, rules, logits, num_tokens,
      bias, ids, weights);
}

void PlanExpertSlotsOnDevice(cudaStream_t stream, const int32_t* ids, const float* weights, int64_t num_tokens,
                             int32_t k, int32_t expert_begin, int32_t expert_end, int32_t* gather, int32_t* slot_rows,
                             float* slot_weights, GemvGroup* groups) {
  if (num_tokens == 0) return;
  if (num_tokens * k > kMaxPlannedSlots || k > kMaxExpertsPerTokenOnDevice ||
      expert_end - expert_begin > kMaxRoutedExperts) {
    DieOnCudaError("PlanExpertSlotsOnDevice", "more slots or experts than the kernel takes", __FILE__, __LINE__);
  }
  LaunchKernel("PlanExpertSlotsKernel", PlanExpertSlotsKernel, 1, kPlanThreads, 0, stream, ids, weights,
      static_cast<int>(num_tokens), k, expert_begin, expert_end, gather, slot_rows, slot_weights, groups);
}

}  // namespace shoal::worker::cuda
