#include "worker/engine/stop_checker.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace shoal::worker {
namespace {

constexpr int32_t kEos = 2;
constexpr int32_t kAnyToken = 100;

StopOptions Strings(std::vector<std::string> s) {
  StopOptions o;
  o.stop_strings = std::move(s);
  return o;
}

// Feeds pieces one token each; returns what was streamed and the final decision.
struct Streamed {
  std::vector<std::string> streamed;
  StopDecision last;
};
Streamed Feed(StopChecker& c, const std::vector<std::string>& pieces) {
  Streamed run;
  int64_t n = 0;
  for (const std::string& p : pieces) {
    ++n;
    run.last = c.Step(kAnyToken, p, n, 10 + n);
    run.streamed.push_back(run.last.text);
    if (run.last.finish != FinishReason::kNone) break;
  }
  return run;
}

bool EndsInsideAUtf8Sequence(const std::string& s) {
  // Walk back over continuation bytes to the lead byte and check the sequence is complete.
  size_t i = s.size();
  size_t cont = 0;
  while (i > 0 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) { --i; ++cont; }
  if (i == 0) return cont > 0;
  unsigned char lead = static_cast<unsigned char>(s[i - 1]);
  size_t need = lead < 0x80 ? 0 : lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : 1;
  return need != cont;
}

TEST(StopChecker, MaxTokensEndsWithLength) {
  StopOptions o;
  o.max_tokens = 3;
  StopChecker c(o, {kEos}, 100);
  Streamed r = Feed(c, {"a", "b", "c", "d"});
  EXPECT_EQ(r.last.finish, FinishReason::kLength);
  EXPECT_EQ(r.streamed, (std::vector<std::string>{"a", "b", "c"}));
}

TEST(StopChecker, ContextEndEndsWithLength) {
  StopChecker c(StopOptions{}, {kEos}, 12);
  Streamed r = Feed(c, {"a", "b", "c"});
  EXPECT_EQ(r.last.finish, FinishReason::kLength);
  EXPECT_EQ(r.streamed.size(), 2u);  // 10 prompt tokens + 2 = the context of 12
}

TEST(StopChecker, EosStopsUnlessIgnored) {
  StopChecker c(StopOptions{}, {kEos}, 100);
  EXPECT_TRUE(c.IsStopToken(kEos));
  StopDecision d = c.Step(kEos, "", 1, 11);
  EXPECT_EQ(d.finish, FinishReason::kStop);
  EXPECT_TRUE(d.matched_stop.empty());

  StopOptions ignore;
  ignore.ignore_eos = true;
  StopChecker c2(ignore, {kEos}, 100);
  EXPECT_FALSE(c2.IsStopToken(kEos));
  EXPECT_EQ(c2.Step(kEos, "x", 1, 11).finish, FinishReason::kNone);
}

TEST(StopChecker, StopTokenIdsStopEvenWhenEosIsIgnored) {
  StopOptions o;
  o.ignore_eos = true;
  o.stop_token_ids = {7};
  StopChecker c(o, {kEos}, 100);
  EXPECT_TRUE(c.IsStopToken(7));
  EXPECT_EQ(c.Step(7, "", 1, 11).finish, FinishReason::kStop);
}

TEST(StopChecker, StopStringInsideOnePieceIsCutOut) {
  StopChecker c(Strings({"wor"}), {kEos}, 100);
  Streamed r = Feed(c, {"hello world"});
  EXPECT_EQ(r.last.finish, FinishReason::kStop);
  EXPECT_EQ(r.last.text, "hello ");
  EXPECT_EQ(r.last.matched_stop, "wor");
}

TEST(StopChecker, StopStringAcrossPiecesIsHeldBackUntilDecided) {
  StopChecker c(Strings({"world"}), {kEos}, 100);
  Streamed r = Feed(c, {"he", "llo w", "or", "ld!", "more"});
  EXPECT_EQ(r.streamed, (std::vector<std::string>{"he", "llo ", "", ""}));
  EXPECT_EQ(r.last.finish, FinishReason::kStop);
  EXPECT_EQ(r.last.matched_stop, "world");
}

TEST(StopChecker, HeldTextIsReleasedWhenItDiverges) {
  StopChecker c(Strings({"world"}), {kEos}, 100);
  Streamed r = Feed(c, {"a w", "o", "x", "b"});
  EXPECT_EQ(r.streamed, (std::vector<std::string>{"a ", "", "wox", "b"}));
  EXPECT_EQ(r.last.finish, FinishReason::kNone);
}

TEST(StopChecker, HeldTextIsReleasedAtLengthAndEos) {
  StopOptions o = Strings({"STOP"});
  o.max_tokens = 2;
  StopChecker c(o, {kEos}, 100);
  Streamed r = Feed(c, {"xS", "ST"});
  EXPECT_EQ(r.last.finish, FinishReason::kLength);
  EXPECT_EQ(r.streamed, (std::vector<std::string>{"x", "SST"}));

  StopChecker c2(Strings({"STOP"}), {kEos}, 100);
  EXPECT_EQ(c2.Step(kAnyToken, "ST", 1, 11).text, "");
  StopDecision d = c2.Step(kEos, "", 2, 12);
  EXPECT_EQ(d.finish, FinishReason::kStop);
  EXPECT_EQ(d.text, "ST");
}

TEST(StopChecker, EarliestStopStringWins) {
  StopChecker c(Strings({"cd", "bcx", "b"}), {kEos}, 100);
  Streamed r = Feed(c, {"abcd"});
  EXPECT_EQ(r.last.text, "a");
  EXPECT_EQ(r.last.matched_stop, "b");
}

TEST(StopChecker, StopStringBeatsLengthOnTheSameToken) {
  StopOptions o = Strings({"end"});
  o.max_tokens = 2;
  StopChecker c(o, {kEos}, 100);
  Streamed r = Feed(c, {"the e", "nd"});
  EXPECT_EQ(r.last.finish, FinishReason::kStop);
  EXPECT_EQ(r.last.matched_stop, "end");
}

TEST(StopChecker, MultiByteStopStringNeverSplitsACharacter) {
  StopChecker c(Strings({"éa"}), {kEos}, 100);
  Streamed r = Feed(c, {"caf", "é", "é", "b", "日本"});
  EXPECT_EQ(r.streamed, (std::vector<std::string>{"caf", "", "é", "éb", "日本"}));
  for (const std::string& s : r.streamed) EXPECT_FALSE(EndsInsideAUtf8Sequence(s)) << s;
  Streamed r2 = Feed(c, {"é", "a"});
  EXPECT_EQ(r2.last.matched_stop, "éa");
}

TEST(StopChecker, ReleaseReturnsHeldTextAndTail) {
  StopChecker c(Strings({"abc"}), {kEos}, 100);
  EXPECT_EQ(c.Step(kAnyToken, "xab", 1, 11).text, "x");
  EXPECT_EQ(c.Release("\xEF\xBF\xBD"), "ab\xEF\xBF\xBD");
}

}  // namespace
}  // namespace shoal::worker
