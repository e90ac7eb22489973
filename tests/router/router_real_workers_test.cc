// shoal-router as a process in front of three real shoal-worker groups serving SmolLM2
// (separate processes on loopback). What each test measures comes from the workers' own
// Prometheus /metrics (requests served, prefix-cache hits, KV blocks in use, cancelled
// requests), never from the router's view of itself:
//   - uniform load spreads evenly over the groups (bound asserted);
//   - chats sharing a system prompt land on one group (hit rate asserted);
//   - a bad API key is refused over gRPC and HTTP before any group sees the request;
//   - curl streams a chat completion as server-sent events, logprobs included;
//   - cancelling a client call cancels the group's sequence and frees its KV blocks;
//   - SIGKILL of a group mid-stream ends that stream UNAVAILABLE with a clear message
//     while new requests keep succeeding within 2 s (last: it kills a group).
// The model must be present (scripts/setup.sh); a missing model fails the suite.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "grpcpp/grpcpp.h"
#include "shoal/v1/generate.grpc.pb.h"
#include "tests/router/multiproc_support.h"
#include "tests/router/router_test_support.h"

namespace shoal::router {
namespace {

using nlohmann::json;
using testing::Generate;
using testing::Group;
using testing::MetricOr;
using testing::Router;
using testing::RunCommand;
using testing::ScrapeMetrics;
using testing::StreamResult;

constexpr char kKey[] = "sk-real-workers";
constexpr char kBearer[] = "Bearer sk-real-workers";
constexpr int kGroups = 3;

const std::string kOk = "shoal_worker_requests_total{code=\"OK\"}";
const std::string kCancelled = "shoal_worker_requests_total{code=\"CANCELLED\"}";
const std::string kKvUsage = "shoal_worker_kv_cache_usage_ratio";
const std::string kRunning = "shoal_worker_running_sequences";
const std::string kPrefixHits = "shoal_worker_prefix_cache_hits_total";

v1::GenerateRequest Prompt(const std::string& prompt, int max_tokens, bool ignore_eos = false) {
  v1::GenerateRequest request;
  request.set_prompt(prompt);
  request.set_max_tokens(max_tokens);
  request.mutable_stop()->set_ignore_eos(ignore_eos);
  return request;  // temperature 0: greedy
}

v1::GenerateRequest Chat(const std::string& system, const std::string& user, int max_tokens) {
  v1::GenerateRequest request;
  auto* s = request.mutable_chat()->add_messages();
  s->set_role("system");
  s->set_content(system);
  auto* u = request.mutable_chat()->add_messages();
  u->set_role("user");
  u->set_content(user);
  request.set_max_tokens(max_tokens);
  return request;
}

template <typename F>
bool Eventually(F condition, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return condition();
}

class RouterRealWorkers : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(std::filesystem::exists(testing::ModelPath()))
        << "the default model is missing at " << testing::ModelPath() << "; run scripts/setup.sh";
    workers_ = new std::vector<Group>();
    for (int i = 0; i < kGroups; ++i) workers_->push_back(testing::StartWorker("worker-" + std::to_string(i)));
    for (auto& w : *workers_) testing::AwaitWorker(w);  // they load the model in parallel
    std::vector<std::string> flags = {"--api-key-file", KeyFile()};
    for (const auto& w : *workers_) {
      ASSERT_GT(w.port, 0) << "shoal-worker did not start";
      flags.push_back("--upstream");
      flags.push_back(w.address());
    }
    router_ = new Router(testing::StartRouter(flags, /*with_metrics=*/true));
    ASSERT_GT(router_->grpc_port, 0);
    // Every group in rotation before the first test.
    ASSERT_TRUE(Eventually([] {
      return MetricOr(ScrapeMetrics(router_->metrics_port), "shoal_router_upstream_healthy{group=\"" +
                                                                 workers_->back().address() + "\"}") == 1 &&
             Healthy() == kGroups;
    })) << "the router did not see all groups healthy";
  }
  static void TearDownTestSuite() {
    delete router_;
    delete workers_;
  }
  static std::string KeyFile() {
    const std::string path = ::testing::TempDir() + "/real_workers_keys.txt";
    std::ofstream(path) << kKey << "\n";
    return path;
  }
  static int Healthy() {
    const auto metrics = ScrapeMetrics(router_->metrics_port);
    int healthy = 0;
    for (const auto& w : *workers_) {
      healthy += MetricOr(metrics, "shoal_router_upstream_healthy{group=\"" + w.address() + "\"}") == 1;
    }
    return healthy;
  }
  static StreamResult Call(const v1::GenerateRequest& request,
                           std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    return Generate(*router_->stub, request, timeout, kBearer);
  }
  // One metric of every worker; a labelled counter is absent until its first increment,
  // so absent reads 0 (and a failed scrape -1).
  static std::vector<double> PerWorker(const std::string& key) {
    std::vector<double> values;
    for (const auto& w : *workers_) {
      const auto metrics = ScrapeMetrics(w.metrics_port);
      values.push_back(metrics.empty() ? -1 : MetricOr(metrics, key, 0));
    }
    return values;
  }
  // Which worker served the one request that ran since `before` (OK counts), or -1.
  static int ServedBy(const std::vector<double>& before) {
    int served = -1;
    Eventually(
        [&] {
          const auto now = PerWorker(kOk);
          for (int i = 0; i < kGroups; ++i) {
            if (now[i] > before[i]) served = i;
          }
          return served >= 0;
        },
        std::chrono::seconds(5));
    return served;
  }
  // The worker with a running sequence, or -1.
  static int Streaming() {
    const auto running = PerWorker(kRunning);
    for (int i = 0; i < kGroups; ++i) {
      if (running[i] >= 1) return i;
    }
    return -1;
  }

  static std::vector<Group>* workers_;
  static Router* router_;
};
std::vector<Group>* RouterRealWorkers::workers_ = nullptr;
Router* RouterRealWorkers::router_ = nullptr;

// Rounds of concurrent requests with unrelated prompts: least outstanding work must give
// each group its share. With 6 concurrent requests over 3 idle groups each round, the
// ideal split is 2/2/2; the bound allows one request of drift per group per two rounds.
TEST_F(RouterRealWorkers, UniformLoadSpreadsEvenlyOverTheGroups) {
  const int kRounds = 4, kConcurrent = 6;
  const auto before = PerWorker(kOk);
  const std::vector<std::string> topics = {"rivers", "volcanoes", "owls", "trains", "bread", "comets"};
  for (int round = 0; round < kRounds; ++round) {
    std::vector<std::future<StreamResult>> calls;
    for (int i = 0; i < kConcurrent; ++i) {
      // The request number leads, so no two prompts share a prefix block.
      const std::string prompt = std::to_string(round * kConcurrent + i) + ". A short fact about " + topics[i] + ":";
      calls.push_back(std::async(std::launch::async, [prompt] { return Call(Prompt(prompt, 4)); }));
    }
    for (auto& c : calls) {
      StreamResult r = c.get();
      ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    }
  }
  const int total = kRounds * kConcurrent;
  std::vector<int> served(kGroups);
  ASSERT_TRUE(Eventually([&] {
    const auto now = PerWorker(kOk);
    int sum = 0;
    for (int i = 0; i < kGroups; ++i) sum += served[i] = static_cast<int>(now[i] - before[i]);
    return sum == total;
  })) << "workers counted " << served[0] << "+" << served[1] << "+" << served[2] << " of " << total;
  const auto [min, max] = std::minmax_element(served.begin(), served.end());
  std::printf("spread: %d/%d/%d of %d requests (ideal %d each)\n", served[0], served[1], served[2], total,
              total / kGroups);
  RecordProperty("spread", std::to_string(served[0]) + "/" + std::to_string(served[1]) + "/" +
                               std::to_string(served[2]));
  EXPECT_LE(*max - *min, kRounds / 2) << "spread " << served[0] << "/" << served[1] << "/" << served[2];
  EXPECT_GE(*min, total / kGroups - kRounds / 2);
}

// Three families of chats, each with its own long system prompt, interleaved one request
// at a time: every family should stick to the group whose prefix cache holds its prompt.
TEST_F(RouterRealWorkers, SharedPrefixChatsLandOnOneGroupWithMeasuredHitRate) {
  const std::vector<std::string> systems = {
      "You are a concise assistant for a shipping company. Answer in one short sentence, never more, and "
      "always mention the tracking portal when a parcel is late. Be polite.",
      "You are a museum guide for the natural history wing. Describe exhibits in plain words for children "
      "aged eight to ten, and end every answer with a question for them.",
      "You are a support agent for a bicycle repair shop. Ask for the frame size and the wheel diameter "
      "before you recommend any part, and quote prices in euros only."};
  const int kPerFamily = 4;
  const auto hits_before = PerWorker(kPrefixHits);
  std::vector<std::vector<int>> landed(systems.size());
  for (int i = 0; i < kPerFamily; ++i) {
    for (size_t f = 0; f < systems.size(); ++f) {
      const auto before = PerWorker(kOk);
      StreamResult r = Call(Chat(systems[f], "Question " + std::to_string(i) + ": what should I do next?", 2));
      ASSERT_TRUE(r.status.ok()) << r.status.error_message();
      const int group = ServedBy(before);
      ASSERT_GE(group, 0) << "no worker counted the request";
      landed[f].push_back(group);
    }
  }
  int on_home_group = 0;
  for (size_t f = 0; f < systems.size(); ++f) {
    std::vector<int> per_group(kGroups);
    for (int g : landed[f]) ++per_group[g];
    on_home_group += *std::max_element(per_group.begin(), per_group.end());
  }
  const double hit_rate = static_cast<double>(on_home_group) / (systems.size() * kPerFamily);
  const auto hits_after = PerWorker(kPrefixHits);
  double cached_tokens = 0;
  for (int g = 0; g < kGroups; ++g) cached_tokens += hits_after[g] - hits_before[g];
  std::printf("prefix affinity: %.2f of requests on their family's group; %.0f prompt tokens from prefix caches\n",
              hit_rate, cached_tokens);
  RecordProperty("prefix_hit_rate", std::to_string(hit_rate));
  EXPECT_GE(hit_rate, 11.0 / 12.0);
  // The workers confirm it: later requests of a family reuse its cached prompt.
  EXPECT_GT(cached_tokens, 0);
}

TEST_F(RouterRealWorkers, InvalidApiKeyIsRejectedOverGrpcAndHttp) {
  const auto before = PerWorker(kOk);
  StreamResult wrong = Generate(*router_->stub, Prompt("Hello", 2), std::chrono::seconds(10), "Bearer sk-wrong");
  EXPECT_EQ(wrong.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(wrong.status.error_message(), "invalid API key");
  StreamResult missing = Generate(*router_->stub, Prompt("Hello", 2), std::chrono::seconds(10));
  EXPECT_EQ(missing.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(missing.status.error_message().find("missing API key"), std::string::npos);

  const std::string out = RunCommand(
      "curl -sS --max-time 10 -w '\\nHTTP %{http_code}' -H 'Authorization: Bearer sk-wrong' "
      "-H 'Content-Type: application/json' -d '{\"model\": \"\", \"prompt\": \"Hi\", \"max_tokens\": 2}' " +
      router_->http_base() + "/v1/completions 2>&1");
  const size_t status_at = out.rfind("\nHTTP ");
  ASSERT_NE(status_at, std::string::npos) << out;
  EXPECT_EQ(out.substr(status_at + 6), "401") << out;
  auto body = json::parse(out.substr(0, status_at), nullptr, false);
  ASSERT_FALSE(body.is_discarded()) << out;
  EXPECT_EQ(body["error"]["type"], "authentication_error") << out;
  EXPECT_EQ(body["error"]["code"], "invalid_api_key") << out;
  EXPECT_EQ(PerWorker(kOk), before) << "a rejected request reached a group";
}

TEST_F(RouterRealWorkers, CurlStreamsChatCompletionWithLogprobs) {
  const std::string curl = "curl -sS -N --max-time 60 -H 'Authorization: " + std::string(kBearer) +
                           "' -H 'Content-Type: application/json' ";
  const std::string body =
      R"({"model": "", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0,
          "stream": true, "logprobs": true, "top_logprobs": 2, "stream_options": {"include_usage": true}})";
  const std::string out = RunCommand(curl + "-d '" + body + "' " + router_->http_base() + "/v1/chat/completions 2>&1");
  EXPECT_NE(out.find("data: [DONE]"), std::string::npos) << out;
  std::string text;
  int chunks = 0, logprob_entries = 0, usage_completion_tokens = -1;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("data: {", 0) != 0) continue;
    auto event = json::parse(line.substr(6), nullptr, false);
    ASSERT_FALSE(event.is_discarded()) << line;
    EXPECT_EQ(event["object"], "chat.completion.chunk") << line;
    if (event.contains("usage") && !event["usage"].is_null()) {
      usage_completion_tokens = event["usage"]["completion_tokens"];
    }
    if (event["choices"].empty()) continue;
    ++chunks;
    const auto& choice = event["choices"][0];
    if (choice["delta"].contains("content")) text += choice["delta"]["content"].get<std::string>();
    for (const auto& entry : choice["logprobs"]["content"]) {
      ++logprob_entries;
      EXPECT_LE(entry["logprob"].get<double>(), 0.0) << line;
      ASSERT_EQ(entry["top_logprobs"].size(), 2u) << line;
      // The sampled token under greedy decoding is the most likely one.
      EXPECT_NEAR(entry["top_logprobs"][0]["logprob"].get<double>(), entry["logprob"].get<double>(), 1e-4) << line;
    }
  }
  EXPECT_FALSE(text.empty()) << out;
  EXPECT_GT(chunks, 1) << out;
  EXPECT_EQ(logprob_entries, usage_completion_tokens) << out;

  // Non-streaming, with the served model name from /v1/models.
  auto listed = json::parse(RunCommand(curl + router_->http_base() + "/v1/models"), nullptr, false);
  ASSERT_FALSE(listed.is_discarded());
  ASSERT_EQ(listed["data"].size(), 1u) << listed;
  const std::string name = listed["data"][0]["id"];
  const std::string completion = RunCommand(
      curl + "-d '{\"model\": \"" + name +
      "\", \"prompt\": \"The capital of France is\", \"max_tokens\": 3, \"temperature\": 0, \"logprobs\": 1}' " +
      router_->http_base() + "/v1/completions");
  auto parsed = json::parse(completion, nullptr, false);
  ASSERT_FALSE(parsed.is_discarded()) << completion;
  EXPECT_EQ(parsed["object"], "text_completion") << completion;
  EXPECT_EQ(parsed["usage"]["completion_tokens"], 3) << completion;
  EXPECT_GT(parsed["usage"]["prompt_tokens"].get<int>(), 3) << completion;
  EXPECT_EQ(parsed["choices"][0]["logprobs"]["token_logprobs"].size(), 3u) << completion;
}

// The router must pass a client's cancel on: the worker's sequence ends CANCELLED and its
// KV blocks go back to the pool (usage returns to its idle baseline).
TEST_F(RouterRealWorkers, CancellingTheClientCallCancelsUpstreamAndFreesKvBlocks) {
  ASSERT_TRUE(Eventually([] { return Streaming() < 0; }));
  const auto kv_idle = PerWorker(kKvUsage);
  const auto cancelled_before = PerWorker(kCancelled);
  grpc::ClientContext context;
  context.AddMetadata("authorization", kBearer);
  auto reader = router_->stub->Generate(&context, Prompt("Write a very long story about the sea.", 1000, true));
  v1::GenerateResponse response;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(reader->Read(&response));
  int serving = -1;
  ASSERT_TRUE(Eventually([&] { return (serving = Streaming()) >= 0; }));
  ASSERT_TRUE(Eventually([&] { return PerWorker(kKvUsage)[serving] > kv_idle[serving]; }))
      << "the streaming worker shows no KV blocks in use";
  const double kv_busy = PerWorker(kKvUsage)[serving];

  context.TryCancel();
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(Eventually([&] { return PerWorker(kCancelled)[serving] == cancelled_before[serving] + 1; }))
      << "worker " << serving << " counted no cancelled request";
  EXPECT_TRUE(Eventually([&] {
    const auto w = PerWorker(kRunning);
    return w[serving] == 0 && PerWorker(kKvUsage)[serving] == kv_idle[serving];
  })) << "KV usage stayed at " << PerWorker(kKvUsage)[serving] << " (idle " << kv_idle[serving] << ", busy "
      << kv_busy << ")";
  std::printf("cancel: worker %d KV usage %.4f while streaming, %.4f after the cancel (idle %.4f)\n", serving,
              kv_busy, PerWorker(kKvUsage)[serving], kv_idle[serving]);
}

// Last in the suite: it kills a group.
TEST_F(RouterRealWorkers, KillingAGroupMidStreamGivesUnavailableWhileNewRequestsSucceed) {
  ASSERT_TRUE(Eventually([] { return Streaming() < 0; }));
  grpc::ClientContext context;
  context.AddMetadata("authorization", kBearer);
  auto reader = router_->stub->Generate(&context, Prompt("Tell me everything about the moon.", 1000, true));
  v1::GenerateResponse response;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(reader->Read(&response));
  int serving = -1;
  ASSERT_TRUE(Eventually([&] { return (serving = Streaming()) >= 0; }));
  const std::string victim = (*workers_)[serving].address();
  (*workers_)[serving].process->Kill(SIGKILL);
  const auto killed_at = std::chrono::steady_clock::now();

  // New requests right after the kill: each succeeds, and within 2 s.
  std::vector<std::future<std::pair<StreamResult, double>>> fresh;
  for (int i = 0; i < 6; ++i) {
    fresh.push_back(std::async(std::launch::async, [i] {
      const auto start = std::chrono::steady_clock::now();
      StreamResult r = Call(Prompt(std::to_string(i) + " after the failure, say ok:", 2), std::chrono::seconds(10));
      return std::make_pair(r, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }));
  }
  int streamed = 3;
  while (reader->Read(&response)) ++streamed;
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_NE(status.error_message().find("group " + victim + " failed after streaming"), std::string::npos)
      << status.error_message();
  EXPECT_NE(status.error_message().find("the output is incomplete, retry the request"), std::string::npos)
      << status.error_message();
  double slowest = 0;
  for (auto& f : fresh) {
    auto [r, seconds] = f.get();
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_LT(seconds, 2.0);
    slowest = std::max(slowest, seconds);
  }
  const double all_done = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed_at).count();
  std::printf("failover: stream ended after %d messages; 6 new requests all succeeded, slowest %.3f s, all done "
              "%.3f s after the kill\n",
              streamed, slowest, all_done);
  // And the router took the dead group out of rotation.
  EXPECT_TRUE(Eventually([&] {
    return MetricOr(ScrapeMetrics(router_->metrics_port), "shoal_router_upstream_healthy{group=\"" + victim + "\"}",
                    -1) == 0;
  }));
}

}  // namespace
}  // namespace shoal::router
