// A broken or hostile tokenizer.json is an error that names the file and the JSON path,
// never a crash.
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/tokenizer/fixture_io.h"
#include "worker/tokenizer/tokenizer.h"

namespace shoal::worker {
namespace {

using ::testing::HasSubstr;

nlohmann::json Base() { return testing::ReadJsonFixture("llama3_style.tokenizer.json"); }

std::string ErrorFor(const nlohmann::json& doc) {
  auto tok = Tokenizer::FromTokenizerJson(doc.dump(), "tokenizer.json");
  EXPECT_FALSE(tok.ok());
  return tok.ok() ? "" : std::string(tok.status().message());
}

TEST(TokenizerJsonErrors, BadMergeNamesItsIndex) {
  auto doc = Base();
  doc["model"]["merges"][12] = 42;
  EXPECT_EQ(ErrorFor(doc), "tokenizer.json: model.merges[12]: expected 'a b' or [a, b]");
  doc = Base();
  doc["model"]["merges"][3] = "a b c";
  EXPECT_THAT(ErrorFor(doc), HasSubstr("model.merges[3]: expected 'a b' or [a, b]"));
}

TEST(TokenizerJsonErrors, MergeOutsideVocabularyNamesIt) {
  auto doc = Base();
  doc["model"]["merges"][5] = nlohmann::json::array({"zzzq", "qqq"});
  EXPECT_THAT(ErrorFor(doc), HasSubstr("merges[5]: 'zzzq' is not in the vocabulary"));
}

TEST(TokenizerJsonErrors, UnsupportedPartsAreNamed) {
  auto doc = Base();
  doc["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_THAT(ErrorFor(doc), HasSubstr("normalizer: normalizer type 'Lowercase' is not supported"));
  doc = Base();
  doc["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Whitespace"}};
  EXPECT_THAT(ErrorFor(doc), HasSubstr("pre_tokenizer.pretokenizers[0]: pre_tokenizer type "
                                       "'Whitespace' is not supported"));
  doc = Base();
  doc["model"]["type"] = "Unigram";
  EXPECT_THAT(ErrorFor(doc), HasSubstr("model.type: model type 'Unigram' is not supported"));
  doc = Base();
  doc["decoder"] = {{"type", "Metaspace"}};
  EXPECT_THAT(ErrorFor(doc), HasSubstr("decoder: decoder type 'Metaspace' is not supported"));
}

TEST(TokenizerJsonErrors, WrongTypesAreNamed) {
  auto doc = Base();
  doc["model"]["vocab"]["hello"] = "seven";
  EXPECT_THAT(ErrorFor(doc), HasSubstr("model.vocab['hello']: expected a token id"));
  doc = Base();
  doc["added_tokens"][1]["special"] = "yes";
  EXPECT_THAT(ErrorFor(doc), HasSubstr("added_tokens[1].special: expected true or false"));
  doc = Base();
  doc["added_tokens"][0].erase("id");
  EXPECT_THAT(ErrorFor(doc), HasSubstr("added_tokens[0].id: missing"));
  doc = Base();
  doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  EXPECT_THAT(ErrorFor(doc), HasSubstr("pre_tokenizer.pretokenizers[0].pattern: regex"));
  doc = Base();
  doc.erase("model");
  EXPECT_THAT(ErrorFor(doc), HasSubstr("tokenizer.json: model: missing"));
  EXPECT_THAT(ErrorFor(nlohmann::json::array()), HasSubstr("expected a JSON object"));
}

TEST(TokenizerJsonErrors, EveryTruncationIsAnErrorNotACrash) {
  const std::string text = testing::ReadFixture("gpt2_style.tokenizer.json");
  for (size_t len = 0; len < text.size(); len += 97) {
    auto tok = Tokenizer::FromTokenizerJson(std::string_view(text).substr(0, len), "tokenizer.json");
    ASSERT_FALSE(tok.ok()) << "length " << len;
    EXPECT_THAT(std::string(tok.status().message()), HasSubstr("tokenizer.json: $: not valid JSON"));
  }
}

TEST(TokenizerJsonErrors, MissingFileNamesThePath) {
  auto tok = Tokenizer::FromTokenizerJsonFile("/nonexistent/dir/tokenizer.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("/nonexistent/dir/tokenizer.json"));
}

}  // namespace
}  // namespace shoal::worker
