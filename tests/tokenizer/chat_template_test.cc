// Chat prompts rendered by our C++ against transformers' apply_chat_template output
// (fixtures/chat_templates.json, made by gen_fixtures.py from the real templates).
#include "worker/tokenizer/chat_template.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/tokenizer/fixture_io.h"

namespace shoal::worker {
namespace {

using ::testing::HasSubstr;

ChatTemplate::Family FamilyNamed(const std::string& name) {
  if (name == "SmolLM2") return ChatTemplate::Family::kSmolLM2;
  if (name == "Llama3") return ChatTemplate::Family::kLlama3;
  if (name == "Qwen2") return ChatTemplate::Family::kQwen2;
  return ChatTemplate::Family::kChatML;
}

TEST(ChatTemplate, RecognisesEachFamilyFromItsSource) {
  const auto fixture = testing::ReadJsonFixture("chat_templates.json");
  for (const auto& [name, source] : fixture["templates"].items()) {
    auto t = ChatTemplate::FromSource(source.get<std::string>());
    ASSERT_TRUE(t.ok()) << name << ": " << t.status();
    EXPECT_EQ(t->family(), FamilyNamed(name)) << name;
  }
}

TEST(ChatTemplate, RendersExactlyLikeTransformers) {
  const auto fixture = testing::ReadJsonFixture("chat_templates.json");
  int checked = 0;
  for (const auto& c : fixture["cases"]) {
    const std::string family = c["family"].get<std::string>();
    auto t = ChatTemplate::FromSource(fixture["templates"][family].get<std::string>());
    ASSERT_TRUE(t.ok()) << t.status();
    std::vector<ChatTurn> turns;
    for (const auto& m : c["messages"]) {
      turns.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    auto rendered = t->Render(turns, c["add_generation_prompt"].get<bool>());
    ASSERT_TRUE(rendered.ok()) << rendered.status();
    EXPECT_EQ(*rendered, c["expected"].get<std::string>())
        << family << " " << c["messages"].dump();
    ++checked;
  }
  EXPECT_EQ(checked, 40);
}

TEST(ChatTemplate, RejectsUnknownRoleNamingTheIndex) {
  const ChatTemplate t = ChatTemplate::ForFamily(ChatTemplate::Family::kChatML);
  std::vector<ChatTurn> turns = {{"user", "hi"}, {"tool", "x"}};
  auto r = t.Render(turns);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("messages[1].role: 'tool'"));
  EXPECT_FALSE(t.Render({}).ok());
}

TEST(ChatTemplate, UnknownTemplateNamesTheMarkersFound) {
  auto t = ChatTemplate::FromSource("{% for message in messages %}[INST] {{ message['content'] }}");
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("[INST]"));
}

}  // namespace
}  // namespace shoal::worker
