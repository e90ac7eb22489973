// Encodes and decodes every fixture case with our tokenizer and compares with the ids and
// text HF tokenizers produced (tests/tokenizer/gen_fixtures.py).
#include <chrono>
#include <memory>
#include <string>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include "tests/tokenizer/fixture_io.h"
#include "worker/tokenizer/tokenizer.h"
#include "worker/tokenizer/utf8.h"

namespace shoal::worker {
namespace {

using testing::Escaped;
using testing::Ids;
using testing::ReadJsonFixture;

class FixtureTokenizer : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string name = GetParam();
    auto tok = Tokenizer::FromTokenizerJsonFile(testing::FixturePath(name + ".tokenizer.json"));
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::move(*tok);
    cases_ = ReadJsonFixture(name + ".cases.json");
  }
  std::unique_ptr<Tokenizer> tokenizer_;
  nlohmann::json cases_;
};

TEST_P(FixtureTokenizer, EncodesLikeHuggingFace) {
  int checked = 0;
  for (const auto& c : cases_["encode"]) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_EQ(tokenizer_->Encode(text), Ids(c["ids"])) << "text: " << Escaped(text);
    if (c.contains("ids_special_as_text")) {
      EXPECT_EQ(tokenizer_->Encode(text, /*parse_special=*/false), Ids(c["ids_special_as_text"]))
          << "special tokens as text: " << Escaped(text);
    } else {
      EXPECT_EQ(tokenizer_->Encode(text, /*parse_special=*/false), Ids(c["ids"]))
          << "special tokens as text: " << Escaped(text);
    }
    ++checked;
  }
  EXPECT_GT(checked, 30);
}

TEST_P(FixtureTokenizer, DecodesLikeHuggingFace) {
  for (const auto& c : cases_["decode"]) {
    const std::vector<int32_t> ids = Ids(c["ids"]);
    EXPECT_EQ(tokenizer_->Decode(ids), c["text"].get<std::string>())
        << "ids: " << c["ids"].dump();
    EXPECT_EQ(tokenizer_->Decode(ids, /*skip_special=*/true),
              c["text_skip_special"].get<std::string>())
        << "skip_special, ids: " << c["ids"].dump();
  }
}

// Decoding what we encoded gives the text back: every case is valid UTF-8 and byte-level
// BPE loses nothing. (Not for tokenizers that change the text on the way in: NFC, a prefix
// space, a Split that removes delimiters.)
TEST_P(FixtureTokenizer, RoundTripsEncodedText) {
  if (GetParam() == "qwen2_style" || GetParam() == "gpt2_style" ||
      GetParam() == "split_behaviors") {
    GTEST_SUCCEED() << "this tokenizer changes the text by design";
    return;
  }
  for (const auto& c : cases_["encode"]) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_EQ(tokenizer_->Decode(Ids(c["ids"])), text) << Escaped(text);
  }
}

// Streaming decoding, one token at a time, never emits a piece that ends inside a UTF-8
// sequence, and its pieces add up to exactly what whole-sequence decoding gives.
TEST_P(FixtureTokenizer, StreamingMatchesWholeDecode) {
  auto check = [&](const std::vector<int32_t>& ids, bool skip_special) {
    StreamingDetokenizer stream(*tokenizer_, skip_special);
    std::string joined;
    for (int32_t id : ids) {
      const std::string piece = stream.Push(id);
      // A piece is itself valid UTF-8: decoding it lossily changes nothing.
      EXPECT_EQ(LossyUtf8(piece), piece);
      joined += piece;
    }
    joined += stream.Flush();
    EXPECT_EQ(joined, tokenizer_->Decode(ids, skip_special));
  };
  for (const auto& c : cases_["decode"]) {
    check(Ids(c["ids"]), false);
    check(Ids(c["ids"]), true);
  }
  for (const auto& c : cases_["encode"]) check(Ids(c["ids"]), true);
}

TEST_P(FixtureTokenizer, TokenBytesConcatenateToDecodedBytes) {
  for (const auto& c : cases_["encode"]) {
    const std::vector<int32_t> ids = Ids(c["ids"]);
    std::string bytes;
    for (int32_t id : ids) bytes += tokenizer_->TokenBytes(id);
    EXPECT_EQ(LossyUtf8(bytes), tokenizer_->Decode(ids)) << Escaped(c["text"].get<std::string>());
  }
}

INSTANTIATE_TEST_SUITE_P(Families, FixtureTokenizer,
                         ::testing::Values("llama3_style", "qwen2_style", "deepseek_v3_style",
                                           "gpt2_style", "split_behaviors"));

TEST(FixtureTokenizerMeta, Llama3TemplateProcessingMeansBos) {
  auto tok = Tokenizer::FromTokenizerJsonFile(testing::FixturePath("llama3_style.tokenizer.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_TRUE((*tok)->add_bos());
  EXPECT_EQ((*tok)->bos_id(), (*tok)->TokenToId("<|begin_of_text|>"));
  EXPECT_TRUE((*tok)->IsSpecial(*(*tok)->TokenToId("<|eot_id|>")));
  EXPECT_FALSE((*tok)->IsSpecial(*(*tok)->TokenToId("a")));
}

TEST(FixtureTokenizerMeta, StreamingHoldsBackIncompleteCharacter) {
  auto tok = Tokenizer::FromTokenizerJsonFile(testing::FixturePath("llama3_style.tokenizer.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  // Byte tokens of the euro sign E2 82 AC, spelled in the byte alphabet: â, Ĥ, ¬.
  const int32_t e2 = *(*tok)->TokenToId("\xC3\xA2");
  const int32_t x82 = *(*tok)->TokenToId("\xC4\xA4");
  const int32_t xac = *(*tok)->TokenToId("\xC2\xAC");
  StreamingDetokenizer stream(**tok);
  EXPECT_EQ(stream.Push(e2), "");
  EXPECT_EQ(stream.Push(x82), "");
  EXPECT_EQ(stream.Push(xac), "\xE2\x82\xAC");
  EXPECT_EQ(stream.Push(e2), "");
  EXPECT_EQ(stream.Flush(), "\xEF\xBF\xBD");
}

TEST(FixtureTokenizerMeta, IllFormedInputIsEncodedAsReplacementCharacters) {
  auto tok = Tokenizer::FromTokenizerJsonFile(testing::FixturePath("llama3_style.tokenizer.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::string bad = "ok \xE2\x82 then \xFF end";
  EXPECT_EQ((*tok)->Encode(bad), (*tok)->Encode(LossyUtf8(bad)));
}

TEST(FixtureTokenizerSpeed, Encodes10KBOfEnglish) {
  auto tok = Tokenizer::FromTokenizerJsonFile(testing::FixturePath("llama3_style.tokenizer.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::string text = testing::ReadFixture("english_10k.txt");
  (*tok)->Encode(text);  // warm the word cache, as a serving process would be
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = (*tok)->Encode(text);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("tokenizer speed: llama3_style encode bytes={} tokens={} ms={:.3f}", text.size(),
               ids.size(), ms);
  EXPECT_EQ((*tok)->Decode(ids), text);
}

}  // namespace
}  // namespace shoal::worker
