// The wire-to-engine translation: every invalid field is rejected with its proto name,
// valid requests map onto engine types with proto3's zero values meaning "off".
#include "worker/server/request_translation.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <limits>

namespace shoal::worker {
namespace {

using ::testing::HasSubstr;

v1::GenerateRequest PromptRequest(std::string prompt = "Hello") {
  v1::GenerateRequest r;
  r.set_prompt(std::move(prompt));
  return r;
}

std::string ErrorOf(const v1::GenerateRequest& r) {
  auto t = TranslateGenerateRequest(r);
  EXPECT_FALSE(t.ok());
  if (t.ok()) return "";
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << t.status().ToString();
  const absl::string_view m = t.status().message();
  return std::string(m.data(), m.size());
}

TEST(RequestTranslation, MapsPromptAndProto3DefaultsToEngineDefaults) {
  auto t = TranslateGenerateRequest(PromptRequest("The capital of France is"));
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->input.kind, PromptInput::Kind::kText);
  EXPECT_EQ(t->input.text, "The capital of France is");
  const SamplingOptions& s = t->engine_request.sampling;
  EXPECT_EQ(s.temperature, 0.0f);
  EXPECT_EQ(s.top_p, 1.0f);  // 0 on the wire = off
  EXPECT_EQ(s.repetition_penalty, 1.0f);  // 0 on the wire = unset
  EXPECT_FALSE(s.seed.has_value());
  EXPECT_EQ(t->engine_request.stop.max_tokens, 0);
  EXPECT_TRUE(t->engine_request.request_id.empty());
}

TEST(RequestTranslation, CarriesEverySamplingAndStopField) {
  v1::GenerateRequest r = PromptRequest();
  r.set_model("smollm2");
  r.set_request_id("abc");
  r.set_max_tokens(7);
  auto* p = r.mutable_sampling();
  p->set_temperature(0.7f);
  p->set_top_k(40);
  p->set_top_p(0.9f);
  p->set_min_p(0.05f);
  p->set_repetition_penalty(1.1f);
  p->set_presence_penalty(0.5f);
  p->set_frequency_penalty(-0.5f);
  p->set_seed(42);
  r.mutable_stop()->add_stop("\n\n");
  r.mutable_stop()->add_stop_token_ids(2);
  r.mutable_stop()->set_ignore_eos(true);
  r.set_include_logprobs(true);
  r.set_top_logprobs(3);
  auto t = TranslateGenerateRequest(r);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  const GenerationRequest& e = t->engine_request;
  EXPECT_EQ(t->model, "smollm2");
  EXPECT_EQ(e.request_id, "abc");
  EXPECT_EQ(e.sampling.temperature, 0.7f);
  EXPECT_EQ(e.sampling.top_k, 40);
  EXPECT_EQ(e.sampling.top_p, 0.9f);
  EXPECT_EQ(e.sampling.min_p, 0.05f);
  EXPECT_EQ(e.sampling.repetition_penalty, 1.1f);
  EXPECT_EQ(e.sampling.presence_penalty, 0.5f);
  EXPECT_EQ(e.sampling.frequency_penalty, -0.5f);
  EXPECT_EQ(e.sampling.seed, 42u);
  EXPECT_EQ(e.stop.stop_strings, std::vector<std::string>{"\n\n"});
  EXPECT_EQ(e.stop.stop_token_ids, std::vector<int32_t>{2});
  EXPECT_TRUE(e.stop.ignore_eos);
  EXPECT_EQ(e.stop.max_tokens, 7);
  EXPECT_TRUE(e.include_logprobs);
  EXPECT_EQ(e.top_logprobs, 3);
}

TEST(RequestTranslation, MapsChatAndTokenIds) {
  v1::GenerateRequest chat;
  auto* m = chat.mutable_chat()->add_messages();
  m->set_role("system");
  m->set_content("Be brief.");
  m = chat.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("Hi");
  auto t = TranslateGenerateRequest(chat);
  ASSERT_TRUE(t.ok());
  ASSERT_EQ(t->input.kind, PromptInput::Kind::kChat);
  ASSERT_EQ(t->input.chat.size(), 2u);
  EXPECT_EQ(t->input.chat[1].role, "user");
  EXPECT_EQ(t->input.chat[1].content, "Hi");

  v1::GenerateRequest ids;
  ids.mutable_token_ids()->add_ids(1);
  ids.mutable_token_ids()->add_ids(500);
  t = TranslateGenerateRequest(ids);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->input.kind, PromptInput::Kind::kTokenIds);
  EXPECT_EQ(t->input.token_ids, (std::vector<int32_t>{1, 500}));
}

TEST(RequestTranslation, RejectsMissingOrEmptyInput) {
  EXPECT_THAT(ErrorOf(v1::GenerateRequest()), HasSubstr("input must be set"));
  EXPECT_THAT(ErrorOf(PromptRequest("")), HasSubstr("prompt must not be empty"));
  v1::GenerateRequest chat;
  chat.mutable_chat();
  EXPECT_THAT(ErrorOf(chat), HasSubstr("chat.messages must not be empty"));
  v1::GenerateRequest ids;
  ids.mutable_token_ids();
  EXPECT_THAT(ErrorOf(ids), HasSubstr("token_ids.ids must not be empty"));
  ids.mutable_token_ids()->add_ids(3);
  ids.mutable_token_ids()->add_ids(-1);
  EXPECT_THAT(ErrorOf(ids), HasSubstr("token_ids.ids[1]"));
}

TEST(RequestTranslation, NamesTheChatMessageWithAnUnknownRole) {
  v1::GenerateRequest r;
  for (const char* role : {"system", "user", "wizard"}) {
    auto* m = r.mutable_chat()->add_messages();
    m->set_role(role);
    m->set_content("x");
  }
  EXPECT_THAT(ErrorOf(r), HasSubstr("chat.messages[2].role"));
  EXPECT_THAT(ErrorOf(r), HasSubstr("'wizard'"));
}

TEST(RequestTranslation, RejectsInvalidUtf8WhereverTextComesIn) {
  const std::string bad = std::string("ok \xC3\x28 no");  // 0xC3 must be followed by a continuation byte
  EXPECT_THAT(ErrorOf(PromptRequest(bad)), HasSubstr("prompt is not valid UTF-8"));
  EXPECT_THAT(ErrorOf(PromptRequest(bad)), HasSubstr("offset 3"));

  v1::GenerateRequest chat;
  auto* m = chat.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("fine");
  m = chat.mutable_chat()->add_messages();
  m->set_role("assistant");
  m->set_content(bad);
  EXPECT_THAT(ErrorOf(chat), HasSubstr("chat.messages[1].content is not valid UTF-8"));

  v1::GenerateRequest stop = PromptRequest();
  stop.mutable_stop()->add_stop("end");
  stop.mutable_stop()->add_stop(bad);
  EXPECT_THAT(ErrorOf(stop), HasSubstr("stop.stop[1] is not valid UTF-8"));
  v1::GenerateRequest empty_stop = PromptRequest();
  empty_stop.mutable_stop()->add_stop("");
  EXPECT_THAT(ErrorOf(empty_stop), HasSubstr("stop.stop[0] must not be empty"));
}

TEST(RequestTranslation, NamesEveryOutOfRangeSamplingField) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  struct Case {
    const char* field;
    std::function<void(v1::SamplingParams*)> set;
  };
  const std::vector<Case> cases = {
      {"sampling.temperature", [](auto* p) { p->set_temperature(-0.1f); }},
      {"sampling.temperature", [&](auto* p) { p->set_temperature(nan); }},
      {"sampling.top_k", [](auto* p) { p->set_top_k(-1); }},
      {"sampling.top_p", [](auto* p) { p->set_top_p(1.5f); }},
      {"sampling.top_p", [](auto* p) { p->set_top_p(-0.5f); }},
      {"sampling.top_p", [&](auto* p) { p->set_top_p(nan); }},
      {"sampling.min_p", [](auto* p) { p->set_min_p(2.0f); }},
      {"sampling.repetition_penalty", [](auto* p) { p->set_repetition_penalty(-1.0f); }},
      {"sampling.presence_penalty", [](auto* p) { p->set_presence_penalty(2.5f); }},
      {"sampling.frequency_penalty", [](auto* p) { p->set_frequency_penalty(-3.0f); }},
  };
  for (const Case& c : cases) {
    v1::GenerateRequest r = PromptRequest();
    c.set(r.mutable_sampling());
    EXPECT_THAT(ErrorOf(r), HasSubstr(c.field)) << c.field;
  }
}

TEST(RequestTranslation, NamesOtherOutOfRangeFields) {
  v1::GenerateRequest r = PromptRequest();
  r.set_max_tokens(-1);
  EXPECT_THAT(ErrorOf(r), HasSubstr("max_tokens must be >= 0"));
  r = PromptRequest();
  r.mutable_stop()->add_stop_token_ids(-5);
  EXPECT_THAT(ErrorOf(r), HasSubstr("stop.stop_token_ids[0]"));
  r = PromptRequest();
  r.set_include_logprobs(true);
  r.set_top_logprobs(21);
  EXPECT_THAT(ErrorOf(r), HasSubstr("top_logprobs"));
  r = PromptRequest();
  r.set_request_id(std::string(300, 'x'));
  EXPECT_THAT(ErrorOf(r), HasSubstr("request_id"));
}

TEST(FindInvalidUtf8, AcceptsWellFormedAndPointsAtTheFirstBadByte) {
  EXPECT_EQ(FindInvalidUtf8(""), std::nullopt);
  EXPECT_EQ(FindInvalidUtf8("plain ascii"), std::nullopt);
  EXPECT_EQ(FindInvalidUtf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x90\x9F"), std::nullopt);  // é € 🐟
  EXPECT_EQ(FindInvalidUtf8("ab\x80"), 2u);                 // stray continuation byte
  EXPECT_EQ(FindInvalidUtf8("\xC0\xAF"), 0u);               // overlong '/'
  EXPECT_EQ(FindInvalidUtf8("x\xE0\x80\xAF"), 1u);          // overlong 3-byte
  EXPECT_EQ(FindInvalidUtf8("\xED\xA0\x80"), 0u);           // surrogate U+D800
  EXPECT_EQ(FindInvalidUtf8("\xF4\x90\x80\x80"), 0u);       // past U+10FFFF
  EXPECT_EQ(FindInvalidUtf8("ok\xE2\x82"), 2u);             // truncated at the end
}

TEST(ResponseTranslation, OnlyTheLastPieceCarriesFinishAndUsage) {
  GenerationOutput piece;
  piece.request_id = "r1";
  piece.token_ids = {10, 11};
  piece.text = "Hi";
  v1::GenerateResponse p = ToProtoResponse(piece);
  EXPECT_EQ(p.request_id(), "r1");
  EXPECT_EQ(p.text(), "Hi");
  EXPECT_EQ(p.token_ids_size(), 2);
  EXPECT_EQ(p.finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
  EXPECT_FALSE(p.has_usage());

  GenerationOutput last;
  last.finish = FinishReason::kLength;
  last.prompt_tokens = 5;
  last.completion_tokens = 8;
  last.cached_prompt_tokens = 4;
  last.time_to_first_token_seconds = 0.25;
  last.logprobs.push_back(TokenLogprob{7, -0.5f, {{7, -0.5f}, {9, -1.5f}}});
  v1::GenerateResponse l = ToProtoResponse(last);
  EXPECT_EQ(l.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(l.usage().prompt_tokens(), 5);
  EXPECT_EQ(l.usage().completion_tokens(), 8);
  EXPECT_EQ(l.usage().cached_prompt_tokens(), 4);
  EXPECT_DOUBLE_EQ(l.usage().time_to_first_token_seconds(), 0.25);
  ASSERT_EQ(l.logprobs_size(), 1);
  EXPECT_EQ(l.logprobs(0).top_size(), 2);
  EXPECT_EQ(l.logprobs(0).top(1).token_id(), 9);
}

TEST(ResponseTranslation, StatusCodesKeepTheirNumbersAndMessages) {
  grpc::Status s = ToGrpcStatus(absl::ResourceExhaustedError("queue full"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(s.error_message(), "queue full");
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_STREQ(StatusCodeName(grpc::StatusCode::INVALID_ARGUMENT), "INVALID_ARGUMENT");
}

}  // namespace
}  // namespace shoal::worker
