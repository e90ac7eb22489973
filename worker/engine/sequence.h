#pragma once
// One request as the scheduler and the step loop see it: its tokens (prompt, then output),
// how many of them are already in the KV cache, the blocks that hold them, and the
// per-request options and random state.
#include <chrono>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "worker/engine/kv_block_pool.h"
#include "worker/engine/request.h"

namespace shoal::worker {

enum class SequenceStatus { kWaiting, kRunning, kFinished };

struct Sequence {
  Sequence(int64_t seq_id, std::string request_id, std::vector<int32_t> prompt)
      : seq_id(seq_id),
        request_id(std::move(request_id)),
        tokens(std::move(prompt)),
        num_prompt_tokens(static_cast<int64_t>(tokens.size())) {}

  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
  int64_t num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
  std::span<const int32_t> output_tokens() const {
    return std::span<const int32_t>(tokens).subspan(num_prompt_tokens);
  }

  int64_t seq_id;            // arrival order, unique within an engine
  std::string request_id;
  std::vector<int32_t> tokens;  // prompt then output
  int64_t num_prompt_tokens;
  // Tokens whose K/V are in the cache. The tokens in [num_computed_tokens, num_tokens())
  // are what the sequence still has to catch up with: a prompt (chunk), or the token
  // sampled last step.
  int64_t num_computed_tokens = 0;
  std::vector<int32_t> block_table;       // covers at least num_computed_tokens
  std::vector<BlockHash> block_hashes;    // chain hashes of the committed full blocks
  SequenceStatus status = SequenceStatus::kWaiting;
  int32_t num_preemptions = 0;
  // Prompt tokens served from the prefix cache at first admission (usage).
  int64_t num_cached_prompt_tokens = 0;
  bool admitted_once = false;

  SamplingOptions sampling;
  StopOptions stop;
  bool include_logprobs = false;
  int32_t top_logprobs = 0;
  // Lives with the request, so a seeded request draws the same numbers whatever else is
  // in the batch.
  std::mt19937_64 rng;
};

}  // namespace shoal::worker
