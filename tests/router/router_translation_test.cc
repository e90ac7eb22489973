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
