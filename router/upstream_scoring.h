#pragma once
// How the router picks a group for one request: least outstanding work, with a bounded
// bonus for the group that already holds the request's prompt prefix in its KV cache.
//
//   load(g)    = inflight_requests(g)
//              + inflight_tokens(g) / tokens_per_request     (work, in request units)
//              + waiting_weight  * waiting_sequences(g)       (worker-reported queue)
//              + kv_usage_weight * kv_cache_usage_ratio(g)    (worker-reported, 0..1)
//   overlap(g) = matched_prefix_blocks(g) / prefix_blocks     (0..1; 0 when no blocks)
//   score(g)   = load(g) - affinity_bonus * overlap(g)
//
// The group with the lowest score wins; unhealthy groups and groups at their in-flight
// limit are not candidates. Because the bonus is at most `affinity_bonus`, a group holding
// a hot prefix keeps winning only while its load is less than the least loaded group's
// load plus `affinity_bonus`: a hot prefix can pile at most that much extra work onto one
// group before its requests spill over to the others.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "shoal/v1/generate.pb.h"

namespace shoal::router {

// What the router knows about one group at the moment it picks.
struct GroupLoad {
  int64_t inflight_requests = 0;
  int64_t inflight_tokens = 0;     // estimated prompt + completion tokens still to run
  int32_t waiting_sequences = 0;   // from shoal.v1.Worker/GetStats
  double kv_cache_usage_ratio = 0; // from shoal.v1.Worker/GetStats
  int matched_prefix_blocks = 0;   // leading prompt blocks this group served last
  bool eligible = true;            // healthy, serves the model, below its in-flight limit
};

struct ScoringWeights {
  double tokens_per_request = 512;
  double waiting_weight = 1.0;
  double kv_usage_weight = 2.0;
  double affinity_bonus = 4.0;
};

double GroupLoadScore(const GroupLoad& group, const ScoringWeights& weights);

// Index of the group to send the request to, or -1 when no group is eligible. Exact ties
// go to the first tied group at or after `tie_breaker % groups.size()`, so a caller that
// passes a rotating counter spreads uniform load round-robin.
int PickGroup(std::span<const GroupLoad> groups, int prefix_blocks, const ScoringWeights& weights,
              uint64_t tie_breaker);

// Prompt prefix identity in fixed blocks: hash i covers the first (i + 1) blocks (each
// hash chains the previous one), so equal hashes mean equal prefixes. Only whole blocks
// count, like the worker's block-granular prefix cache. Text prompts and chat messages
// are cut in `block_chars` bytes, token-id prompts in `block_tokens` ids.
struct PrefixOptions {
  int block_chars = 64;
  int block_tokens = 16;
  int max_blocks = 32;
};
std::vector<uint64_t> PrefixBlockHashes(const v1::GenerateRequest& request, const PrefixOptions& options);

// The bytes prefix affinity and token estimates look at: the prompt, or the chat messages
// joined with separators that cannot appear in a role name.
std::string PromptBytes(const v1::GenerateRequest& request);

// Work the request adds to a group, in tokens: prompt (about 4 bytes a token for text)
// plus max_tokens, or `default_completion_tokens` when max_tokens is 0.
int64_t EstimateRequestTokens(const v1::GenerateRequest& request, int64_t default_completion_tokens);

}  // namespace shoal::router
