#pragma once
// Separates a reasoning model's streamed output (DeepSeek-R1 and its distills) into the
// reasoning and the answer, for GenerateRequest.separate_reasoning:
//
//   [<think>] reasoning </think> answer
//
// Everything before the first `</think>` is reasoning; a leading `<think>` (after
// whitespace) is dropped. When the prompt already ended with `<think>` (R1's chat template
// since 2025-02) the output holds only the closing tag, so the splitter starts inside the
// reasoning; otherwise an output that does not open with `<think>` has no reasoning and is
// all answer. The reasoning is trimmed of the whitespace next to its tags and the answer of
// the whitespace that follows `</think>` (R1 writes "<think>\n…\n</think>\n\n…"). Text after
// the first `</think>` is answer verbatim, tags included.
//
// Tags may arrive split over several pieces (they are several tokens in DeepSeek's
// vocabulary): a tail that could still become a tag, or whitespace that could still turn
// out to precede one, is held back until the next piece decides it. Pieces come in as whole
// UTF-8 characters (from the streaming detokenizer) and every cut falls before an ASCII '<'
// or ASCII whitespace, so no output ever splits a character.
#include <string>
#include <string_view>

namespace shoal::worker {

class ReasoningSplitter {
 public:
  struct Piece {
    std::string reasoning;
    std::string text;
  };

  // `starts_in_reasoning`: the prompt ended inside an open <think>.
  explicit ReasoningSplitter(bool starts_in_reasoning);

  // The next piece of output; returns what can be shown of it now.
  Piece Push(std::string_view piece);
  // End of the stream: whatever was held back, where it belongs (an unclosed reasoning
  // section stays reasoning).
  Piece Flush();

 private:
  enum class State { kOpening, kReasoningStart, kReasoning, kAnswerStart, kAnswer };
  void Drain(Piece* out, bool final);

  State state_;
  bool starts_in_reasoning_;
  std::string pending_;  // undecided bytes
};

}  // namespace shoal::worker
