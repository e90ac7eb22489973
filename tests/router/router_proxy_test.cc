// The router's gRPC and HTTP servers in this process, in front of SyntheticGenerationServers
// on loopback (ports bound to 0): real gRPC both ways, real sockets, real HTTP.
#include <gtest/gtest.h>
#include <httplib.h>

#include <cstdio>
#include <fstream>
#include <future>
#include <sstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "router/router_server.h"
#include "tests/router/router_test_support.h"
#include "tests/router/synthetic_generation_server.h"

namespace shoal::router {
namespace {

using nlohmann::json;
using testing::Generate;
using testing::PromptRequest;
using testing::StreamResult;
using testing::SyntheticGenerationServer;
using testing::SyntheticOptions;

// Polls `condition` for up to `timeout`.
template <typename F>
bool Eventually(F condition, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return condition();
}

class RouterProxyTest : public ::testing::Test {
 protected:
  void StartGroups(int n, SyntheticOptions options = {}) {
    for (int i = 0; i < n; ++i) {
      auto group = SyntheticGenerationServer::Start(options);
      ASSERT_NE(group, nullptr);
      groups_.push_back(std::move(group));
    }
  }
  // Without `with_metrics` there is no metrics endpoint: civetweb takes ~2 s to stop.
  void StartRouter(RouterServerOptions options = {}, bool with_metrics = false) {
    options.host = "127.0.0.1";
    options.grpc_port = 0;
    options.http_port = 0;
    options.metrics_port = with_metrics ? 0 : -1;
    options.upstreams.health_interval = std::chrono::milliseconds(100);
    options.upstreams.health_timeout = std::chrono::milliseconds(500);
    for (const auto& g : groups_) options.upstreams.sources.static_upstreams.push_back({"127.0.0.1", g->port()});
    auto router = RouterServer::Start(options);
    ASSERT_TRUE(router.ok()) << router.status();
    router_ = *std::move(router);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(router_->grpc_port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::Generation::NewStub(channel_);
  }
  void TearDown() override {
    if (router_) router_->Shutdown(std::chrono::milliseconds(0));
    router_.reset();
    groups_.clear();
  }
  std::vector<int> CallsPerGroup() const {
    std::vector<int> calls;
    for (const auto& g : groups_) calls.push_back(g->calls());
    return calls;
  }

  std::vector<std::unique_ptr<SyntheticGenerationServer>> groups_;
  std::unique_ptr<RouterServer> router_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

TEST_F(RouterProxyTest, StreamsEveryTokenAndTheFinalUsage) {
  StartGroups(1);
  StartRouter();
  StreamResult r = Generate(*stub_, PromptRequest("hello", 5));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, "t0 t1 t2 t3 t4 ");
  ASSERT_EQ(r.responses.size(), 5u);
  EXPECT_EQ(r.responses.back().finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(r.responses.back().usage().completion_tokens(), 5);
  // The router names the request when the client did not, and every message carries it.
  EXPECT_FALSE(r.responses.front().request_id().empty());
  EXPECT_EQ(r.responses.front().request_id(), r.responses.back().request_id());
}

TEST_F(RouterProxyTest, ListModelsAggregatesHealthyGroupsOnce) {
  StartGroups(2);
  StartRouter();
  grpc::ClientContext context;
  v1::ListModelsResponse response;
  ASSERT_TRUE(stub_->ListModels(&context, v1::ListModelsRequest(), &response).ok());
  ASSERT_EQ(response.models_size(), 1);
  EXPECT_EQ(response.models(0).name(), "synthetic");
}

TEST_F(RouterProxyTest, UnknownModelIsNotFound) {
  StartGroups(1);
  StartRouter();
  StreamResult r = Generate(*stub_, PromptRequest("hello", 2, "no-such-model"));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(r.status.error_message().find("synthetic"), std::string::npos) << r.status.error_message();
  EXPECT_EQ(groups_[0]->calls(), 0);
}

TEST_F(RouterProxyTest, SpreadsConcurrentUniformLoadEvenly) {
  SyntheticOptions options;
  options.token_interval = std::chrono::milliseconds(10);
  StartGroups(3, options);
  StartRouter();
  std::vector<std::future<StreamResult>> calls;
  for (int i = 0; i < 12; ++i) {
    calls.push_back(std::async(std::launch::async, [&, i] {
      return Generate(*stub_, PromptRequest("q" + std::to_string(i), 30));
    }));
  }
  for (auto& c : calls) EXPECT_TRUE(c.get().status.ok());
  for (int n : CallsPerGroup()) {
    EXPECT_GE(n, 3);
    EXPECT_LE(n, 5);
  }
}

TEST_F(RouterProxyTest, SharedPrefixRequestsLandOnOneGroup) {
  StartGroups(3);
  StartRouter();
  const std::string system_prompt(512, 'S');
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(Generate(*stub_, PromptRequest(system_prompt + "question " + std::to_string(i), 2)).status.ok());
  }
  auto calls = CallsPerGroup();
  EXPECT_EQ(*std::max_element(calls.begin(), calls.end()), 6) << calls[0] << "," << calls[1] << "," << calls[2];
  // Distinct prompts with no shared prefix still spread over the groups.
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(Generate(*stub_, PromptRequest(std::string(128, 'a' + i), 2)).status.ok());
  }
  calls = CallsPerGroup();
  EXPECT_GE(*std::min_element(calls.begin(), calls.end()), 1);
}

TEST_F(RouterProxyTest, FailureBeforeFirstTokenIsRetriedOnAnotherGroup) {
  SyntheticOptions failing;
  failing.fail_first_calls = 1000;
  groups_.push_back(SyntheticGenerationServer::Start(failing));
  StartGroups(1);
  StartRouter();
  for (int i = 0; i < 4; ++i) {
    StreamResult r = Generate(*stub_, PromptRequest("p" + std::to_string(i), 3));
    ASSERT_TRUE(r.status.ok()) << i << ": " << r.status.error_message();
    EXPECT_EQ(r.text, "t0 t1 t2 ");
  }
  EXPECT_GE(groups_[0]->calls(), 1);  // it was tried, failed, and the request moved on
  EXPECT_EQ(groups_[1]->completed(), 4);
  EXPECT_NE(router_->metrics().RenderText().find("shoal_router_retries_total"), std::string::npos);
}

TEST_F(RouterProxyTest, TwoFailedGroupsEndUnavailableNamingTheGroup) {
  SyntheticOptions failing;
  failing.fail_first_calls = 1000;
  StartGroups(2, failing);
  StartRouter();
  StreamResult r = Generate(*stub_, PromptRequest("p", 3));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(r.status.error_message().find("2 tries"), std::string::npos) << r.status.error_message();
  EXPECT_EQ(groups_[0]->calls() + groups_[1]->calls(), 2);  // retried once, not more
}

TEST_F(RouterProxyTest, FailureMidStreamEndsUnavailableAndIsNotRetried) {
  SyntheticOptions options;
  options.fail_after_tokens = 3;
  StartGroups(1, options);
  StartGroups(1);
  StartRouter();
  // Send until the failing group has served one (rotation decides which group goes first).
  StreamResult r;
  for (int i = 0; i < 4 && groups_[0]->calls() == 0; ++i) r = Generate(*stub_, PromptRequest("x" + std::to_string(i), 10));
  ASSERT_EQ(groups_[0]->calls(), 1);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(r.text, "t0 t1 t2 ");
  EXPECT_NE(r.status.error_message().find("failed after streaming 3 tokens"), std::string::npos)
      << r.status.error_message();
  EXPECT_NE(r.status.error_message().find(groups_[0]->address()), std::string::npos);
  // New requests keep succeeding on the healthy group.
  EXPECT_TRUE(Generate(*stub_, PromptRequest("after", 3)).status.ok());
}

TEST_F(RouterProxyTest, ClientCancellationReachesTheGroup) {
  StartGroups(1);
  StartRouter();
  grpc::ClientContext context;
  auto reader = stub_->Generate(&context, PromptRequest("long", 100000));
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  ASSERT_TRUE(reader->Read(&response));
  context.TryCancel();
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(Eventually([&] { return groups_[0]->cancelled() == 1; })) << groups_[0]->cancelled();
  EXPECT_TRUE(Eventually([&] { return router_->balancer().inflight() == 0; }));
}

TEST_F(RouterProxyTest, ClientDeadlineTravelsUpstreamAndExpiresThere) {
  StartGroups(1);
  StartRouter();
  ASSERT_TRUE(Generate(*stub_, PromptRequest("a", 2), std::chrono::milliseconds(3000)).status.ok());
  EXPECT_GT(groups_[0]->last_deadline_seconds(), 2.0);
  EXPECT_LE(groups_[0]->last_deadline_seconds(), 3.1);  // gRPC rounds the timeout header up
  StreamResult r = Generate(*stub_, PromptRequest("b", 100000), std::chrono::milliseconds(300));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(Eventually([&] { return groups_[0]->cancelled() == 1; }));
}

TEST_F(RouterProxyTest, ApiKeysRejectMissingAndWrongKeys) {
  StartGroups(1);
  const std::string path = ::testing::TempDir() + "/router_keys.txt";
  std::ofstream(path) << "# keys\nsk-good\n";
  RouterServerOptions options;
  options.api_key_file = path;
  StartRouter(options);
  StreamResult none = Generate(*stub_, PromptRequest("a", 2));
  EXPECT_EQ(none.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(none.status.error_message().find("missing API key"), std::string::npos);
  StreamResult wrong = Generate(*stub_, PromptRequest("a", 2), std::nullopt, "Bearer sk-bad");
  EXPECT_EQ(wrong.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(groups_[0]->calls(), 0);
  EXPECT_TRUE(Generate(*stub_, PromptRequest("a", 2), std::nullopt, "Bearer sk-good").status.ok());
}

TEST_F(RouterProxyTest, BeyondLimitsAndQueueIsResourceExhaustedAtOnce) {
  StartGroups(1);
  RouterServerOptions options;
  options.balancer.max_inflight = 2;
  options.balancer.max_queued = 1;
  StartRouter(options);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>>> readers;
  // Streams start one at a time so that the third is the one that queues.
  v1::GenerateResponse response;
  for (int i = 0; i < 3; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(stub_->Generate(contexts.back().get(), PromptRequest("long", 100000)));
    if (i < 2) {
      ASSERT_TRUE(readers[i]->Read(&response));
    }
  }
  ASSERT_TRUE(Eventually([&] { return router_->balancer().queued() == 1; }));
  const auto start = std::chrono::steady_clock::now();
  StreamResult shed = Generate(*stub_, PromptRequest("one more", 2));
  EXPECT_EQ(shed.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(shed.status.error_message().find("at capacity"), std::string::npos) << shed.status.error_message();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
  // Cancelling a running stream admits the queued one.
  contexts[0]->TryCancel();
  ASSERT_TRUE(readers[2]->Read(&response));
  for (auto& c : contexts) c->TryCancel();
  for (auto& r : readers) {
    while (r->Read(&response)) {
    }
    r->Finish();
  }
}

TEST_F(RouterProxyTest, UnhealthyGroupLeavesRotationAndHealthyReturns) {
  StartGroups(2);
  StartRouter();
  groups_[0]->SetServing(false);
  ASSERT_TRUE(Eventually([&] {
    return router_->metrics().RenderText().find("shoal_router_upstream_healthy{group=\"" + groups_[0]->address() +
                                                "\"} 0") != std::string::npos;
  }));
  const int before = groups_[0]->calls();
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Generate(*stub_, PromptRequest("u" + std::to_string(i), 1)).status.ok());
  EXPECT_EQ(groups_[0]->calls(), before);
  groups_[0]->SetServing(true);
  ASSERT_TRUE(Eventually([&] {
    Generate(*stub_, PromptRequest("v", 1));
    return groups_[0]->calls() > before;
  }));
}

TEST_F(RouterProxyTest, MetricsCountRequestsLatencyTokensAndHealth) {
  StartGroups(1);
  StartRouter({}, /*with_metrics=*/true);
  ASSERT_TRUE(Generate(*stub_, PromptRequest(std::string(40, 'p'), 4)).status.ok());
  Generate(*stub_, PromptRequest("p", 4, "nope"));
  httplib::Client client("127.0.0.1", router_->metrics_port());
  auto res = client.Get("/metrics");
  ASSERT_TRUE(res);
  const std::string& text = res->body;
  EXPECT_NE(text.find("shoal_router_requests_total{code=\"OK\",model=\"synthetic\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("shoal_router_requests_total{code=\"NOT_FOUND\",model=\"unknown\"} 1"), std::string::npos);
  EXPECT_NE(text.find("shoal_router_time_to_first_token_seconds_count 1"), std::string::npos);
  EXPECT_NE(text.find("shoal_router_time_per_output_token_seconds_count 1"), std::string::npos);
  EXPECT_NE(text.find("shoal_router_request_duration_seconds_count 2"), std::string::npos);
  EXPECT_NE(text.find("shoal_router_generated_tokens_total 4"), std::string::npos);
  EXPECT_NE(text.find("shoal_router_prompt_tokens_total 10"), std::string::npos);
  EXPECT_NE(text.find("shoal_router_inflight_requests 0"), std::string::npos);
  EXPECT_NE(text.find("shoal_router_upstream_healthy{group=\"" + groups_[0]->address() + "\"} 1"), std::string::npos);
}

// --- OpenAI-compatible HTTP ----------------------------------------------------------

class RouterHttpTest : public RouterProxyTest {
 protected:
  virtual SyntheticOptions GroupOptions() const { return {}; }
  void SetUp() override {
    StartGroups(1, GroupOptions());
    const std::string path = ::testing::TempDir() + "/router_http_keys.txt";
    std::ofstream(path) << "sk-http\n";
    RouterServerOptions options;
    options.api_key_file = path;
    options.max_http_body_bytes = 4096;
    StartRouter(options);
    client_ = std::make_unique<httplib::Client>("127.0.0.1", router_->http_port());
    client_->set_bearer_token_auth("sk-http");
    client_->set_read_timeout(10, 0);
  }
  static json ErrorOf(const httplib::Result& res) { return json::parse(res->body)["error"]; }
  // The JSON events of a server-sent-event body, and whether it ended with [DONE].
  static std::vector<json> Events(const std::string& body, bool* done) {
    std::vector<json> events;
    *done = false;
    size_t pos = 0;
    while ((pos = body.find("data: ", pos)) != std::string::npos) {
      const size_t end = body.find("\n\n", pos);
      const std::string data = body.substr(pos + 6, end - pos - 6);
      if (data == "[DONE]") {
        *done = true;
      } else {
        events.push_back(json::parse(data));
      }
      pos = end;
    }
    return events;
  }
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(RouterHttpTest, CompletionReturnsTextAndUsage) {
  auto res = client_->Post("/v1/completions", R"({"model": "synthetic", "prompt": "abcdefgh", "max_tokens": 3})",
                           "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  json body = json::parse(res->body);
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["choices"][0]["text"], "t0 t1 t2 ");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["usage"]["completion_tokens"], 3);
  EXPECT_EQ(body["usage"]["prompt_tokens"], 2);
}

TEST_F(RouterHttpTest, ChatCompletionStreamsServerSentEvents) {
  auto res = client_->Post(
      "/v1/chat/completions",
      R"({"model": "synthetic", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": true,
          "stream_options": {"include_usage": true}})",
      "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  std::vector<json> events;
  bool done = false;
  size_t pos = 0;
  while ((pos = res->body.find("data: ", pos)) != std::string::npos) {
    const size_t end = res->body.find("\n\n", pos);
    const std::string data = res->body.substr(pos + 6, end - pos - 6);
    if (data == "[DONE]") {
      done = true;
    } else {
      events.push_back(json::parse(data));
    }
    pos = end;
  }
  EXPECT_TRUE(done);
  ASSERT_EQ(events.size(), 4u) << res->body;  // three tokens and the usage chunk
  EXPECT_EQ(events[0]["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  for (int i = 0; i < 3; ++i) text += events[i]["choices"][0]["delta"]["content"].get<std::string>();
  EXPECT_EQ(text, "t0 t1 t2 ");
  EXPECT_EQ(events[2]["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(events[3]["usage"]["completion_tokens"], 3);
}

TEST_F(RouterHttpTest, CompletionLogprobsWholeAndStreamed) {
  auto res = client_->Post("/v1/completions",
                           R"({"model": "synthetic", "prompt": "abcd", "max_tokens": 3, "logprobs": 2})",
                           "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  json lp = json::parse(res->body)["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"], json({"t0 ", "t1 ", "t2 "})) << lp;
  EXPECT_EQ(lp["token_logprobs"], json({-0.25, -0.25, -0.25})) << lp;
  EXPECT_EQ(lp["text_offset"], json({0, 3, 6})) << lp;
  ASSERT_EQ(lp["top_logprobs"].size(), 3u) << lp;
  EXPECT_EQ(lp["top_logprobs"][1], json({{"t1 ", -0.25}, {"token_id:1002", -1.5}})) << lp;

  auto streamed = client_->Post(
      "/v1/completions", R"({"model": "synthetic", "prompt": "abcd", "max_tokens": 3, "logprobs": 0, "stream": true})",
      "application/json");
  ASSERT_TRUE(streamed);
  ASSERT_EQ(streamed->status, 200) << streamed->body;
  bool done = false;
  std::vector<json> events = Events(streamed->body, &done);
  EXPECT_TRUE(done);
  ASSERT_EQ(events.size(), 3u) << streamed->body;
  for (int i = 0; i < 3; ++i) {
    const json& chunk_lp = events[i]["choices"][0]["logprobs"];
    EXPECT_EQ(chunk_lp["tokens"], json({"t" + std::to_string(i) + " "})) << chunk_lp;
    EXPECT_EQ(chunk_lp["text_offset"], json({3 * i})) << chunk_lp;
    EXPECT_EQ(chunk_lp["top_logprobs"], json::array({json::object()})) << chunk_lp;
  }
}

TEST_F(RouterHttpTest, ChatLogprobsWholeAndStreamed) {
  const std::string body =
      R"({"model": "synthetic", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
          "logprobs": true, "top_logprobs": 1)";
  auto res = client_->Post("/v1/chat/completions", body + "}", "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  json content = json::parse(res->body)["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u) << res->body;
  EXPECT_EQ(content[1]["token"], "t1 ");
  EXPECT_EQ(content[1]["logprob"], -0.25);
  EXPECT_EQ(content[1]["bytes"], json({116, 49, 32}));
  EXPECT_EQ(content[1]["top_logprobs"], json::array({{{"token", "t1 "}, {"logprob", -0.25}, {"bytes", {116, 49, 32}}}}));

  auto streamed = client_->Post("/v1/chat/completions", body + ", \"stream\": true}", "application/json");
  ASSERT_TRUE(streamed);
  ASSERT_EQ(streamed->status, 200) << streamed->body;
  bool done = false;
  std::vector<json> events = Events(streamed->body, &done);
  ASSERT_EQ(events.size(), 2u) << streamed->body;
  EXPECT_EQ(events[0]["choices"][0]["logprobs"]["content"][0]["token"], "t0 ");
  EXPECT_EQ(events[1]["choices"][0]["logprobs"]["content"][0]["token"], "t1 ");
  EXPECT_EQ(events[1]["choices"][0]["logprobs"]["content"].size(), 1u);

  // Without logprobs the field is null, as OpenAI sends it.
  auto plain = client_->Post("/v1/chat/completions",
                             R"({"model": "synthetic", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})",
                             "application/json");
  ASSERT_TRUE(plain);
  EXPECT_TRUE(json::parse(plain->body)["choices"][0]["logprobs"].is_null()) << plain->body;
}

// A group whose first two tokens are reasoning ("r0 r1 "), like DeepSeek-R1's <think>.
class RouterHttpReasoningTest : public RouterHttpTest {
 protected:
  SyntheticOptions GroupOptions() const override {
    SyntheticOptions options;
    options.reasoning_tokens = 2;
    return options;
  }
};

TEST_F(RouterHttpReasoningTest, ChatSeparatesReasoningContentWholeAndStreamed) {
  const std::string body = R"({"model": "synthetic", "messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 4)";
  auto res = client_->Post("/v1/chat/completions", body + "}", "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  json message = json::parse(res->body)["choices"][0]["message"];
  EXPECT_EQ(message["reasoning_content"], "r0 r1 ") << message;
  EXPECT_EQ(message["content"], "t2 t3 ") << message;

  auto streamed = client_->Post("/v1/chat/completions", body + ", \"stream\": true}", "application/json");
  ASSERT_TRUE(streamed);
  ASSERT_EQ(streamed->status, 200) << streamed->body;
  bool done = false;
  std::vector<json> events = Events(streamed->body, &done);
  ASSERT_EQ(events.size(), 4u) << streamed->body;
  EXPECT_EQ(events[0]["choices"][0]["delta"], json({{"role", "assistant"}, {"reasoning_content", "r0 "}}));
  EXPECT_EQ(events[1]["choices"][0]["delta"], json({{"reasoning_content", "r1 "}}));
  EXPECT_EQ(events[2]["choices"][0]["delta"], json({{"content", "t2 "}}));

  // A plain completion does not ask for the split: the reasoning stays in the text.
  auto completion = client_->Post("/v1/completions", R"({"model": "synthetic", "prompt": "2+2?", "max_tokens": 3})",
                                  "application/json");
  ASSERT_TRUE(completion);
  EXPECT_EQ(json::parse(completion->body)["choices"][0]["text"], "r0 r1 t2 ") << completion->body;
}

TEST_F(RouterHttpTest, HttpClientHangingUpCancelsTheGroupsStream) {
  const std::string command =
      "curl -sS -N --max-time 0.5 -H 'Authorization: Bearer sk-http' -H 'Content-Type: application/json' -d "
      "'{\"model\": \"synthetic\", \"prompt\": \"go on\", \"max_tokens\": 100000, \"stream\": true}' "
      "http://127.0.0.1:" + std::to_string(router_->http_port()) + "/v1/completions > /dev/null 2>&1";
  EXPECT_NE(std::system(command.c_str()), 0);  // curl gives up at --max-time
  EXPECT_EQ(groups_[0]->calls(), 1);
  EXPECT_TRUE(Eventually([&] { return groups_[0]->cancelled() == 1; })) << groups_[0]->cancelled();
  EXPECT_TRUE(Eventually([&] { return router_->balancer().inflight() == 0; }));
}

TEST_F(RouterHttpTest, ModelsHealthAndReadiness) {
  auto models = client_->Get("/v1/models");
  ASSERT_TRUE(models);
  ASSERT_EQ(models->status, 200) << models->body;
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "synthetic");
  EXPECT_EQ(client_->Get("/healthz")->status, 200);
  EXPECT_EQ(client_->Get("/readyz")->status, 200);
}

TEST_F(RouterHttpTest, ErrorsAreOpenAiShapedWithPreciseStatus) {
  struct Case {
    std::string path, body;
    int status;
    std::string message_part;
  };
  const std::vector<Case> cases = {
      {"/v1/completions", "{\"model\": ", 400, "malformed JSON"},
      {"/v1/completions", "{\"model\": \"synthetic\", \"prompt\": \"\xc3\x28\"}", 400, "invalid UTF-8 at byte offset 34"},
      {"/v1/completions", R"({"model": "synthetic"})", 400, "prompt: is required"},
      {"/v1/chat/completions", R"({"model": "synthetic", "messages": [{"role": "user"}]})", 400,
       "messages[0].content: is required"},
      {"/v1/completions", R"({"model": "gpt-4", "prompt": "x"})", 404, "model 'gpt-4' is not served"},
      {"/v1/completions", "{\"model\": \"synthetic\", \"prompt\": \"" + std::string(5000, 'x') + "\"}", 413,
       "larger than 4096 bytes"},
      {"/v1/nothing", "{}", 404, "no route"},
      {"/v1/completions", "[1]", 400, "body: must be a JSON object"},
      {"/v1/completions", "", 400, "body: malformed JSON"},
      {"/v1/completions", R"({"prompt": "x"})", 400, "model: is required"},
      {"/v1/completions", R"({"model": "synthetic", "prompt": "x", "logprobs": 99})", 400, "logprobs: must be in [0, 20]"},
      {"/v1/chat/completions", R"({"model": "synthetic", "messages": "hi"})", 400, "messages: must be a non-empty array"},
  };
  for (const auto& c : cases) {
    auto res = client_->Post(c.path, c.body, "application/json");
    ASSERT_TRUE(res) << c.path;
    EXPECT_EQ(res->status, c.status) << c.body.substr(0, 80) << " -> " << res->body;
    json error = ErrorOf(res);
    EXPECT_NE(error["message"].get<std::string>().find(c.message_part), std::string::npos)
        << c.body.substr(0, 80) << " -> " << res->body;
    EXPECT_TRUE(error.contains("type"));
  }
  auto text = client_->Post("/v1/completions", R"({"model": "synthetic", "prompt": "x"})", "text/plain");
  ASSERT_TRUE(text);
  EXPECT_EQ(text->status, 415);
  EXPECT_NE(ErrorOf(text)["message"].get<std::string>().find("Content-Type must be application/json"),
            std::string::npos);
  httplib::Client anonymous("127.0.0.1", router_->http_port());
  auto res = anonymous.Post("/v1/completions", R"({"model": "synthetic", "prompt": "x"})", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
  EXPECT_EQ(ErrorOf(res)["type"], "authentication_error");
  EXPECT_EQ(groups_[0]->calls(), 0);
}

}  // namespace
}  // namespace shoal::router

namespace shoal::router {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// A self-signed certificate made with the openssl tool: the gRPC port then only speaks
// TLS, and a client that trusts the certificate gets through.
TEST(RouterTls, ServesGrpcAndHttpOverTls) {
  const std::string dir = ::testing::TempDir();
  const std::string cert = dir + "/router_tls_cert.pem", key = dir + "/router_tls_key.pem";
  const std::string command = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                              "-addext subjectAltName=DNS:localhost -keyout " + key + " -out " + cert +
                              " > /dev/null 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << "openssl could not make a test certificate";
  auto group = testing::SyntheticGenerationServer::Start({});
  ASSERT_NE(group, nullptr);
  RouterServerOptions options;
  options.host = "127.0.0.1";
  options.grpc_port = 0;
  options.http_port = 0;
  options.metrics_port = -1;
  options.tls_cert_file = cert;
  options.tls_key_file = key;
  options.upstreams.sources.static_upstreams.push_back({"127.0.0.1", group->port()});
  auto router = RouterServer::Start(options);
  ASSERT_TRUE(router.ok()) << router.status();
  const std::string target = "127.0.0.1:" + std::to_string((*router)->grpc_port());

  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadAll(cert);
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  auto secure = v1::Generation::NewStub(grpc::CreateCustomChannel(target, grpc::SslCredentials(ssl), args));
  testing::StreamResult r = testing::Generate(*secure, testing::PromptRequest("tls", 2), std::chrono::seconds(10));
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, "t0 t1 ");

  auto plain = v1::Generation::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  EXPECT_FALSE(testing::Generate(*plain, testing::PromptRequest("plain", 2), std::chrono::seconds(2)).status.ok());

  httplib::SSLClient https("127.0.0.1", (*router)->http_port());
  https.set_ca_cert_path(cert.c_str());
  https.enable_server_certificate_verification(false);  // the certificate names localhost, we dial an IP
  auto res = https.Get("/healthz");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  (*router)->Shutdown(std::chrono::milliseconds(0));
}

// Makes a self-signed certificate for localhost and 127.0.0.1 with the openssl tool.
void MakeCertificate(const std::string& cert, const std::string& key) {
  const std::string command = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                              "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " + key + " -out " + cert +
                              " > /dev/null 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << "openssl could not make a test certificate";
}

// The router dials a TLS-only group: with the group's CA it streams; with another CA (or
// none) the group never passes a health check, so requests end UNAVAILABLE.
TEST(RouterTls, DialsGroupsOverTlsVerifiedByTheCaFile) {
  const std::string dir = ::testing::TempDir();
  const std::string cert = dir + "/upstream_tls_cert.pem", key = dir + "/upstream_tls_key.pem";
  const std::string other_cert = dir + "/upstream_other_cert.pem", other_key = dir + "/upstream_other_key.pem";
  MakeCertificate(cert, key);
  MakeCertificate(other_cert, other_key);
  testing::SyntheticOptions tls;
  tls.tls_cert_pem = ReadAll(cert);
  tls.tls_key_pem = ReadAll(key);
  auto group = testing::SyntheticGenerationServer::Start(tls);
  ASSERT_NE(group, nullptr);

  auto start_router = [&](const std::string& ca, const std::string& server_name) {
    RouterServerOptions options;
    options.host = "127.0.0.1";
    options.grpc_port = 0;
    options.http_port = -1;
    options.metrics_port = -1;
    options.upstreams.health_interval = std::chrono::milliseconds(100);
    options.upstreams.health_timeout = std::chrono::milliseconds(500);
    options.upstream_tls_ca_file = ca;
    options.upstream_tls_server_name = server_name;
    options.upstreams.sources.static_upstreams.push_back({"127.0.0.1", group->port()});
    return RouterServer::Start(options);
  };
  auto stub_of = [](RouterServer& router) {
    return v1::Generation::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(router.grpc_port()),
                                                       grpc::InsecureChannelCredentials()));
  };
  for (const std::string server_name : {"", "localhost"}) {  // the IP SAN, then the DNS SAN
    auto router = start_router(cert, server_name);
    ASSERT_TRUE(router.ok()) << router.status();
    auto stub = stub_of(**router);
    testing::StreamResult r = testing::Generate(*stub, testing::PromptRequest("tls", 2), std::chrono::seconds(10));
    EXPECT_TRUE(r.status.ok()) << server_name << ": " << r.status.error_message();
    EXPECT_EQ(r.text, "t0 t1 ");
    (*router)->Shutdown(std::chrono::milliseconds(0));
  }
  const int calls = group->calls();

  auto wrong = start_router(other_cert, "");
  ASSERT_TRUE(wrong.ok()) << wrong.status();
  auto stub = stub_of(**wrong);
  testing::StreamResult r = testing::Generate(*stub, testing::PromptRequest("tls", 2), std::chrono::seconds(5));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
  (*wrong)->Shutdown(std::chrono::milliseconds(0));
  EXPECT_EQ(group->calls(), calls);  // the untrusted group was never sent a request

  EXPECT_EQ(start_router(dir + "/no_such_ca.pem", "").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace shoal::router
