// Whole groups of shoal-worker processes on loopback, configured the way the operator
// configures pods (SHOAL_* env vars for the followers, flags for the leader), with the real
// SmolLM2 GGUF: a pipeline group answers Generate with exactly the tokens one process
// gives; a stopped rank turns the leader NOT_SERVING within the probe interval; a rank
// killed mid-generation ends the client's stream with UNAVAILABLE naming it, and the
// leader exits non-zero instead of hanging.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <memory>

#include "shoal/v1/generate.grpc.pb.h"
#include "tests/parallel/rank_processes.h"
#include "tests/parallel/worker_process.h"

namespace shoal::worker {
namespace {

using testing::FreePort;
using testing::HealthOf;
using testing::WorkerProcess;
using Clock = std::chrono::steady_clock;

std::string ModelPath() {
  const char* d = std::getenv("SHOAL_MODELS_DIR");
  return (d ? std::string(d) : std::string(std::getenv("HOME")) + "/.cache/shoal/models") +
         "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

std::string LogPath(const std::string& name) {
  return fmt::format("{}/shoal-group-{}-{}.log", std::filesystem::temp_directory_path().string(), getpid(), name);
}

// A group of `pipeline` stages of one tensor rank each, configured as the operator does:
// the rendezvous is the leader's own serving port, the followers get the SHOAL_* env vars
// and answer health on a port of their own.
struct Group {
  int port = FreePort();
  int rendezvous = port;
  std::unique_ptr<WorkerProcess> leader;
  std::vector<std::unique_ptr<WorkerProcess>> followers;
  std::string address() const { return fmt::format("127.0.0.1:{}", port); }

  Group(int pipeline, int probe_interval_ms, const std::string& name) {
    leader = std::make_unique<WorkerProcess>(
        std::vector<std::string>{"--model", ModelPath(), "--host", "127.0.0.1", "--port", std::to_string(port),
                                 "--metrics-port", "-1", "--threads", "1", "--kv-cache-mb", "32", "--pipeline",
                                 std::to_string(pipeline), "--leader-addr", fmt::format("127.0.0.1:{}", rendezvous),
                                 "--probe-interval-ms", std::to_string(probe_interval_ms), "--collective-timeout-ms",
                                 "5000"},
        LogPath(name + "-rank0"));
    for (int r = 1; r < pipeline; ++r) {
      setenv("SHOAL_POD_RANK", std::to_string(r).c_str(), 1);
      setenv("SHOAL_PODS_PER_GROUP", std::to_string(pipeline).c_str(), 1);
      setenv("SHOAL_LEADER_ADDR", fmt::format("127.0.0.1:{}", rendezvous).c_str(), 1);
      followers.push_back(std::make_unique<WorkerProcess>(
          std::vector<std::string>{"--model", ModelPath(), "--threads", "1", "--host", "127.0.0.1", "--port",
                                   std::to_string(FreePort()), "--metrics-port", "-1"},
          LogPath(fmt::format("{}-rank{}", name, r))));
      unsetenv("SHOAL_POD_RANK");
      unsetenv("SHOAL_PODS_PER_GROUP");
      unsetenv("SHOAL_LEADER_ADDR");
    }
  }
};

v1::GenerateRequest Request(int max_tokens) {
  v1::GenerateRequest req;
  req.set_prompt("The three primary colors are");
  req.set_max_tokens(max_tokens);
  req.mutable_sampling()->set_temperature(0.0f);
  req.mutable_stop()->set_ignore_eos(true);
  return req;
}

struct StreamResult {
  std::vector<int32_t> tokens;
  grpc::Status status;
  double seconds_after_first_token = 0;
};

// Streams one request; `after_first` runs when the first token arrives.
StreamResult Generate(const std::string& address, const v1::GenerateRequest& req,
                      const std::function<void()>& after_first = {}) {
  auto stub = v1::Generation::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto reader = stub->Generate(&ctx, req);
  StreamResult out;
  v1::GenerateResponse resp;
  Clock::time_point first{};
  while (reader->Read(&resp)) {
    if (out.tokens.empty() && resp.token_ids_size() > 0) {
      first = Clock::now();
      if (after_first) after_first();
    }
    out.tokens.insert(out.tokens.end(), resp.token_ids().begin(), resp.token_ids().end());
  }
  out.status = reader->Finish();
  if (first != Clock::time_point{}) {
    out.seconds_after_first_token = std::chrono::duration<double>(Clock::now() - first).count();
  }
  return out;
}

TEST(GroupServer, PipelineGroupGeneratesTheTokensOfOneProcess) {
  ASSERT_TRUE(std::filesystem::exists(ModelPath())) << ModelPath() << " is missing: run scripts/setup.sh";
  std::vector<int32_t> single_tokens;
  {
    const int port = FreePort();
    WorkerProcess single({"--model", ModelPath(), "--host", "127.0.0.1", "--port", std::to_string(port),
                          "--metrics-port", "-1", "--threads", "1", "--kv-cache-mb", "32"},
                         LogPath("single"));
    ASSERT_TRUE(testing::WaitServing(fmt::format("127.0.0.1:{}", port), single, std::chrono::seconds(60)));
    StreamResult r = Generate(fmt::format("127.0.0.1:{}", port), Request(24));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    single_tokens = r.tokens;
    single.Signal(SIGTERM);
    EXPECT_EQ(single.Wait(std::chrono::seconds(20)), 0);
  }
  Group g(2, 2000, "pp2");
  ASSERT_TRUE(testing::WaitServing(g.address(), *g.leader, std::chrono::seconds(60))) << LogPath("pp2-rank0");
  StreamResult r = Generate(g.address(), Request(24));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.tokens, single_tokens);
  ASSERT_EQ(r.tokens.size(), 24u);
  // A clean SIGTERM stops the followers too, all with status 0.
  g.leader->Signal(SIGTERM);
  EXPECT_EQ(g.leader->Wait(std::chrono::seconds(20)), 0);
  EXPECT_EQ(g.followers[0]->Wait(std::chrono::seconds(10)), 0);
}

TEST(GroupServer, StoppedRankTurnsLeaderNotServingWithinTheProbeInterval) {
  ASSERT_TRUE(std::filesystem::exists(ModelPath())) << ModelPath() << " is missing: run scripts/setup.sh";
  constexpr int kProbeMs = 1000;
  Group g(2, kProbeMs, "stop");
  ASSERT_TRUE(testing::WaitServing(g.address(), *g.leader, std::chrono::seconds(60))) << LogPath("stop-rank0");
  std::this_thread::sleep_for(std::chrono::milliseconds(3 * kProbeMs));  // probes pass while all are alive
  ASSERT_EQ(HealthOf(g.address()), "SERVING");
  g.followers[0]->Signal(SIGSTOP);
  const auto t0 = Clock::now();
  std::string health = "SERVING";
  while (health == "SERVING" && Clock::now() - t0 < std::chrono::seconds(10)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    health = HealthOf(g.address());
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("NOT_SERVING %.2fs after SIGSTOP (probe interval %d ms)\n", seconds, kProbeMs);
  EXPECT_EQ(health, "NOT_SERVING");
  // At most one interval until the next probe plus one interval of probe timeout, and slack
  // for a loaded CI machine.
  EXPECT_LT(seconds, 2.0 * kProbeMs / 1000 + 1.5);
  const auto code = g.leader->Wait(std::chrono::seconds(10));
  ASSERT_TRUE(code.has_value()) << "leader still running after the group broke";
  EXPECT_EQ(*code, 3);
}

TEST(GroupServer, KilledRankMidGenerationFailsTheStreamNamingIt) {
  ASSERT_TRUE(std::filesystem::exists(ModelPath())) << ModelPath() << " is missing: run scripts/setup.sh";
  Group g(2, 2000, "kill");
  ASSERT_TRUE(testing::WaitServing(g.address(), *g.leader, std::chrono::seconds(60))) << LogPath("kill-rank0");
  StreamResult r = Generate(g.address(), Request(400), [&] { g.followers[0]->Signal(SIGKILL); });
  std::printf("stream ended %.2fs after the kill: %d %s\n", r.seconds_after_first_token, r.status.error_code(),
              r.status.error_message().c_str());
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(r.status.error_message().find("group rank 1"), std::string::npos) << r.status.error_message();
  EXPECT_LT(r.seconds_after_first_token, 10.0);
  EXPECT_LT(r.tokens.size(), 400u);
  const auto code = g.leader->Wait(std::chrono::seconds(10));
  ASSERT_TRUE(code.has_value()) << "leader still running after losing a rank";
  EXPECT_NE(*code, 0);
}

}  // namespace
}  // namespace shoal::worker
