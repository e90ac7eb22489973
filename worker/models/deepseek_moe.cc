#include "worker/models/deepseek_moe.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "worker/common/status_macros.h"
#include "worker/kernels/cpu/matmul.h"
#include "worker/kernels/cpu/ops.h"
#include "worker/kernels/cpu/thread_pool.h"

namespace shoal::worker {
namespace {

// The k largest of score[i] for i with allowed[i], highest first, ties to the lower id.
void TopK(const float* score, const std::vector<char>& allowed, int64_t k, int32_t* out) {
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < static_cast<int32_t>(allowed.size()); ++i) {
    if (allowed[i]) ids.push_back(i);
  }
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
    return score[a] > score[b] || (score[a] == score[b] && a < b);
  });
  std::copy_n(ids.begin(), k, out);
}

}  // namespace

Routing RouteTokens(const DeepseekConfig& c, const float* logits, int64_t T, const float* bias) {
  const int64_t E = c.n_routed_experts, k = c.num_experts_per_tok;
  const int64_t per_group = E / c.n_group;
  Routing r;
  r.k = k;
  r.ids.resize(T * k);
  r.weights.resize(T * k);
  std::vector<float> score(E), choice(E), group_score(c.n_group);
  std::vector<char> allowed(E), all_groups(c.n_group, 1);
  for (int64_t t = 0; t < T; ++t) {
    const float* x = logits + t * E;
    if (c.scoring_func == DeepseekConfig::ScoringFunc::kSoftmax) {
      std::copy_n(x, E, score.data());
      cpu::Softmax(score.data(), E);
    } else {
      for (int64_t e = 0; e < E; ++e) score[e] = 1.0f / (1.0f + std::exp(-x[e]));
    }
    // The score experts are chosen by: V3 adds the load-balancing bias (choice only;
    // the weights stay unbiased).
    for (int64_t e = 0; e < E; ++e) choice[e] = bias != nullptr ? score[e] + bias[e] : score[e];
    std::fill(allowed.begin(), allowed.end(), 1);
    if (c.topk_method != DeepseekConfig::TopkMethod::kGreedy) {
      for (int64_t g = 0; g < c.n_group; ++g) {
        const float* s = choice.data() + g * per_group;
        if (c.topk_method == DeepseekConfig::TopkMethod::kGroupLimitedGreedy) {
          group_score[g] = *std::max_element(s, s + per_group);
        } else {  // noaux_tc: sum of the group's two best
          float best = -INFINITY, second = -INFINITY;
          for (int64_t i = 0; i < per_group; ++i) {
            if (s[i] > best) {
              second = best;
              best = s[i];
            } else if (s[i] > second) {
              second = s[i];
            }
          }
          group_score[g] = best + second;
        }
      }
      std::vector<int32_t> groups(c.topk_group);
      TopK(group_score.data(), all_groups, c.topk_group, groups.data());
      std::fill(allowed.begin(), allowed.end(), 0);
      for (int32_t g : groups) std::fill_n(allowed.begin() + g * per_group, per_group, 1);
    }
    int32_t* ids = r.ids.data() + t * k;
    float* w = r.weights.data() + t * k;
    TopK(choice.data(), allowed, k, ids);
    float sum = 0;
    for (int64_t j = 0; j < k; ++j) {
      w[j] = score[ids[j]];
      sum += w[j];
    }
    for (int64_t j = 0; j < k; ++j) {
      if (c.norm_topk_prob) w[j] /= sum + 1e-20f;
      w[j] *= static_cast<float>(c.routed_scaling_factor);
    }
  }
  return r;
}

absl::StatusOr<SwiGluMlp> SwiGluMlp::Load(const WeightStore& store, const std::string& prefix, int64_t hidden,
                                          int64_t intermediate, ShardOf shard) {
  ASSIGN_OR_RETURN(auto gate, ColumnParallelLinear::Load(store, prefix + "gate_proj", hidden, intermediate, false, shard));
  ASSIGN_OR_RETURN(auto up, ColumnParallelLinear::Load(store, prefix + "up_proj", hidden, intermediate, false, shard));
  ASSIGN_OR_RETURN(auto down, RowParallelLinear::Load(store, prefix + "down_proj", intermediate, hidden, shard));
  return SwiGluMlp{std::move(gate), std::move(up), std::move(down)};
}

void SwiGluMlp::Run(ThreadPool* pool, const float* x, int64_t T, int64_t hidden, float* y, bool accumulate,
                    std::vector<float>* scratch) const {
  const int64_t inter = intermediate();
  scratch->resize(2 * T * inter);
  float* g = scratch->data();
  float* u = g + T * inter;
  const cpu::MatmulTarget gate_up[2] = {gate.Target(g, inter), up.Target(u, inter)};
  cpu::Matmul(pool, x, T, hidden, gate_up);
  cpu::SiluMul(g, u, g, T * inter);
  cpu::MatmulTarget d = down.AccumulateInto(y, hidden);
  d.accumulate = accumulate;
  cpu::Matmul(pool, g, T, inter, {&d, 1});
}

absl::StatusOr<DeepseekMoe> DeepseekMoe::Load(const WeightStore& store, const std::string& prefix,
                                              const ModelConfig& c, ExpertRange experts, ShardOf tp) {
  const DeepseekConfig& d = c.deepseek;
  DeepseekMoe m;
  m.config_ = d;
  m.hidden_ = c.hidden_size;
  m.range_ = experts;
  ASSIGN_OR_RETURN(m.router_, ColumnParallelLinear::Load(store, prefix + "gate", c.hidden_size, d.n_routed_experts,
                                                         false, ShardOf{}));
  if (d.topk_method == DeepseekConfig::TopkMethod::kNoauxTc) {
    ASSIGN_OR_RETURN(VectorParam bias, VectorParam::Load(store, prefix + "gate.e_score_correction_bias",
                                                         d.n_routed_experts));
    m.score_bias_ = std::move(bias);
  }
  // A routed expert is whole on the rank that holds it (expert parallelism splits the
  // set of experts, not their matrices).
  for (int64_t e = experts.begin; e < experts.end; ++e) {
    ASSIGN_OR_RETURN(SwiGluMlp mlp, SwiGluMlp::Load(store, fmt::format("{}experts.{}.", prefix, e), c.hidden_size,
                                                    d.moe_intermediate_size, ShardOf{}));
    m.experts_.push_back(std::move(mlp));
  }
  if (d.n_shared_experts > 0) {
    ASSIGN_OR_RETURN(m.shared_, SwiGluMlp::Load(store, prefix + "shared_experts.", c.hidden_size,
                                                d.moe_intermediate_size * d.n_shared_experts, tp));
  }
  return m;
}

size_t DeepseekMoe::bytes() const {
  size_t n = router_.bytes() + (score_bias_ ? score_bias_->bytes() : 0) + (shared_ ? shared_->bytes() : 0);
  for (const SwiGluMlp& e : experts_) n += e.bytes();
  return n;
}

// Tokens are grouped by expert so that each expert's matrices are read once per step
// for all the tokens routed to it (one matmul of n_e rows), then scattered back with
// their routing weight.
void DeepseekMoe::Forward(ThreadPool* pool, const float* xn, int64_t T, float* h) {
  const int64_t E = config_.n_routed_experts, H = hidden_;
  logits_.resize(T * E);
  const cpu::MatmulTarget route = router_.Target(logits_.data(), E);
  cpu::Matmul(pool, xn, T, H, {&route, 1});
  const Routing r = RouteTokens(config_, logits_.data(), T, score_bias_ ? score_bias_->data() : nullptr);

  if (shared_) shared_->Run(pool, xn, T, H, h, /*accumulate=*/true, &scratch_);

  std::vector<std::vector<int64_t>> slots(range_.end - range_.begin);  // (t * k + j) per local expert
  for (int64_t s = 0; s < T * r.k; ++s) {
    if (range_.Contains(r.ids[s])) slots[r.ids[s] - range_.begin].push_back(s);
  }
  for (size_t le = 0; le < slots.size(); ++le) {
    const std::vector<int64_t>& mine = slots[le];
    if (mine.empty()) continue;
    const int64_t n = static_cast<int64_t>(mine.size());
    gathered_.resize(n * H);
    out_.resize(n * H);
    for (int64_t i = 0; i < n; ++i) std::copy_n(xn + (mine[i] / r.k) * H, H, gathered_.data() + i * H);
    experts_[le].Run(pool, gathered_.data(), n, H, out_.data(), /*accumulate=*/false, &scratch_);
    for (int64_t i = 0; i < n; ++i) {
      float* dst = h + (mine[i] / r.k) * H;
      const float w = r.weights[mine[i]];
      const float* src = out_.data() + i * H;
      // Fused, written out (the GPU's AddWeightedRows rounds the same way).
      for (int64_t j = 0; j < H; ++j) dst[j] = std::fma(w, src[j], dst[j]);
    }
  }
}

}  // namespace shoal::worker
