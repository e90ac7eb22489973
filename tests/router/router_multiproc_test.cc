// shoal-router as a separate process in front of shoal-synthetic-worker groups (separate
// processes on loopback, every port bound to 0 and read from the "listening" lines), for
// failure timing we control: SIGKILL mid-stream, SIGTERM drain, discovery from a file and
// DNS, TLS to the groups. The same behaviours against real SmolLM2 groups are in
// router_real_workers_test.cc.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>

#include "grpcpp/grpcpp.h"
#include "shoal/v1/generate.grpc.pb.h"
#include "shoal/v1/worker.grpc.pb.h"
#include "tests/router/child_process.h"
#include "tests/router/multiproc_support.h"
#include "tests/router/router_test_support.h"

namespace shoal::router {
namespace {

using testing::ChildProcess;
using testing::Generate;
using testing::Group;
using testing::PromptRequest;
using testing::Router;
using testing::StartRouter;
using testing::StartSynthetic;
using testing::StreamResult;

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

TEST(RouterMultiproc, UpstreamTlsWithACaFile) {
  const std::string dir = ::testing::TempDir();
  const std::string cert = dir + "/multiproc_upstream_cert.pem", key = dir + "/multiproc_upstream_key.pem";
  ASSERT_EQ(std::system(("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                         "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " + key + " -out " + cert +
                         " > /dev/null 2>&1").c_str()),
            0)
      << "openssl could not make a test certificate";
  Group group = StartSynthetic("tls-group", 1000, "synthetic", {"--tls-cert", cert, "--tls-key", key});
  ASSERT_GT(group.port, 0);
  Router router = StartRouter({"--upstream", group.address(), "--upstream-tls-ca", cert});
  ASSERT_GT(router.grpc_port, 0);
  StreamResult r = Generate(*router.stub, PromptRequest("over tls", 3), std::chrono::seconds(10));
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, "t0 t1 t2 ");

  // Without the CA the router cannot verify the group, so it never serves from it.
  Router plaintext = StartRouter({"--upstream", group.address()});
  ASSERT_GT(plaintext.grpc_port, 0);
  EXPECT_EQ(Generate(*plaintext.stub, PromptRequest("x", 1), std::chrono::seconds(5)).status.error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace shoal::router
