#pragma once
// Decides when a sequence is done and what text of it may be shown yet.
//
// Token stops (EOS unless ignore_eos, stop_token_ids) end the sequence at the token: its id
// is reported, its text is not. Stop strings are matched on the text, which may split them
// across tokens: any tail of the text that could still grow into a stop string is held
// back until the next token decides it. When a stop string appears, the text before it is
// released, the stop string and anything after it are dropped, and matched_stop names it.
// max_tokens and the model's context end the sequence with kLength and release all held
// text.
//
// Text comes in as whole UTF-8 characters (from StreamingDetokenizer); since a stop string
// starts with a lead byte, every cut made here falls on a character boundary too.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "worker/engine/request.h"

namespace shoal::worker {

struct StopDecision {
  FinishReason finish = FinishReason::kNone;
  std::string text;          // text that may be streamed now
  std::string matched_stop;  // the stop string that ended the sequence
};

class StopChecker {
 public:
  StopChecker(const StopOptions& options, std::vector<int32_t> eos_ids, int64_t max_model_len);

  // True when `token` ends the sequence by itself (EOS or a stop token id); its text
  // should then not be pushed.
  bool IsStopToken(int32_t token) const;

  // After a token was appended: `piece` is the new text (empty for a stop token),
  // `num_output_tokens`/`num_tokens` the counts including it.
  StopDecision Step(int32_t token, std::string_view piece, int64_t num_output_tokens,
                    int64_t num_tokens);

  // Ends the stream for another reason (cancel, error, or the caller's own decision):
  // returns whatever was held back, followed by `tail` (the detokenizer's flush).
  std::string Release(std::string_view tail);

 private:
  // Length of the longest suffix of pending_ that is a proper prefix of a stop string.
  size_t HeldBackLength() const;

  StopOptions options_;
  std::vector<int32_t> eos_ids_;
  int64_t max_model_len_;
  std::string pending_;  // text not streamed yet: a possible start of a stop string
};

}  // namespace shoal::worker
