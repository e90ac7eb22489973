// Tokenizers built from a GGUF vocabulary: the pre-tokenizer table and its errors.
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "worker/tokenizer/tokenizer.h"

namespace shoal::worker {
namespace {

using ::testing::HasSubstr;

// A tiny byte-level vocabulary: all 256 byte spellings plus a few merges.
GgufVocab TinyVocab(const std::string& pre) {
  GgufVocab v;
  v.model = "gpt2";
  v.pre = pre;
  v.tokens.push_back("<|endoftext|>");
  v.token_types.push_back(3);
  v.tokens.push_back("<think>");
  v.token_types.push_back(4);
  auto printable = [](int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  };
  int extra = 256;
  for (int b = 0; b < 256; ++b) {
    const uint32_t cp = printable(b) ? b : extra++;
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    v.tokens.push_back(s);
    v.token_types.push_back(1);
  }
  for (const char* t : {"he", "ll", "hell", "hello", "12"}) {
    v.tokens.push_back(t);
    v.token_types.push_back(1);
  }
  v.merges = {"h e", "l l", "he ll", "hell o", "1 2"};
  v.eos_token_id = 0;
  return v;
}

std::vector<std::string> Pieces(const Tokenizer& tok, const std::string& text) {
  std::vector<std::string> out;
  for (int32_t id : tok.Encode(text)) out.push_back(tok.TokenBytes(id));
  return out;
}

TEST(GgufVocabTokenizer, SmolLMSplitsDigitsIndividually) {
  auto tok = Tokenizer::FromGguf(TinyVocab("smollm"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_THAT(Pieces(**tok, "hello 12"),
              ::testing::ElementsAre("hello", " ", "1", "2"));
  auto gpt2 = Tokenizer::FromGguf(TinyVocab("gpt2"));
  ASSERT_TRUE(gpt2.ok()) << gpt2.status();
  EXPECT_THAT(Pieces(**gpt2, "hello 12"), ::testing::ElementsAre("hello", " ", "12"));
}

TEST(GgufVocabTokenizer, ControlAndUserDefinedTokensAreMatchedWhole) {
  auto tok = Tokenizer::FromGguf(TinyVocab("llama-bpe"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->Encode("<|endoftext|>").front(), 0);
  EXPECT_EQ((*tok)->Encode("x<think>").back(), 1);
  EXPECT_TRUE((*tok)->IsSpecial(0));
  EXPECT_FALSE((*tok)->IsSpecial(1));
  EXPECT_EQ((*tok)->Decode(std::vector<int32_t>{0, 1}, /*skip_special=*/true), "<think>");
  EXPECT_EQ((*tok)->eos_ids(), std::vector<int32_t>{0});
}

TEST(GgufVocabTokenizer, UnknownPreIsNamed) {
  auto tok = Tokenizer::FromGguf(TinyVocab("mystery-pre"));
  ASSERT_FALSE(tok.ok());
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("'mystery-pre'"));
}

TEST(GgufVocabTokenizer, SentencePieceModelIsExplicitlyUnsupported) {
  GgufVocab v = TinyVocab("default");
  v.model = "llama";
  auto tok = Tokenizer::FromGguf(v);
  ASSERT_FALSE(tok.ok());
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("unsupported tokenizer model 'llama'"));
}

TEST(GgufVocabTokenizer, BadMergeIsNamed) {
  GgufVocab v = TinyVocab("gpt2");
  v.merges.push_back("nospace");
  auto tok = Tokenizer::FromGguf(v);
  ASSERT_FALSE(tok.ok());
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("tokenizer.ggml.merges[5]"));
}

}  // namespace
}  // namespace shoal::worker
