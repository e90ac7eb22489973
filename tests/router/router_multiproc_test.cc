// shoal-router as a separate process in front of separate group processes on loopback,
// every port bound to 0 and read from the "listening" lines:
//  - shoal-synthetic-worker groups, for failure timing we control (SIGKILL mid-stream,
//    SIGTERM drain, discovery from a file and DNS);
//  - real shoal-worker groups serving SmolLM2, for prefix affinity and the HTTP API
//    driven by curl.
#include <gtest/gtest.h>
#include <httplib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>

#include "grpcpp/grpcpp.h"
#include "shoal/v1/generate.grpc.pb.h"
#include "shoal/v1/worker.grpc.pb.h"
#include "tests/router/child_process.h"
#include "tests/router/router_test_support.h"

namespace shoal::router {
namespace {

using testing::ChildProcess;
using testing::Generate;
using testing::PromptRequest;
using testing::StreamResult;

std::string BinaryPath(const char* env, const char* built) {
  const char* value = std::getenv(env);
  return value != nullptr && *value != '\0' ? value : built;
}

struct Group {
  std::unique_ptr<ChildProcess> process;
  int port = -1;
  int metrics_port = -1;
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
};

Group StartSynthetic(const std::string& name, int token_interval_us, const std::string& model = "synthetic") {
  Group g;
  g.process = std::make_unique<ChildProcess>(
      name, std::vector<std::string>{SHOAL_SYNTHETIC_WORKER_BIN, "--port", "0", "--model", model,
                                     "--token-interval-us", std::to_string(token_interval_us)});
  auto line = g.process->WaitForLine("listening", std::chrono::seconds(10));
  if (line) g.port = ChildProcess::PortOf(*line, "grpc");
  return g;
}

struct Router {
  std::unique_ptr<ChildProcess> process;
  int grpc_port = -1, http_port = -1;
  std::unique_ptr<v1::Generation::Stub> stub;
};

Router StartRouter(std::vector<std::string> extra) {
  std::vector<std::string> argv = {BinaryPath("SHOAL_ROUTER_BIN", SHOAL_ROUTER_BIN), "--host", "127.0.0.1",
                                   "--port", "0", "--http-port", "0", "--metrics-port", "-1",
                                   "--health-interval-ms", "200", "--discovery-interval-ms", "200",
                                   "--shutdown-grace", "10"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  Router r;
  r.process = std::make_unique<ChildProcess>("router", argv);
  auto line = r.process->WaitForLine("listening", std::chrono::seconds(10));
  if (!line) return r;
  r.grpc_port = ChildProcess::PortOf(*line, "grpc");
  r.http_port = ChildProcess::PortOf(*line, "http");
  r.stub = v1::Generation::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(r.grpc_port), grpc::InsecureChannelCredentials()));
  return r;
}

int RunningSequences(const Group& g) {
  auto stub = v1::Worker::NewStub(grpc::CreateChannel(g.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  v1::WorkerStats stats;
  if (!stub->GetStats(&context, v1::GetStatsRequest(), &stats).ok()) return -1;
  return stats.running_sequences();
}

TEST(RouterMultiproc, KillingAGroupMidStreamGivesUnavailableWhileNewRequestsSucceed) {
  std::vector<Group> groups;
  groups.push_back(StartSynthetic("group-a", 20000));
  groups.push_back(StartSynthetic("group-b", 20000));
  for (const auto& g : groups) ASSERT_GT(g.port, 0);
  Router router = StartRouter({"--upstream", groups[0].address(), "--upstream", groups[1].address()});
  ASSERT_GT(router.grpc_port, 0);

  grpc::ClientContext context;
  auto reader = router.stub->Generate(&context, PromptRequest("long story", 100000));
  v1::GenerateResponse response;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(reader->Read(&response));
  const int serving = RunningSequences(groups[0]) == 1 ? 0 : 1;
  ASSERT_EQ(RunningSequences(groups[serving]), 1);
  groups[serving].process->Kill(SIGKILL);

  int streamed = 3;
  while (reader->Read(&response)) ++streamed;
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(status.error_message().find("group " + groups[serving].address() + " failed after streaming"),
            std::string::npos)
      << status.error_message();
  EXPECT_NE(status.error_message().find("the output is incomplete"), std::string::npos);
  EXPECT_GE(streamed, 3);

  for (int i = 0; i < 5; ++i) {
    StreamResult r = Generate(*router.stub, PromptRequest("after " + std::to_string(i), 3),
                              std::chrono::seconds(10));
    EXPECT_TRUE(r.status.ok()) << i << ": " << r.status.error_message();
    EXPECT_EQ(r.text, "t0 t1 t2 ");
  }
  EXPECT_EQ(RunningSequences(groups[1 - serving]), 0);
}

TEST(RouterMultiproc, SigtermDrainsStreamsInFlight) {
  Group group = StartSynthetic("group", 20000);
  ASSERT_GT(group.port, 0);
  Router router = StartRouter({"--upstream", group.address()});
  ASSERT_GT(router.grpc_port, 0);
  grpc::ClientContext context;
  auto reader = router.stub->Generate(&context, PromptRequest("drain me", 40));  // ~0.8 s
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  router.process->Kill(SIGTERM);
  int count = 1;
  while (reader->Read(&response)) ++count;
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(count, 40);
  auto exit = router.process->Wait(std::chrono::seconds(10));
  ASSERT_TRUE(exit.has_value());
  EXPECT_TRUE(WIFEXITED(*exit) && WEXITSTATUS(*exit) == 0);
}

TEST(RouterMultiproc, DiscoveryFollowsTheUpstreamFileAndResolvesDns) {
  Group alpha = StartSynthetic("alpha", 1000, "alpha");
  Group beta = StartSynthetic("beta", 1000, "beta");
  ASSERT_GT(alpha.port, 0);
  ASSERT_GT(beta.port, 0);
  const std::string path = ::testing::TempDir() + "/router_upstreams.txt";
  std::ofstream(path) << "# groups\n" << alpha.address() << "\n";
  Router router = StartRouter({"--upstream-file", path});
  ASSERT_GT(router.grpc_port, 0);
  EXPECT_TRUE(Generate(*router.stub, PromptRequest("x", 2, "alpha")).status.ok());
  EXPECT_EQ(Generate(*router.stub, PromptRequest("x", 2, "beta")).status.error_code(), grpc::StatusCode::NOT_FOUND);

  std::ofstream(path) << beta.address() << "\n";
  bool moved = false;
  for (int i = 0; i < 100 && !moved; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    moved = Generate(*router.stub, PromptRequest("x", 2, "beta")).status.ok();
  }
  EXPECT_TRUE(moved) << "the router never picked up the rewritten upstream file";
  EXPECT_EQ(Generate(*router.stub, PromptRequest("x", 2, "alpha")).status.error_code(), grpc::StatusCode::NOT_FOUND);

  Router by_dns = StartRouter({"--upstream-dns", "localhost:" + std::to_string(alpha.port)});
  ASSERT_GT(by_dns.grpc_port, 0);
  EXPECT_TRUE(Generate(*by_dns.stub, PromptRequest("x", 2, "alpha")).status.ok());
}

// --- Real groups: shoal-worker with SmolLM2 -------------------------------------------

std::string ModelPath() {
  const char* dir = std::getenv("SHOAL_MODELS_DIR");
  const std::string models = dir != nullptr && *dir != '\0' ? dir : std::string(std::getenv("HOME")) + "/.cache/shoal/models";
  return models + "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

Group StartWorker(const std::string& name) {
  Group g;
  g.process = std::make_unique<ChildProcess>(
      name, std::vector<std::string>{BinaryPath("SHOAL_WORKER_BIN", SHOAL_WORKER_BIN), "--model", ModelPath(),
                                     "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--threads", "1",
                                     "--kv-cache-mb", "64", "--log-level", "warn"});
  auto line = g.process->WaitForLine("listening", std::chrono::seconds(60));
  if (line) {
    g.port = ChildProcess::PortOf(*line, "grpc");
    g.metrics_port = ChildProcess::PortOf(*line, "metrics");
  }
  return g;
}

// Successful Generate calls the worker has served, from its /metrics.
int WorkerOkRequests(const Group& g) {
  httplib::Client client("127.0.0.1", g.metrics_port);
  auto res = client.Get("/metrics");
  if (!res) return -1;
  std::smatch m;
  const std::regex pattern("shoal_worker_requests_total\\{code=\"OK\"\\} ([0-9.e+]+)");
  if (!std::regex_search(res->body, m, pattern)) return 0;
  return static_cast<int>(std::stod(m[1]));
}

std::string RunCommand(const std::string& command) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  pclose(pipe);
  return out;
}

class RouterRealWorkers : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(std::filesystem::exists(ModelPath()))
        << "the default model is missing at " << ModelPath() << "; run scripts/setup.sh";
    workers_ = new std::vector<Group>();
    workers_->push_back(StartWorker("worker-a"));
    workers_->push_back(StartWorker("worker-b"));
    for (const auto& w : *workers_) ASSERT_GT(w.port, 0) << "shoal-worker did not start";
    router_ = new Router(StartRouter({"--upstream", (*workers_)[0].address(), "--upstream", (*workers_)[1].address()}));
    ASSERT_GT(router_->grpc_port, 0);
  }
  static void TearDownTestSuite() {
    delete router_;
    delete workers_;
  }
  static std::vector<Group>* workers_;
  static Router* router_;
};
std::vector<Group>* RouterRealWorkers::workers_ = nullptr;
Router* RouterRealWorkers::router_ = nullptr;

TEST_F(RouterRealWorkers, SharedPrefixChatsLandOnOneGroup) {
  const int a0 = WorkerOkRequests((*workers_)[0]), b0 = WorkerOkRequests((*workers_)[1]);
  const std::string system =
      "You are a concise assistant for a shipping company. Answer in one short sentence, never more, and "
      "always mention the tracking portal when a parcel is late. Be polite.";
  for (int i = 0; i < 4; ++i) {
    v1::GenerateRequest request;
    auto* chat = request.mutable_chat();
    auto* s = chat->add_messages();
    s->set_role("system");
    s->set_content(system);
    auto* u = chat->add_messages();
    u->set_role("user");
    u->set_content("Where is parcel number " + std::to_string(100 + i) + "?");
    request.set_max_tokens(3);
    StreamResult r = Generate(*router_->stub, request, std::chrono::seconds(60));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_FALSE(r.text.empty());
  }
  // A worker counts a request as its stream closes, just after the client saw the end.
  int a = 0, b = 0;
  for (int i = 0; i < 100 && a + b < 4; ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    a = WorkerOkRequests((*workers_)[0]) - a0;
    b = WorkerOkRequests((*workers_)[1]) - b0;
  }
  EXPECT_EQ(a + b, 4);
  EXPECT_TRUE((a == 4 && b == 0) || (a == 0 && b == 4)) << "worker-a served " << a << ", worker-b " << b;
}

TEST_F(RouterRealWorkers, CurlStreamsChatCompletionAsServerSentEvents) {
  const std::string url = "http://127.0.0.1:" + std::to_string(router_->http_port) + "/v1/chat/completions";
  const std::string body =
      R"({"model": "", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0, "stream": true})";
  const std::string out = RunCommand("curl -sS -N --max-time 60 -H 'Content-Type: application/json' -d '" + body +
                                     "' " + url + " 2>&1");
  EXPECT_NE(out.find("data: {"), std::string::npos) << out;
  EXPECT_NE(out.find("chat.completion.chunk"), std::string::npos) << out;
  EXPECT_NE(out.find("data: [DONE]"), std::string::npos) << out;
  std::string text;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("data: {", 0) != 0) continue;
    auto event = nlohmann::json::parse(line.substr(6));
    if (event["choices"].empty()) continue;
    const auto& delta = event["choices"][0]["delta"];
    if (delta.contains("content")) text += delta["content"].get<std::string>();
  }
  EXPECT_FALSE(text.empty()) << out;

  // Non-streaming, with the worker's own served model name from /v1/models.
  const std::string models = RunCommand("curl -sS --max-time 10 http://127.0.0.1:" +
                                        std::to_string(router_->http_port) + "/v1/models");
  auto listed = nlohmann::json::parse(models, nullptr, false);
  ASSERT_FALSE(listed.is_discarded()) << models;
  ASSERT_EQ(listed["data"].size(), 1u) << models;
  const std::string name = listed["data"][0]["id"];
  const std::string completion = RunCommand(
      "curl -sS --max-time 60 -H 'Content-Type: application/json' -d '{\"model\": \"" + name +
      "\", \"prompt\": \"The capital of France is\", \"max_tokens\": 3, \"temperature\": 0}' http://127.0.0.1:" +
      std::to_string(router_->http_port) + "/v1/completions");
  auto parsed = nlohmann::json::parse(completion, nullptr, false);
  ASSERT_FALSE(parsed.is_discarded()) << completion;
  EXPECT_EQ(parsed["object"], "text_completion") << completion;
  EXPECT_EQ(parsed["usage"]["completion_tokens"], 3) << completion;
  EXPECT_GT(parsed["usage"]["prompt_tokens"].get<int>(), 3) << completion;
}

}  // namespace
}  // namespace shoal::router
