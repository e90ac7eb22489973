#pragma once
// Turns one row of logits into the next token of one sequence.
//
// Order of processing (what "the processed distribution" means below):
//   1. penalties on the raw logits: repetition (Hugging Face style, over prompt + output
//      tokens: a positive logit is divided by the penalty, a negative one multiplied),
//      then presence and frequency (OpenAI style, over output tokens only:
//      logit -= presence * [count > 0] + frequency * count);
//   2. temperature: logits / T (T below kGreedyTemperature, 0 included, means greedy:
//      argmax, lowest id on ties; smaller temperatures would overflow 1 / T);
//   3. truncation, each relative to the distribution after step 2: top-k, then top-p
//      (smallest set of most likely tokens whose mass reaches p), then min-p (drop tokens
//      below min_p * the largest probability);
//   4. a draw from the sequence's own RNG over what is left.
// Logprobs are the log-softmax after steps 1-2 (with T = 1 for greedy), before truncation:
// they stay finite for every token and describe the distribution the truncation cut from.
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "worker/engine/request.h"

namespace shoal::worker {

// Temperatures below this sample greedily (as vLLM's 1e-5): 1 / T would be huge or
// infinite and the distribution is one token anyway. The GPU sampler draws the same line
// (cuda::kGreedyTemperature; tests/models/step_plan_test.cc holds them equal).
inline constexpr float kGreedyTemperature = 1e-5f;

struct SampleResult {
  int32_t token_id = 0;
  float logprob = 0.0f;                        // set when logprobs were asked for
  std::vector<std::pair<int32_t, float>> top;  // top_logprobs alternatives, most likely first
};

class Sampler {
 public:
  // `logits` is one row of the vocabulary (modified in place as scratch). `prompt_and_output`
  // are the sequence's tokens so far, `num_prompt_tokens` of them the prompt.
  static SampleResult Sample(std::span<float> logits, const SamplingOptions& options,
                             std::span<const int32_t> prompt_and_output,
                             int64_t num_prompt_tokens, std::mt19937_64* rng,
                             bool want_logprobs, int top_logprobs);

  // The steps on their own, for tests.
  static void ApplyPenalties(std::span<float> logits, const SamplingOptions& options,
                             std::span<const int32_t> prompt_and_output, int64_t num_prompt_tokens);
  // Probabilities (softmax of `logits`) with everything outside top-k / top-p / min-p set
  // to 0 and the rest renormalized.
  static std::vector<float> TruncatedProbs(std::span<const float> logits, int32_t top_k,
                                           float top_p, float min_p);
  // A uniform double in [0, 1) from 53 bits of `rng`: the same on every standard library.
  // Sample takes exactly one for every token it does not choose greedily.
  static double Uniform(std::mt19937_64* rng);
  static bool IsGreedy(const SamplingOptions& options) { return !(options.temperature >= kGreedyTemperature); }
};

}  // namespace shoal::worker
