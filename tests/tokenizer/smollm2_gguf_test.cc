// The tokenizer of the real SmolLM2 GGUF (loaded through LoadModel) against HF tokenizers
// run on the same vocabulary and merges with SmolLM2's own pre-tokenizer
// (fixtures/smollm2_gguf.cases.json). Labelled `oracle`: needs scripts/setup.sh's model.
#include <chrono>
#include <filesystem>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include "tests/tokenizer/fixture_io.h"
#include "worker/model/loaded_model.h"
#include "worker/tokenizer/chat_template.h"
#include "worker/tokenizer/tokenizer.h"

namespace shoal::worker {
namespace {

using testing::Escaped;
using testing::Ids;

class SmolLM2Gguf : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = testing::ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (!std::filesystem::exists(path)) {
      error_ = "missing " + path + " - run scripts/setup.sh to fetch the default model";
      return;
    }
    auto model = LoadModel(path);
    if (!model.ok()) {
      error_ = std::string(model.status().message());
      return;
    }
    chat_template_ = model->chat_template;
    auto tok = Tokenizer::ForModel(*model);
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
  void SetUp() override { ASSERT_NE(tokenizer_, nullptr) << error_; }

  static inline Tokenizer* tokenizer_ = nullptr;
  static inline std::string error_;
  static inline std::string chat_template_;
};

TEST_F(SmolLM2Gguf, EncodesLikeHuggingFace) {
  const auto cases = testing::ReadJsonFixture("smollm2_gguf.cases.json");
  for (const auto& c : cases["encode"]) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_EQ(tokenizer_->Encode(text), Ids(c["ids"])) << "text: " << Escaped(text);
    const auto& plain = c.contains("ids_special_as_text") ? c["ids_special_as_text"] : c["ids"];
    EXPECT_EQ(tokenizer_->Encode(text, /*parse_special=*/false), Ids(plain))
        << "special tokens as text: " << Escaped(text);
  }
}

TEST_F(SmolLM2Gguf, DecodesLikeHuggingFace) {
  const auto cases = testing::ReadJsonFixture("smollm2_gguf.cases.json");
  for (const auto& c : cases["decode"]) {
    const std::vector<int32_t> ids = Ids(c["ids"]);
    EXPECT_EQ(tokenizer_->Decode(ids), c["text"].get<std::string>()) << c["ids"].dump();
    EXPECT_EQ(tokenizer_->Decode(ids, true), c["text_skip_special"].get<std::string>())
        << c["ids"].dump();
  }
}

TEST_F(SmolLM2Gguf, SpecialTokensAndTemplate) {
  EXPECT_EQ(tokenizer_->vocab_size(), 49152);
  EXPECT_EQ(tokenizer_->TokenToId("<|im_start|>"), 1);
  EXPECT_TRUE(tokenizer_->IsSpecial(2));
  EXPECT_FALSE(tokenizer_->add_bos());
  ASSERT_FALSE(tokenizer_->eos_ids().empty());
  EXPECT_EQ(tokenizer_->eos_ids().front(), 2);  // <|im_end|>
  auto t = ChatTemplate::FromSource(chat_template_);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->family(), ChatTemplate::Family::kSmolLM2);
}

TEST_F(SmolLM2Gguf, Encodes10KBOfEnglishQuickly) {
  const std::string text = testing::ReadFixture("english_10k.txt");
  auto time_once = [&] {
    const auto start = std::chrono::steady_clock::now();
    const std::vector<int32_t> ids = tokenizer_->Encode(text);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    return std::make_pair(ids.size(), ms);
  };
  const auto [n_cold, cold_ms] = time_once();
  const auto [n_warm, warm_ms] = time_once();
  spdlog::info("tokenizer speed: smollm2 encode bytes={} tokens={} cold_ms={:.3f} warm_ms={:.3f}",
               text.size(), n_cold, cold_ms, warm_ms);
  EXPECT_EQ(n_cold, n_warm);
}

}  // namespace
}  // namespace shoal::worker
