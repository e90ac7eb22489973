// Discovery parsing, API keys, and OpenAI JSON <-> shoal.v1 translation.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "router/api_keys.h"
#include "router/discovery.h"
#include "router/openai_translation.h"

namespace shoal::router {
namespace {

using nlohmann::json;

TEST(ParseHostPort, AcceptsNamesIpv4AndBracketedIpv6) {
  auto a = ParseHostPort("leader-0.grp:50051");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->host, "leader-0.grp");
  EXPECT_EQ(a->port, 50051);
  auto b = ParseHostPort("[::1]:7");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->host, "::1");
  EXPECT_EQ(b->ToString(), "[::1]:7");
  EXPECT_EQ(ParseHostPort("10.0.0.1:80")->ToString(), "10.0.0.1:80");
}

TEST(ParseHostPort, RejectsWithPreciseMessages) {
  EXPECT_NE(ParseHostPort("host").status().message().find("has no port"), absl::string_view::npos);
  EXPECT_NE(ParseHostPort("host:0").status().message().find("1..65535"), absl::string_view::npos);
  EXPECT_NE(ParseHostPort("host:99999").status().message().find("1..65535"), absl::string_view::npos);
  EXPECT_NE(ParseHostPort("host:12a").status().message().find("'12a'"), absl::string_view::npos);
  EXPECT_NE(ParseHostPort(":80").status().message().find("empty host"), absl::string_view::npos);
  EXPECT_NE(ParseHostPort("::1:80").status().message().find("[address]:port"), absl::string_view::npos);
  EXPECT_FALSE(ParseHostPort("[::1]80").ok());
}

TEST(ParseUpstreamList, SkipsCommentsAndBlanksDeduplicatesAndNamesTheBadLine) {
  auto list = ParseUpstreamList("# groups\n a:1 \n\nb:2 # second\na:1\n", "up.txt");
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].ToString(), "a:1");
  EXPECT_EQ((*list)[1].ToString(), "b:2");
  auto bad = ParseUpstreamList("a:1\nb\n", "up.txt");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("up.txt:2:"), absl::string_view::npos) << bad.status();
}

TEST(ReadUpstreamFile, MissingFileIsNotFound) {
  EXPECT_EQ(ReadUpstreamFile("/nonexistent/upstreams.txt").status().code(), absl::StatusCode::kNotFound);
}

TEST(ResolveDns, LocalhostResolvesToLoopbackWithPort) {
  auto resolved = ResolveDns(HostPort{"localhost", 1234});
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  ASSERT_FALSE(resolved->empty());
  bool loopback = false;
  for (const auto& e : *resolved) {
    EXPECT_EQ(e.port, 1234);
    loopback |= e.host == "127.0.0.1" || e.host == "::1";
  }
  EXPECT_TRUE(loopback);
  EXPECT_FALSE(ResolveDns(HostPort{"no-such-host.invalid", 1}).ok());
}

TEST(ApiKeys, ChecksBearerTokens) {
  auto keys = ApiKeys::Parse("# keys\nsk-one\n  sk-two  \n", "keys.txt");
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_TRUE(keys->enabled());
  EXPECT_TRUE(keys->Check("Bearer sk-one").ok());
  EXPECT_TRUE(keys->Check("bearer sk-two").ok());
  EXPECT_EQ(keys->Check("").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(keys->Check("").message().find("missing API key"), absl::string_view::npos);
  EXPECT_NE(keys->Check("Basic abc").message().find("malformed"), absl::string_view::npos);
  EXPECT_EQ(keys->Check("Bearer sk-three").message(), "invalid API key");
  EXPECT_TRUE(ApiKeys().Check("").ok());  // authentication off
  EXPECT_FALSE(ApiKeys::Parse("# nothing\n", "k").ok());
  EXPECT_NE(ApiKeys::Parse("a b\n", "k").status().message().find("k:1:"), absl::string_view::npos);
}

TEST(FirstInvalidUtf8Byte, FindsTheOffendingByte) {
  EXPECT_EQ(FirstInvalidUtf8Byte("plain ascii"), -1);
  EXPECT_EQ(FirstInvalidUtf8Byte("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80"), -1);
  EXPECT_EQ(FirstInvalidUtf8Byte("ab\xff"), 2);
  EXPECT_EQ(FirstInvalidUtf8Byte("ab\xc3"), 2);              // truncated
  EXPECT_EQ(FirstInvalidUtf8Byte("\xc0\xaf"), 0);            // overlong
  EXPECT_EQ(FirstInvalidUtf8Byte("x\xed\xa0\x80"), 1);       // surrogate
  EXPECT_EQ(FirstInvalidUtf8Byte("\xf4\x90\x80\x80"), 0);    // > U+10FFFF
}

TEST(ParseOpenAiRequest, CompletionMapsEveryField) {
  auto r = ParseOpenAiRequest(OpenAiEndpoint::kCompletions, R"({
    "model": "smollm2", "prompt": "Once upon", "max_tokens": 12, "temperature": 0.5, "top_p": 0.9,
    "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1, "presence_penalty": 0.5,
    "frequency_penalty": -0.5, "seed": 7, "stop": ["\n", "END"], "stream": true,
    "stream_options": {"include_usage": true}, "ignore_eos": true, "n": 1, "user": "x"})");
  ASSERT_TRUE(r.ok()) << r.status();
  const auto& g = r->request;
  EXPECT_EQ(g.model(), "smollm2");
  EXPECT_EQ(g.prompt(), "Once upon");
  EXPECT_EQ(g.max_tokens(), 12);
  EXPECT_FLOAT_EQ(g.sampling().temperature(), 0.5f);
  EXPECT_FLOAT_EQ(g.sampling().top_p(), 0.9f);
  EXPECT_EQ(g.sampling().top_k(), 40);
  EXPECT_FLOAT_EQ(g.sampling().min_p(), 0.05f);
  EXPECT_FLOAT_EQ(g.sampling().repetition_penalty(), 1.1f);
  EXPECT_FLOAT_EQ(g.sampling().presence_penalty(), 0.5f);
  EXPECT_FLOAT_EQ(g.sampling().frequency_penalty(), -0.5f);
  EXPECT_EQ(g.sampling().seed(), 7u);
  ASSERT_EQ(g.stop().stop_size(), 2);
  EXPECT_EQ(g.stop().stop(1), "END");
  EXPECT_TRUE(g.stop().ignore_eos());
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage_in_stream);
}

TEST(ParseOpenAiRequest, CompletionDefaultsAndTokenIdPrompt) {
  auto r = ParseOpenAiRequest(OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": [1, 2, 3]})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request.max_tokens(), 16);  // OpenAI's default for completions
  EXPECT_FLOAT_EQ(r->request.sampling().temperature(), 1.0f);
  EXPECT_EQ(r->request.token_ids().ids_size(), 3);
  EXPECT_FALSE(r->stream);
}

TEST(ParseOpenAiRequest, ChatMessagesWithTextParts) {
  auto r = ParseOpenAiRequest(OpenAiEndpoint::kChatCompletions, R"({"model": "m",
    "messages": [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}],
    "max_completion_tokens": 5})");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->request.chat().messages_size(), 2);
  EXPECT_EQ(r->request.chat().messages(1).content(), "Hi there");
  EXPECT_EQ(r->request.max_tokens(), 5);
}

struct BadRequestCase {
  OpenAiEndpoint endpoint;
  std::string body;
  std::string expected_prefix;
};

TEST(ParseOpenAiRequest, RejectsMalformedInputNamingTheField) {
  const std::vector<BadRequestCase> cases = {
      {OpenAiEndpoint::kCompletions, "{\"model\": \"m\", \"prompt\": \"a\"", "body: malformed JSON at byte"},
      {OpenAiEndpoint::kCompletions, "[1]", "body: must be a JSON object"},
      {OpenAiEndpoint::kCompletions, "{\"model\": \"m\", \"prompt\": \"\xff\"}", "body: invalid UTF-8 at byte offset 26"},
      {OpenAiEndpoint::kCompletions, R"({"prompt": "a"})", "model: is required"},
      {OpenAiEndpoint::kCompletions, R"({"model": 3, "prompt": "a"})", "model: must be a string"},
      {OpenAiEndpoint::kCompletions, R"({"model": "m"})", "prompt: is required"},
      {OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": ["a", "b"]})", "prompt: batches"},
      {OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": "a", "temperature": 3})", "temperature: must be in [0, 2]"},
      {OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": "a", "top_p": 0})", "top_p: must be in (0, 1]"},
      {OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": "a", "max_tokens": 0})", "max_tokens: must be in"},
      {OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": "a", "max_tokens": "5"})", "max_tokens: must be an integer"},
      {OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": "a", "stop": 5})", "stop: must be a string"},
      {OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": "a", "n": 2})", "n: only n = 1"},
      {OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": "a", "stream": "yes"})", "stream: must be a boolean"},
      {OpenAiEndpoint::kChatCompletions, R"({"model": "m"})", "messages: is required"},
      {OpenAiEndpoint::kChatCompletions, R"({"model": "m", "messages": []})", "messages: must be a non-empty array"},
      {OpenAiEndpoint::kChatCompletions, R"({"model": "m", "messages": [{"content": "x"}]})", "messages[0].role: is required"},
      {OpenAiEndpoint::kChatCompletions, R"({"model": "m", "messages": [{"role": "robot", "content": "x"}]})", "messages[0].role: must be"},
      {OpenAiEndpoint::kChatCompletions, R"({"model": "m", "messages": [{"role": "user"}]})", "messages[0].content: is required"},
  };
  for (const auto& c : cases) {
    auto r = ParseOpenAiRequest(c.endpoint, c.body);
    ASSERT_FALSE(r.ok()) << c.body;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.body;
    EXPECT_EQ(std::string(r.status().message()).rfind(c.expected_prefix, 0), 0u)
        << "body: " << c.body << "\nmessage: " << r.status().message();
  }
}

TEST(OpenAiResponses, CompletionAndChatShapes) {
  CompletionResult result;
  result.id = "cmpl-1";
  result.model = "m";
  result.created = 1700000000;
  result.text = "hello";
  result.finish_reason = v1::FINISH_REASON_LENGTH;
  result.has_usage = true;
  result.usage.set_prompt_tokens(3);
  result.usage.set_completion_tokens(2);
  json c = json::parse(CompletionResponseJson(OpenAiEndpoint::kCompletions, result));
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["choices"][0]["text"], "hello");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(c["usage"]["total_tokens"], 5);
  json chat = json::parse(CompletionResponseJson(OpenAiEndpoint::kChatCompletions, result));
  EXPECT_EQ(chat["object"], "chat.completion");
  EXPECT_EQ(chat["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(chat["choices"][0]["message"]["content"], "hello");

  result.finish_reason = v1::FINISH_REASON_UNSPECIFIED;
  json chunk = json::parse(CompletionChunkJson(OpenAiEndpoint::kChatCompletions, result, true));
  EXPECT_EQ(chunk["object"], "chat.completion.chunk");
  EXPECT_EQ(chunk["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(chunk["choices"][0]["finish_reason"].is_null());
  json later = json::parse(CompletionChunkJson(OpenAiEndpoint::kChatCompletions, result, false));
  EXPECT_FALSE(later["choices"][0]["delta"].contains("role"));
  json usage = json::parse(UsageChunkJson(OpenAiEndpoint::kCompletions, result));
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["prompt_tokens"], 3);
}

TEST(ParseOpenAiRequest, LogprobsAndReasoningFlags) {
  auto c = ParseOpenAiRequest(OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": "a", "logprobs": 3})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->request.include_logprobs());
  EXPECT_EQ(c->request.top_logprobs(), 3);
  EXPECT_FALSE(c->request.separate_reasoning());  // a raw completion keeps the model's text as is
  auto c0 = ParseOpenAiRequest(OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": "a", "logprobs": 0})");
  ASSERT_TRUE(c0.ok()) << c0.status();
  EXPECT_TRUE(c0->request.include_logprobs());
  EXPECT_EQ(c0->request.top_logprobs(), 0);
  auto off = ParseOpenAiRequest(OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": "a", "logprobs": null})");
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_FALSE(off->request.include_logprobs());

  auto chat = ParseOpenAiRequest(OpenAiEndpoint::kChatCompletions,
                                 R"({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                     "logprobs": true, "top_logprobs": 2})");
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_TRUE(chat->request.include_logprobs());
  EXPECT_EQ(chat->request.top_logprobs(), 2);
  EXPECT_TRUE(chat->request.separate_reasoning());
  auto plain = ParseOpenAiRequest(OpenAiEndpoint::kChatCompletions,
                                  R"({"model": "m", "messages": [{"role": "user", "content": "x"}]})");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->request.include_logprobs());
  EXPECT_TRUE(plain->request.separate_reasoning());

  const std::vector<BadRequestCase> cases = {
      {OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": "a", "logprobs": true})", "logprobs: must be an integer"},
      {OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": "a", "logprobs": 21})", "logprobs: must be in [0, 20]"},
      {OpenAiEndpoint::kChatCompletions, R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": 2})",
       "logprobs: must be a boolean"},
      {OpenAiEndpoint::kChatCompletions,
       R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})",
       "top_logprobs: needs \"logprobs\": true"},
      {OpenAiEndpoint::kChatCompletions,
       R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": -1})",
       "top_logprobs: must be in [0, 20]"},
  };
  for (const auto& bad : cases) {
    auto r = ParseOpenAiRequest(bad.endpoint, bad.body);
    ASSERT_FALSE(r.ok()) << bad.body;
    EXPECT_EQ(std::string(r.status().message()).rfind(bad.expected_prefix, 0), 0u)
        << "body: " << bad.body << "\nmessage: " << r.status().message();
  }
}

TEST(ParseOpenAiRequest, MoreBadInputNamesTheProblem) {
  const std::vector<BadRequestCase> cases = {
      {OpenAiEndpoint::kCompletions, "", "body: malformed JSON at byte"},
      {OpenAiEndpoint::kCompletions, "null", "body: must be a JSON object"},
      // Found by tests/fuzz/openai_http_fuzz.cc: an out-of-range number used to escape as an exception.
      {OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": "a", "temperature": 1e400})",
       "body: malformed JSON: [json.exception.out_of_range.406] number overflow"},
      {OpenAiEndpoint::kCompletions, "{\"model\": \"m\", \"prompt\": \"a\"} trailing", "body: malformed JSON"},
      {OpenAiEndpoint::kCompletions, "{\"model\": \"\xc3\x28\", \"prompt\": \"a\"}", "body: invalid UTF-8 at byte offset 11"},
      {OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": [1, -2]})", "prompt: an array of token ids"},
      {OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": 7})", "prompt: must be a string"},
      {OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": "a", "seed": 1.5})", "seed: must be an integer"},
      {OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": "a", "stop": ["a", "b", "c", "d", "e"]})",
       "stop: at most 4"},
      {OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": "a", "stream_options": 1})",
       "stream_options: must be an object"},
      {OpenAiEndpoint::kChatCompletions, R"({"model": "m", "messages": {"role": "user"}})",
       "messages: must be a non-empty array"},
      {OpenAiEndpoint::kChatCompletions, R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
       "messages[0].content[0]: only"},
      {OpenAiEndpoint::kChatCompletions, R"({"model": "m", "messages": [{"role": "user", "content": 5}]})",
       "messages[0].content: must be a string"},
  };
  for (const auto& c : cases) {
    auto r = ParseOpenAiRequest(c.endpoint, c.body);
    ASSERT_FALSE(r.ok()) << c.body;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.body;
    EXPECT_EQ(std::string(r.status().message()).rfind(c.expected_prefix, 0), 0u)
        << "body: " << c.body << "\nmessage: " << r.status().message();
  }
}

v1::GenerateResponse OneTokenResponse(int32_t id, const std::string& text, float logprob,
                                      std::vector<std::pair<int32_t, float>> top) {
  v1::GenerateResponse r;
  r.add_token_ids(id);
  r.set_text(text);
  auto* lp = r.add_logprobs();
  lp->set_token_id(id);
  lp->set_logprob(logprob);
  for (const auto& [tid, tlp] : top) {
    auto* t = lp->add_top();
    t->set_token_id(tid);
    t->set_logprob(tlp);
  }
  return r;
}

TEST(AppendLogprobs, ResolvesTokenTextFromTheStepTextOrTheId) {
  std::vector<TokenLogprobEntry> entries;
  AppendLogprobs(OneTokenResponse(7, "Hello", -0.5f, {{7, -0.5f}, {9, -2.0f}}), 0, entries);
  v1::GenerateResponse two;  // two tokens in one step: the text cannot be split between them
  two.add_token_ids(1);
  two.add_token_ids(2);
  two.set_text(" world!");
  for (int id : {1, 2}) {
    auto* lp = two.add_logprobs();
    lp->set_token_id(id);
    lp->set_logprob(-1.0f);
    auto* t = lp->add_top();
    t->set_token_id(id + 10);
    t->set_token("alt");
    t->set_logprob(-3.0f);
  }
  AppendLogprobs(two, 5, entries);
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries[0].token, "Hello");
  EXPECT_FLOAT_EQ(entries[0].logprob, -0.5f);
  EXPECT_EQ(entries[0].text_offset, 0);
  ASSERT_EQ(entries[0].top.size(), 2u);
  EXPECT_EQ(entries[0].top[0].first, "Hello");  // the sampled token among the alternatives
  EXPECT_EQ(entries[0].top[1].first, "token_id:9");
  EXPECT_FLOAT_EQ(entries[0].top[1].second, -2.0f);
  EXPECT_EQ(entries[1].token, "token_id:1");
  EXPECT_EQ(entries[1].text_offset, 5);
  EXPECT_EQ(entries[2].token, "token_id:2");
  EXPECT_EQ(entries[2].top[0].first, "alt");  // a group-given token text wins
}

TEST(OpenAiResponses, LogprobsInBothShapes) {
  CompletionResult result;
  result.id = "x";
  result.model = "m";
  result.include_logprobs = true;
  result.text = "Hi there";
  AppendLogprobs(OneTokenResponse(4, "Hi", -0.25f, {{4, -0.25f}, {5, -1.5f}}), 0, result.logprobs);
  AppendLogprobs(OneTokenResponse(6, " there", -0.75f, {{6, -0.75f}, {8, -2.5f}}), 2, result.logprobs);

  json c = json::parse(CompletionResponseJson(OpenAiEndpoint::kCompletions, result))["choices"][0]["logprobs"];
  EXPECT_EQ(c["tokens"], json({"Hi", " there"}));
  EXPECT_EQ(c["token_logprobs"], json({-0.25, -0.75}));
  EXPECT_EQ(c["text_offset"], json({0, 2}));
  ASSERT_EQ(c["top_logprobs"].size(), 2u);
  EXPECT_EQ(c["top_logprobs"][0], json({{"Hi", -0.25}, {"token_id:5", -1.5}}));

  json chat = json::parse(CompletionResponseJson(OpenAiEndpoint::kChatCompletions, result))["choices"][0]["logprobs"];
  ASSERT_EQ(chat["content"].size(), 2u);
  EXPECT_EQ(chat["content"][1]["token"], " there");
  EXPECT_EQ(chat["content"][1]["logprob"], -0.75);
  EXPECT_EQ(chat["content"][0]["bytes"], json({72, 105}));
  ASSERT_EQ(chat["content"][1]["top_logprobs"].size(), 2u);
  EXPECT_EQ(chat["content"][1]["top_logprobs"][1]["token"], "token_id:8");
  EXPECT_EQ(chat["content"][1]["top_logprobs"][1]["logprob"], -2.5);

  // A streamed chunk carries the logprobs of its own tokens only.
  CompletionResult delta = result;
  delta.logprobs.resize(1);
  json chunk = json::parse(CompletionChunkJson(OpenAiEndpoint::kChatCompletions, delta, false));
  EXPECT_EQ(chunk["choices"][0]["logprobs"]["content"].size(), 1u);

  result.include_logprobs = false;
  EXPECT_TRUE(json::parse(CompletionResponseJson(OpenAiEndpoint::kChatCompletions, result))["choices"][0]["logprobs"].is_null());
}

TEST(OpenAiResponses, ReasoningContentInMessageAndDelta) {
  CompletionResult result;
  result.id = "x";
  result.model = "m";
  result.reasoning_text = "Two and two make four.";
  result.text = "4";
  json message = json::parse(CompletionResponseJson(OpenAiEndpoint::kChatCompletions, result))["choices"][0]["message"];
  EXPECT_EQ(message["reasoning_content"], "Two and two make four.");
  EXPECT_EQ(message["content"], "4");

  CompletionResult thinking = result;
  thinking.text.clear();
  thinking.reasoning_text = "Two and";
  json delta = json::parse(CompletionChunkJson(OpenAiEndpoint::kChatCompletions, thinking, true))["choices"][0]["delta"];
  EXPECT_EQ(delta["reasoning_content"], "Two and");
  EXPECT_EQ(delta["role"], "assistant");
  EXPECT_FALSE(delta.contains("content"));  // a reasoning step has no answer text yet

  CompletionResult answer = result;
  answer.reasoning_text.clear();
  json later = json::parse(CompletionChunkJson(OpenAiEndpoint::kChatCompletions, answer, false))["choices"][0]["delta"];
  EXPECT_FALSE(later.contains("reasoning_content"));
  EXPECT_EQ(later["content"], "4");
  answer.text.clear();
  json no_reasoning = json::parse(CompletionResponseJson(OpenAiEndpoint::kChatCompletions, answer))["choices"][0]["message"];
  EXPECT_FALSE(no_reasoning.contains("reasoning_content"));
}

TEST(OpenAiError, MapsGrpcCodesToHttpAndNamesTheParam) {
  auto e = OpenAiError(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "messages[0].role: must be x"));
  EXPECT_EQ(e.http_status, 400);
  json body = json::parse(e.body);
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  EXPECT_EQ(body["error"]["param"], "messages[0].role");
  EXPECT_EQ(body["error"]["message"], "messages[0].role: must be x");
  EXPECT_EQ(OpenAiError(grpc::Status(grpc::StatusCode::NOT_FOUND, "x")).http_status, 404);
  EXPECT_EQ(OpenAiError(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "x")).http_status, 401);
  EXPECT_EQ(OpenAiError(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "x")).http_status, 429);
  EXPECT_EQ(OpenAiError(grpc::Status(grpc::StatusCode::UNAVAILABLE, "x")).http_status, 503);
  EXPECT_EQ(OpenAiError(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "x")).http_status, 504);
  EXPECT_EQ(OpenAiError(grpc::Status(grpc::StatusCode::INTERNAL, "x")).http_status, 500);
}

}  // namespace
}  // namespace shoal::router
