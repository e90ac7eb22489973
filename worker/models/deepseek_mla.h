#pragma once
// DeepSeek's multi-head latent attention (MLA) layer: projections, decoupled rotary
// part, latent cache writes, and the two ways to attend (worker/kernels/cpu/mla_attention.h).
//   q        = q_b(rmsnorm(q_a(x)))  or  q_proj(x)           [T, H, nope + rope]
//   [c, k_pe] = kv_a_proj_with_mqa(x); c = rmsnorm(c)        [T, kv_lora_rank + rope]
//   rope on q's rope part and on k_pe (one key shared by all heads)
//   cache   <- [c, k_pe] per token (nothing per head)
//   attn    = MLA(q, cache) with kv_b_proj = [W_uk; W_uv] per head
//   h      += o_proj(attn)
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/kernels/cpu/attention.h"
#include "worker/kernels/cpu/mla_attention.h"
#include "worker/kernels/cpu/yarn_rope.h"
#include "worker/model/model_config.h"
#include "worker/model/weight_store.h"
#include "worker/models/linear.h"

namespace shoal::worker {

class ThreadPool;

// Which form of MLA a sequence's chunk is computed in.
enum class MlaMode {
  kAuto,      // per sequence, the form with fewer multiply-adds: absorbed for decode and
              // short chunks over long contexts, expanded for prompts (PreferAbsorbed)
  kAbsorbed,  // always absorbed
  kExpanded,  // always expanded
};

class MlaAttention {
 public:
  // `prefix` is "model.layers.<i>.self_attn."; heads are split by `tp`.
  static absl::StatusOr<MlaAttention> Load(ThreadPool* pool, const WeightStore& store, const std::string& prefix,
                                           const ModelConfig& config, ShardOf tp);

  // h[t] += o_proj(MLA(xn[t])) for the T rows of `seqs`; writes the new tokens' entries
  // into `cache` first. positions[t] is row t's position.
  void Forward(ThreadPool* pool, const float* xn, int64_t num_tokens, std::span<const cpu::AttentionSequence> seqs,
               const int64_t* positions, const cpu::YarnRopeTable& rope, const cpu::PagedLatentLayer& cache,
               MlaMode mode, float* h);

  size_t bytes() const;  // mapped weights plus the absorbed form's copy of kv_b_proj

 private:
  bool PreferAbsorbed(const cpu::AttentionSequence& s) const;
  void AttendExpanded(ThreadPool* pool, const cpu::AttentionSequence& seq, const cpu::PagedLatentLayer& cache);

  int64_t hidden_ = 0, heads_ = 0;  // heads of this tensor rank
  int64_t nope_ = 0, rope_dim_ = 0, v_dim_ = 0, rank_ = 0;
  bool interleave_ = true;
  float scale_ = 1.0f;
  std::optional<ColumnParallelLinear> q_a_;  // low-rank q (not split: every rank needs all of it)
  std::optional<VectorParam> q_a_norm_;
  std::optional<ColumnParallelLinear> q_proj_;  // q_b_proj, or q_proj without q_lora_rank
  ColumnParallelLinear kv_a_;              // not split, like q_a
  std::optional<VectorParam> kv_a_norm_;
  ColumnParallelLinear kv_b_;
  RowParallelLinear o_;
  cpu::MlaAbsorbedWeights absorbed_;  // kv_b_proj rearranged per head for the absorbed form

  // Scratch reused across steps.
  std::vector<float> qa_, q_, ckv_, attn_, q_lat_, o_lat_, latents_, kv_;
};

}  // namespace shoal::worker
