#pragma once
// What the engine is asked to do and what it streams back, independent of gRPC. The
// server translates proto <-> these in one place.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace shoal::worker {

struct SamplingOptions {
  float temperature = 0.0f;      // 0 = greedy
  int32_t top_k = 0;             // 0 = off
  float top_p = 1.0f;            // 1 = off
  float min_p = 0.0f;            // 0 = off
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::optional<uint64_t> seed;
};

struct StopOptions {
  std::vector<std::string> stop_strings;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int32_t max_tokens = 0;  // 0 = until the context is full
};

struct GenerationRequest {
  std::string request_id;
  std::vector<int32_t> prompt_tokens;  // BOS already added where the model wants it
  SamplingOptions sampling;
  StopOptions stop;
  bool include_logprobs = false;
  int32_t top_logprobs = 0;
};

enum class FinishReason { kNone, kStop, kLength, kCancelled, kError };

struct TokenLogprob {
  int32_t token_id = 0;
  float logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top;  // (id, logprob), most likely first
};

// One streamed piece. The last one for a request has finish != kNone and the usage fields.
struct GenerationOutput {
  std::string request_id;
  std::vector<int32_t> token_ids;
  std::string text;  // whole UTF-8 characters only; stop strings are cut out
  std::vector<TokenLogprob> logprobs;
  FinishReason finish = FinishReason::kNone;
  std::string matched_stop;
  absl::Status error;  // set with finish == kError
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  int32_t cached_prompt_tokens = 0;
  double time_to_first_token_seconds = 0.0;
};

// Called on the engine's thread; must be quick and must not call back into the engine
// except Cancel().
using OutputCallback = std::function<void(GenerationOutput)>;

}  // namespace shoal::worker
