// The worker's gRPC server end to end in one process: a real WorkerServer on a free port,
// the real SmolLM2 model behind it, and real gRPC/HTTP clients in front.
#include <curl/curl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
#include "shoal/v1/generate.grpc.pb.h"
#include "shoal/v1/worker.grpc.pb.h"
#include "worker/server/metric_names.h"
#include "worker/server/model_runtime.h"
#include "worker/server/worker_server.h"

namespace shoal::worker {
namespace {

using ::testing::HasSubstr;

constexpr int kMaxModelLen = 1024;

struct Streamed {
  std::vector<v1::GenerateResponse> responses;
  grpc::Status status;
  std::string text;
  std::vector<int32_t> token_ids;
  const v1::GenerateResponse& last() const { return responses.back(); }
};

Streamed Collect(v1::Generation::Stub& stub, const v1::GenerateRequest& request,
                 std::chrono::milliseconds timeout = std::chrono::seconds(120)) {
  Streamed out;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  auto reader = stub.Generate(&context, request);
  v1::GenerateResponse r;
  while (reader->Read(&r)) {
    out.text += r.text();
    out.token_ids.insert(out.token_ids.end(), r.token_ids().begin(), r.token_ids().end());
    out.responses.push_back(r);
  }
  out.status = reader->Finish();
  return out;
}

v1::GenerateRequest Prompt(const std::string& text, int max_tokens) {
  v1::GenerateRequest r;
  r.set_prompt(text);
  r.set_max_tokens(max_tokens);
  return r;
}

size_t CurlAppend(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

// GET over HTTP with libcurl; "" and a failed expectation on error.
std::string HttpGet(const std::string& url) {
  std::string body;
  CURL* curl = curl_easy_init();
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, CurlAppend);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 10L);
  CURLcode rc = curl_easy_perform(curl);
  long http = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &http);
  curl_easy_cleanup(curl);
  EXPECT_EQ(rc, CURLE_OK) << url << ": " << curl_easy_strerror(rc);
  EXPECT_EQ(http, 200) << url;
  return body;
}

// The value of the sample written exactly as `series` (name plus labels) in Prometheus
// text, or -1 when there is none.
double SampleValue(const std::string& text, const std::string& series) {
  const std::string key = series + " ";
  for (size_t at = 0; at < text.size();) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    if (text.compare(at, key.size(), key) == 0) return std::stod(text.substr(at + key.size(), end - at - key.size()));
    at = end + 1;
  }
  return -1;
}

class GenerationServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ModelRuntimeOptions options;
    options.num_threads = 2;
    options.engine.kv_cache_bytes = 64ull << 20;
    options.engine.max_model_len = kMaxModelLen;
    auto runtime = ModelRuntime::Load(options);
    if (!runtime.ok()) {
      load_error_ = new std::string(runtime.status().ToString());
      return;
    }
    runtime_ = runtime->release();
    WorkerServerOptions server_options;
    server_options.host = "127.0.0.1";
    server_options.port = 0;
    server_options.metrics_port = 0;
    auto server = WorkerServer::Start(server_options);
    if (!server.ok()) {
      load_error_ = new std::string(server.status().ToString());
      return;
    }
    server_ = server->release();
    server_->Serve(runtime_);
    channel_ = new std::shared_ptr<grpc::Channel>(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()), grpc::InsecureChannelCredentials()));
  }

  static void TearDownTestSuite() {
    if (server_ != nullptr) server_->Shutdown(std::chrono::seconds(1));
    delete server_;
    delete runtime_;
    delete channel_;
    server_ = nullptr;
    runtime_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(server_, nullptr) << "cannot start the server over the default model (run scripts/setup.sh "
                                   "to fetch it): "
                                << (load_error_ ? *load_error_ : "");
    stub_ = v1::Generation::NewStub(*channel_);
    stats_stub_ = v1::Worker::NewStub(*channel_);
  }

  v1::WorkerStats Stats() {
    grpc::ClientContext context;
    v1::WorkerStats stats;
    grpc::Status st = stats_stub_->GetStats(&context, v1::GetStatsRequest(), &stats);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return stats;
  }

  // Polls GetStats until nothing runs and every KV block is free again.
  bool WaitForIdleCache(std::chrono::seconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      v1::WorkerStats s = Stats();
      if (s.running_sequences() == 0 && s.waiting_sequences() == 0 && s.num_free_blocks() == s.num_total_blocks()) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  static std::string* load_error_;
  static ModelRuntime* runtime_;
  static WorkerServer* server_;
  static std::shared_ptr<grpc::Channel>* channel_;
  std::unique_ptr<v1::Generation::Stub> stub_;
  std::unique_ptr<v1::Worker::Stub> stats_stub_;
};

std::string* GenerationServerTest::load_error_ = nullptr;
ModelRuntime* GenerationServerTest::runtime_ = nullptr;
WorkerServer* GenerationServerTest::server_ = nullptr;
std::shared_ptr<grpc::Channel>* GenerationServerTest::channel_ = nullptr;

TEST_F(GenerationServerTest, StreamsTextThatDecodesFromItsTokensAndEndsWithUsage) {
  v1::GenerateRequest request = Prompt("The capital of France is", 12);
  request.set_request_id("stream-1");
  Streamed s = Collect(*stub_, request);
  ASSERT_TRUE(s.status.ok()) << s.status.error_message();
  ASSERT_GE(s.responses.size(), 2u) << "one message per step, then the last";
  for (const auto& r : s.responses) EXPECT_EQ(r.request_id(), "stream-1");
  for (size_t i = 0; i + 1 < s.responses.size(); ++i) {
    EXPECT_EQ(s.responses[i].finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
    EXPECT_FALSE(s.responses[i].has_usage());
  }
  EXPECT_THAT(s.last().finish_reason(), ::testing::AnyOf(v1::FINISH_REASON_LENGTH, v1::FINISH_REASON_STOP));
  EXPECT_EQ(s.last().usage().completion_tokens(), static_cast<int>(s.token_ids.size()));
  EXPECT_EQ(s.last().usage().prompt_tokens(),
            static_cast<int>(runtime_->tokenizer().Encode("The capital of France is").size() +
                             (runtime_->tokenizer().add_bos() ? 1 : 0)));
  EXPECT_GT(s.last().usage().time_to_first_token_seconds(), 0.0);
  EXPECT_FALSE(s.text.empty());
  EXPECT_EQ(s.text, runtime_->tokenizer().Decode(s.token_ids, /*skip_special=*/true));
}

TEST_F(GenerationServerTest, ChatGoesThroughTheTemplateAndConcurrentStreamsAllFinish) {
  std::vector<Streamed> results(3);
  std::vector<std::thread> threads;
  const char* questions[] = {"What is 2+2?", "Name a color.", "Say hello."};
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      v1::GenerateRequest r;
      auto* m = r.mutable_chat()->add_messages();
      m->set_role("user");
      m->set_content(questions[i]);
      r.set_max_tokens(10);
      results[i] = Collect(*v1::Generation::NewStub(*channel_), r);
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    PromptInput chat;
    chat.kind = PromptInput::Kind::kChat;
    chat.chat = {ChatTurn{"user", questions[i]}};
    auto tokens = runtime_->PromptTokens(chat);
    ASSERT_TRUE(tokens.ok());
    EXPECT_EQ(results[i].last().usage().prompt_tokens(), static_cast<int>(tokens->size()));
    EXPECT_FALSE(results[i].token_ids.empty());
  }
}

TEST_F(GenerationServerTest, EveryInvalidArgumentNamesTheField) {
  struct Case {
    std::string name;
    v1::GenerateRequest request;
    std::string expected;
  };
  std::vector<Case> cases;
  auto add = [&](std::string name, v1::GenerateRequest r, std::string expected) {
    cases.push_back({std::move(name), std::move(r), std::move(expected)});
  };
  v1::GenerateRequest r = Prompt("Hi", 4);
  r.mutable_sampling()->set_top_p(1.5f);
  add("top_p", r, "sampling.top_p");
  r = Prompt("Hi", -3);
  add("max_tokens", r, "max_tokens");
  add("no input", v1::GenerateRequest(), "input must be set");
  add("empty prompt", Prompt("", 4), "prompt must not be empty");
  r = v1::GenerateRequest();
  for (const char* role : {"system", "user", "robot"}) {
    auto* m = r.mutable_chat()->add_messages();
    m->set_role(role);
    m->set_content("x");
  }
  add("role", r, "chat.messages[2].role");
  r = Prompt("Hi", 4);
  r.mutable_token_ids()->add_ids(49152 * 4);
  add("vocab", r, "token_ids.ids[0]");
  r = Prompt("Hi", 4);
  r.mutable_sampling()->set_temperature(-1);
  add("temperature", r, "sampling.temperature");
  r = Prompt("Hi", 4);
  r.mutable_stop()->add_stop("");
  add("stop", r, "stop.stop[0]");
  std::string long_prompt;
  for (int i = 0; i < kMaxModelLen + 100; ++i) long_prompt += "word ";
  add("too long", Prompt(long_prompt, 4), "max_model_len is 1024");
  add("prompt + max_tokens too long", Prompt(std::string(200, 'a') + " hello", kMaxModelLen), "max_tokens");

  for (const Case& c : cases) {
    Streamed s = Collect(*stub_, c.request);
    EXPECT_EQ(s.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name << ": " << s.status.error_message();
    EXPECT_THAT(s.status.error_message(), HasSubstr(c.expected)) << c.name;
    EXPECT_TRUE(s.responses.empty()) << c.name;
  }
  Streamed too_long = Collect(*stub_, Prompt(long_prompt, 4));
  EXPECT_TRUE(std::regex_match(too_long.status.error_message(),
                               std::regex("prompt has [0-9]+ tokens; max_model_len is 1024")))
      << too_long.status.error_message();
}

TEST_F(GenerationServerTest, InvalidUtf8NeverReachesTheModel) {
  // proto3 strings must be UTF-8, and protobuf's own parser on the server already refuses
  // the request (gRPC answers UNIMPLEMENTED for a request it cannot parse), so the call
  // fails before anything is generated. Our translation's named INVALID_ARGUMENT covers
  // the paths that bypass parsing (in-process callers); request_translation_test pins it.
  Streamed s = Collect(*stub_, Prompt("caf\xC3 au lait", 4));
  EXPECT_FALSE(s.status.ok());
  EXPECT_TRUE(s.responses.empty());
}

TEST_F(GenerationServerTest, UnknownModelIsNotFoundAndListsTheServedOnes) {
  v1::GenerateRequest r = Prompt("Hi", 4);
  r.set_model("gpt-17");
  Streamed s = Collect(*stub_, r);
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.status.error_message(), HasSubstr("gpt-17"));
  EXPECT_THAT(s.status.error_message(), HasSubstr("smollm2-135m-instruct"));
  r.set_model("smollm2-135m-instruct");
  EXPECT_TRUE(Collect(*stub_, r).status.ok());
}

TEST_F(GenerationServerTest, ListModelsDescribesTheServedModel) {
  grpc::ClientContext context;
  v1::ListModelsResponse models;
  ASSERT_TRUE(stub_->ListModels(&context, v1::ListModelsRequest(), &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).name(), "smollm2-135m-instruct");
  EXPECT_EQ(models.models(0).architecture(), "llama");
  EXPECT_EQ(models.models(0).vocab_size(), 49152);
  EXPECT_EQ(models.models(0).max_model_len(), kMaxModelLen);
}

TEST_F(GenerationServerTest, HealthIsServingOnceTheModelIsLoaded) {
  auto health = grpc::health::v1::Health::NewStub(*channel_);
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_TRUE(health->Check(&context, grpc::health::v1::HealthCheckRequest(), &response).ok());
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(GenerationServerTest, ClientCancellationStopsGenerationAndFreesKvBlocks) {
  ASSERT_TRUE(WaitForIdleCache(std::chrono::seconds(10)));
  v1::GenerateRequest r = Prompt("Count from one to a thousand:", 500);
  r.mutable_stop()->set_ignore_eos(true);
  grpc::ClientContext context;
  auto reader = stub_->Generate(&context, r);
  v1::GenerateResponse first;
  ASSERT_TRUE(reader->Read(&first));
  v1::WorkerStats busy = Stats();
  EXPECT_EQ(busy.running_sequences(), 1);
  EXPECT_LT(busy.num_free_blocks(), busy.num_total_blocks());
  context.TryCancel();
  v1::GenerateResponse more;
  while (reader->Read(&more)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // 500 tokens take tens of seconds; an engine that kept generating would still be busy.
  EXPECT_TRUE(WaitForIdleCache(std::chrono::seconds(5)));
}

TEST_F(GenerationServerTest, DeadlineExceededCancelsTheEngineRequest) {
  v1::GenerateRequest r = Prompt("Tell me a long story about the sea.", 500);
  r.mutable_stop()->set_ignore_eos(true);
  Streamed s = Collect(*stub_, r, std::chrono::milliseconds(1500));
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(WaitForIdleCache(std::chrono::seconds(5)));
}

TEST_F(GenerationServerTest, MetricsShowPrefixCacheHitsForASharedSystemPrompt) {
  std::string system = "You are a careful assistant for a shipping company. ";
  for (int i = 0; i < 8; ++i) system += "Always answer politely, briefly and precisely, and never invent facts. ";
  std::vector<int> cached;
  for (const char* question : {"Where is my parcel?", "How do I return an item?"}) {
    v1::GenerateRequest r;
    auto* m = r.mutable_chat()->add_messages();
    m->set_role("system");
    m->set_content(system);
    m = r.mutable_chat()->add_messages();
    m->set_role("user");
    m->set_content(question);
    r.set_max_tokens(4);
    Streamed s = Collect(*stub_, r);
    ASSERT_TRUE(s.status.ok()) << s.status.error_message();
    cached.push_back(s.last().usage().cached_prompt_tokens());
  }
  EXPECT_EQ(cached[0], 0);
  EXPECT_GE(cached[1], 64) << "the second request shares the long system prompt";

  const std::string text = HttpGet("http://127.0.0.1:" + std::to_string(server_->metrics_port()) + "/metrics");
  for (const char* name : {metric::kKvCacheUsageRatio, metric::kRunningSequences, metric::kWaitingSequences,
                           metric::kPrefixCacheHitsTotal, metric::kStepDurationSeconds, metric::kBatchTokens,
                           metric::kRequestsTotal, metric::kGeneratedTokensTotal, metric::kPromptTokensTotal,
                           metric::kPreemptionsTotal}) {
    EXPECT_THAT(text, HasSubstr(std::string("# TYPE ") + name)) << name;
  }
  EXPECT_GE(SampleValue(text, metric::kPrefixCacheHitsTotal), cached[1]);
  EXPECT_GE(SampleValue(text, std::string(metric::kStepDurationSeconds) + "_count"), 2);
  EXPECT_GE(SampleValue(text, "shoal_worker_requests_total{code=\"OK\"}"), 2);
}

// A server whose engine queue has no room: every request is shed with RESOURCE_EXHAUSTED.
TEST(GenerationServerLoadShedding, FullQueueIsResourceExhausted) {
  ModelRuntimeOptions options;
  options.num_threads = 1;
  options.engine.kv_cache_bytes = 16ull << 20;
  options.engine.max_waiting = 0;
  auto runtime = ModelRuntime::Load(options);
  ASSERT_TRUE(runtime.ok()) << runtime.status().ToString() << " (run scripts/setup.sh to fetch the default model)";
  auto server = WorkerServer::Start({.host = "127.0.0.1", .port = 0, .metrics_port = -1, .extra_services = {}});
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  (*server)->Serve(runtime->get());
  auto stub = v1::Generation::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string((*server)->port()), grpc::InsecureChannelCredentials()));
  Streamed s = Collect(*stub, Prompt("Hi", 4));
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.status.error_message();
  (*server)->Shutdown(std::chrono::seconds(1));
}

// Before the model is loaded the server already answers: health NOT_SERVING, calls UNAVAILABLE.
TEST(GenerationServerStartup, NotServingUntilAModelIsHandedOver) {
  auto server = WorkerServer::Start({.host = "127.0.0.1", .port = 0, .metrics_port = -1, .extra_services = {}});
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  auto channel =
      grpc::CreateChannel("127.0.0.1:" + std::to_string((*server)->port()), grpc::InsecureChannelCredentials());
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_TRUE(grpc::health::v1::Health::NewStub(channel)
                  ->Check(&context, grpc::health::v1::HealthCheckRequest(), &response)
                  .ok());
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  Streamed s = Collect(*v1::Generation::NewStub(channel), Prompt("Hi", 4));
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  (*server)->Shutdown(std::chrono::seconds(0));
}

}  // namespace
}  // namespace shoal::worker

namespace shoal::worker {
namespace {

// SIGTERM's path: a stream that can finish within the grace period does, one that cannot
// is cancelled at its end, and the engine is left with nothing running.
TEST(GenerationServerShutdown, DrainsShortStreamsAndCancelsLongOnesAfterTheGrace) {
  ModelRuntimeOptions options;
  options.num_threads = 2;
  options.engine.kv_cache_bytes = 32ull << 20;
  auto runtime = ModelRuntime::Load(options);
  ASSERT_TRUE(runtime.ok()) << runtime.status().ToString() << " (run scripts/setup.sh to fetch the default model)";
  auto server = WorkerServer::Start({.host = "127.0.0.1", .port = 0, .metrics_port = -1, .extra_services = {}});
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  (*server)->Serve(runtime->get());
  auto channel =
      grpc::CreateChannel("127.0.0.1:" + std::to_string((*server)->port()), grpc::InsecureChannelCredentials());
  auto stub = v1::Generation::NewStub(channel);

  v1::GenerateRequest long_request = Prompt("Write a very long essay about rivers.", 600);
  long_request.mutable_stop()->set_ignore_eos(true);
  v1::GenerateRequest short_request = Prompt("Hello", 6);
  short_request.mutable_stop()->set_ignore_eos(true);

  grpc::ClientContext long_context, short_context;
  auto long_reader = stub->Generate(&long_context, long_request);
  auto short_reader = stub->Generate(&short_context, short_request);
  v1::GenerateResponse r;
  ASSERT_TRUE(long_reader->Read(&r));
  ASSERT_TRUE(short_reader->Read(&r));

  const auto t0 = std::chrono::steady_clock::now();
  std::thread stopper([&] { (*server)->Shutdown(std::chrono::milliseconds(1500)); });
  int short_tokens = r.token_ids_size();
  v1::FinishReason short_finish = v1::FINISH_REASON_UNSPECIFIED;
  while (short_reader->Read(&r)) {
    short_tokens += r.token_ids_size();
    short_finish = r.finish_reason();
  }
  EXPECT_TRUE(short_reader->Finish().ok());
  EXPECT_EQ(short_finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(short_tokens, 6);
  while (long_reader->Read(&r)) {
  }
  grpc::Status long_status = long_reader->Finish();
  stopper.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_FALSE(long_status.ok());
  EXPECT_LT(seconds, 10.0) << "600 tokens take far longer; the grace period must cut it";
  EXPECT_EQ((*runtime)->engine().Stats().running, 0);
}

}  // namespace
}  // namespace shoal::worker
