// ReasoningSplitter: reasoning/answer separation of R1-style output, fed whole and cut into
// pieces at every character boundary (tags split over tokens, multi-byte characters).
#include "worker/engine/reasoning_splitter.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace shoal::worker {
namespace {

struct Split {
  std::string reasoning;
  std::string text;
  bool operator==(const Split&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Split& s) {
  return os << "{reasoning=\"" << s.reasoning << "\", text=\"" << s.text << "\"}";
}

// True when `s` does not end inside a multi-byte UTF-8 sequence (and starts on a lead byte).
bool WholeCharacters(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

// Feeds `pieces` then flushes; every emitted piece must be whole characters.
Split RunSplitter(bool starts_in_reasoning, const std::vector<std::string>& pieces) {
  ReasoningSplitter splitter(starts_in_reasoning);
  Split out;
  auto take = [&](const ReasoningSplitter::Piece& p) {
    EXPECT_TRUE(WholeCharacters(p.reasoning)) << p.reasoning;
    EXPECT_TRUE(WholeCharacters(p.text)) << p.text;
    out.reasoning += p.reasoning;
    out.text += p.text;
  };
  for (const std::string& p : pieces) take(splitter.Push(p));
  take(splitter.Flush());
  return out;
}

std::vector<size_t> CharacterBoundaries(const std::string& s) {
  std::vector<size_t> b;
  for (size_t i = 1; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) b.push_back(i);
  }
  return b;
}

// The same result whole, one character at a time, and cut at every one or two boundaries.
void ExpectSplit(bool starts_in_reasoning, const std::string& output, const Split& want) {
  SCOPED_TRACE(output);
  EXPECT_EQ(RunSplitter(starts_in_reasoning, {output}), want) << "whole";
  const std::vector<size_t> b = CharacterBoundaries(output);
  std::vector<std::string> chars;
  size_t prev = 0;
  for (size_t cut : b) {
    chars.push_back(output.substr(prev, cut - prev));
    prev = cut;
  }
  chars.push_back(output.substr(prev));
  EXPECT_EQ(RunSplitter(starts_in_reasoning, chars), want) << "character by character";
  for (size_t i = 0; i < b.size(); ++i) {
    for (size_t j = i; j < b.size(); ++j) {
      const std::vector<std::string> pieces = {output.substr(0, b[i]), output.substr(b[i], b[j] - b[i]),
                                               output.substr(b[j])};
      const Split got = RunSplitter(starts_in_reasoning, pieces);
      if (got != want) {
        ADD_FAILURE() << "cut at " << b[i] << " and " << b[j] << ": " << got << " want " << want;
        return;
      }
    }
  }
}

TEST(ReasoningSplitter, PromptOpenedThinkOutputHasOnlyTheClosingTag) {
  ExpectSplit(true, "Let me think.\n2+2 is 4.\n</think>\n\nThe answer is **4**.",
              {"Let me think.\n2+2 is 4.", "The answer is **4**."});
}

TEST(ReasoningSplitter, OutputThatOpensThinkItself) {
  ExpectSplit(false, "<think>\n第一步：读题。😀\n第二步\n</think>\n\n答案是 4 👨‍👩‍👧",
              {"第一步：读题。😀\n第二步", "答案是 4 👨‍👩‍👧"});
  // A model that repeats the opening tag the prompt already wrote.
  ExpectSplit(true, "<think>\nhmm</think>ok", {"hmm", "ok"});
}

TEST(ReasoningSplitter, OutputWithoutOpeningTagIsAllAnswerUnlessThePromptOpenedIt) {
  ExpectSplit(false, "No reasoning here </think> x", {"", "No reasoning here </think> x"});
  ExpectSplit(false, "  Hello <think>", {"", "  Hello <think>"});
  ExpectSplit(true, "No tag at first </think> x", {"No tag at first", "x"});
}

TEST(ReasoningSplitter, OnlyTheFirstClosingTagSplits) {
  ExpectSplit(true, "a</think>b</think><think>c", {"a", "b</think><think>c"});
}

TEST(ReasoningSplitter, AngleBracketsInsideReasoningAreText) {
  ExpectSplit(true, "x < y and a<b, </thin k> </ </think>yes", {"x < y and a<b, </thin k> </", "yes"});
}

TEST(ReasoningSplitter, EmptyReasoning) {
  ExpectSplit(false, "<think></think>\n\nDirect.", {"", "Direct."});
  ExpectSplit(true, "\n\n</think>\n\nDirect.", {"", "Direct."});
}

TEST(ReasoningSplitter, UnclosedReasoningAtEndOfStreamStaysReasoning) {
  ExpectSplit(true, "思考中… still going </th", {"思考中… still going </th", ""});
  ExpectSplit(false, "<think>cut off  ", {"cut off  ", ""});
}

TEST(ReasoningSplitter, StreamEndsWhileTheOpeningIsUndecided) {
  ExpectSplit(false, "<thi", {"", "<thi"});
  ExpectSplit(false, "  \n", {"", "  \n"});
  ExpectSplit(true, "  \n", {"", ""});
  EXPECT_EQ(RunSplitter(true, {}), Split{});
  EXPECT_EQ(RunSplitter(false, {""}), Split{});
}

// Reasoning streams out as it comes; only what could still be part of "</think>" (and the
// whitespace before it) waits.
TEST(ReasoningSplitter, HoldsBackOnlyWhatCouldBecomeATag) {
  ReasoningSplitter s(/*starts_in_reasoning=*/false);
  auto p = s.Push("<think>\nabc");
  EXPECT_EQ(p.reasoning, "abc");
  p = s.Push(" def \n");
  EXPECT_EQ(p.reasoning, " def");
  p = s.Push("</thi");
  EXPECT_EQ(p.reasoning, "");
  p = s.Push("nking is fun");  // not the tag after all
  EXPECT_EQ(p.reasoning, " \n</thinking is fun");
  p = s.Push("</think>");
  EXPECT_EQ(p.reasoning, "");
  EXPECT_EQ(p.text, "");
  p = s.Push("\n\nAnswer");
  EXPECT_EQ(p.text, "Answer");
  p = s.Push(" more\n");
  EXPECT_EQ(p.text, " more\n");  // the answer is verbatim once it started
  p = s.Flush();
  EXPECT_EQ(p.text, "");
  EXPECT_EQ(p.reasoning, "");
}

}  // namespace
}  // namespace shoal::worker
