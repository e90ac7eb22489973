// The UTF-8 rules the detokenizer relies on, against the Unicode standard's own examples
// (Unicode 15, section 3.9 "U+FFFD Substitution of Maximal Subparts", Table 3-8).
#include "worker/tokenizer/utf8.h"

#include <gtest/gtest.h>

#include "worker/tokenizer/byte_level.h"

namespace shoal::worker {
namespace {

const std::string kFffd = "\xEF\xBF\xBD";

TEST(LossyUtf8, KeepsValidText) {
  EXPECT_EQ(LossyUtf8("plain"), "plain");
  EXPECT_EQ(LossyUtf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"), "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
  EXPECT_EQ(LossyUtf8(""), "");
}

TEST(LossyUtf8, ReplacesEachMaximalSubpartOnce) {
  // Table 3-8: 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64 -> a FFFD FFFD FFFD b FFFD c FFFD FFFD d
  EXPECT_EQ(LossyUtf8("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64"),
            "a" + kFffd + kFffd + kFffd + "b" + kFffd + "c" + kFffd + kFffd + "d");
  EXPECT_EQ(LossyUtf8("\xE2\x82"), kFffd);            // truncated 3-byte sequence: one
  EXPECT_EQ(LossyUtf8("\xC0\xAF"), kFffd + kFffd);    // overlong: C0 is never a lead
  EXPECT_EQ(LossyUtf8("\xED\xA0\x80"), kFffd + kFffd + kFffd);  // surrogate
  EXPECT_EQ(LossyUtf8("\xF4\x90\x80\x80"), kFffd + kFffd + kFffd + kFffd);  // > U+10FFFF
}

TEST(StableUtf8Prefix, HoldsBackOnlyAnIncompleteTail) {
  EXPECT_EQ(StableUtf8Prefix("abc"), 3u);
  EXPECT_EQ(StableUtf8Prefix("ab\xE2\x82"), 2u);
  EXPECT_EQ(StableUtf8Prefix("ab\xF0\x9F\x98"), 2u);
  EXPECT_EQ(StableUtf8Prefix("ab\xF0"), 2u);
  EXPECT_EQ(StableUtf8Prefix("ab\x80"), 3u);      // can never become valid: emit (as FFFD)
  EXPECT_EQ(StableUtf8Prefix("ab\xE0\x80"), 4u);  // E0 80 is already ill-formed
  EXPECT_EQ(StableUtf8Prefix("\xE2\x82\xAC"), 3u);
}

TEST(ByteLevelAlphabet, SpellsEveryByteAndBack) {
  const ByteLevelAlphabet& a = ByteLevelAlphabet::Get();
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const std::string spelled = a.Encode(all);
  EXPECT_EQ(a.Decode(spelled), all);
  EXPECT_EQ(a.Spell(' '), "\xC4\xA0");   // Ġ
  EXPECT_EQ(a.Spell('\n'), "\xC4\x8A");  // Ċ
  EXPECT_EQ(a.Spell('A'), "A");
  EXPECT_FALSE(a.Decode("<|im start|>").has_value());  // space is not in the alphabet
}

}  // namespace
}  // namespace shoal::worker
