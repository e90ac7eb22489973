#pragma once
// DeepSeekMoE: a router over n_routed_experts small SwiGLU experts plus always-on shared
// experts, added to the residual stream:
//   y = sum_{e in topk(x)} weight_e * expert_e(x) + shared(x)
// Routing (RouteTokens) is a pure function of the router logits, one of:
//   V2 softmax:  p = softmax(logits); "greedy" takes the top k of p;
//                "group_limited_greedy" first keeps the topk_group groups with the
//                highest max p, then takes the top k inside them.
//   V3 sigmoid (noaux_tc): s = sigmoid(logits); choice = s + e_score_correction_bias;
//                groups ranked by the sum of their two best choice scores, topk_group
//                kept, top k of choice inside them; weights are the unbiased s.
// Then, if norm_topk_prob, weights are divided by their sum, and all are multiplied by
// routed_scaling_factor. (transformers' DeepseekV2 ignores norm_topk_prob; no V2
// checkpoint sets it, and DeepSeek-V3 and vLLM normalize, so we follow them.)
//
// Experts are laid out for expert parallelism: an `ExpertRange` of the routed experts is
// loaded and run on this rank (the tensor ranks of a stage split them); every rank
// routes every token, tokens whose expert lives elsewhere contribute nothing here, and
// the ranks' partial outputs add up in the same all-reduce as the shared experts'
// row-parallel down projection.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/model_config.h"
#include "worker/model/weight_store.h"
#include "worker/models/linear.h"

namespace shoal::worker {

class ThreadPool;

// For each of T tokens, the k chosen experts (ids[t*k + j]) and their weights.
struct Routing {
  int64_t k = 0;
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

// logits: [T, n_routed_experts] router outputs; bias: [n_routed_experts] for noaux_tc
// (else null). Ties go to the lower expert id.
Routing RouteTokens(const DeepseekConfig& config, const float* logits, int64_t num_tokens,
                    const float* bias);

// gate/up/down of one SwiGLU MLP; `shard` splits the intermediate features.
struct SwiGluMlp {
  ColumnParallelLinear gate, up;
  RowParallelLinear down;
  int64_t intermediate() const { return gate.out_features(); }
  size_t bytes() const { return gate.bytes() + up.bytes() + down.bytes(); }
  // `prefix` ends with '.', e.g. "model.layers.0.mlp.".
  static absl::StatusOr<SwiGluMlp> Load(const WeightStore& store, const std::string& prefix, int64_t hidden,
                                        int64_t intermediate, ShardOf shard);
  // y[t] (+)= down(silu(gate(x[t])) * up(x[t])); scratch grows as needed.
  void Run(ThreadPool* pool, const float* x, int64_t num_tokens, int64_t hidden, float* y, bool accumulate,
           std::vector<float>* scratch) const;
};

class DeepseekMoe {
 public:
  // `prefix` is "model.layers.<i>.mlp.". Loads the router, the experts of `experts`, and
  // the shared experts split by `tp`.
  static absl::StatusOr<DeepseekMoe> Load(const WeightStore& store, const std::string& prefix,
                                          const ModelConfig& config, ExpertRange experts, ShardOf tp);
  // h[t] += MoE(xn[t]) for T rows of `hidden`.
  void Forward(ThreadPool* pool, const float* xn, int64_t num_tokens, float* h);
  size_t bytes() const;
  const ExpertRange& experts() const { return range_; }

 private:
  DeepseekConfig config_;
  int64_t hidden_ = 0;
  ColumnParallelLinear router_;            // [n_routed_experts, hidden], never sharded
  std::optional<VectorParam> score_bias_;  // noaux_tc's e_score_correction_bias
  ExpertRange range_;
  std::vector<SwiGluMlp> experts_;  // experts_[e - range_.begin]
  std::optional<SwiGluMlp> shared_;
  // Scratch reused across steps.
  std::vector<float> logits_, gathered_, out_, scratch_;
};

}  // namespace shoal::worker
