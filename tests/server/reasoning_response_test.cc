// GenerateRequest.separate_reasoning on the response path: the streamed responses of one
// request carry the reasoning in reasoning_text and the answer in text, whatever way the
// engine cut its pieces, with token ids and the finish reason untouched.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "worker/server/request_translation.h"

namespace shoal::worker {
namespace {

struct Stream {
  std::string reasoning, text;
  std::vector<int32_t> ids;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
};

// What a client collects from responses made of `pieces` (one token id each).
Stream Collect(bool starts_in_reasoning, const std::vector<std::string>& pieces) {
  ReasoningSplitter splitter(starts_in_reasoning);
  Stream s;
  for (size_t i = 0; i < pieces.size(); ++i) {
    GenerationOutput out;
    out.token_ids = {static_cast<int32_t>(100 + i)};
    out.text = pieces[i];
    const bool last = i + 1 == pieces.size();
    if (last) out.finish = FinishReason::kStop;
    v1::GenerateResponse r = ToProtoResponse(out);
    SeparateReasoning(&splitter, last, &r);
    s.reasoning += r.reasoning_text();
    s.text += r.text();
    s.ids.insert(s.ids.end(), r.token_ids().begin(), r.token_ids().end());
    if (last) s.finish = r.finish_reason();
  }
  return s;
}

TEST(SeparateReasoning, SplitsR1OutputAcrossResponses) {
  // "</think>" arrives as three tokens, as it does in DeepSeek's vocabulary.
  const Stream s = Collect(true, {"Two", " plus two", " is four.\n", "</", "think", ">\n\n", "**4**", ""});
  EXPECT_EQ(s.reasoning, "Two plus two is four.");
  EXPECT_EQ(s.text, "**4**");
  EXPECT_EQ(s.ids.size(), 8u);
  EXPECT_EQ(s.finish, v1::FINISH_REASON_STOP);
}

TEST(SeparateReasoning, LastResponseReleasesHeldBackText) {
  // The stream ends (say max_tokens) on what could have been the start of the closing tag.
  const Stream s = Collect(true, {"thinking", " </th"});
  EXPECT_EQ(s.reasoning, "thinking </th");
  EXPECT_EQ(s.text, "");
}

TEST(SeparateReasoning, AnswerWithoutReasoningStaysText) {
  const Stream s = Collect(false, {"Hello", ", world", "!"});
  EXPECT_EQ(s.reasoning, "");
  EXPECT_EQ(s.text, "Hello, world!");
}

}  // namespace
}  // namespace shoal::worker
