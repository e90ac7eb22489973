// GlooCommunicator through the leader's gRPC rendezvous, with every rank a separate
// process: each collective's result is checked inside the rank (a wrong value exits
// non-zero), and a rank that never arrives fails the group by name instead of hanging.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <numeric>

#include "tests/parallel/rank_processes.h"
#include "worker/parallel/group_member.h"

namespace shoal::worker {
namespace {

using testing::RunRanks;

GroupOptions Options(int rank, int port, int tensor, int pipeline) {
  GroupOptions o;
  o.rank = rank;
  o.leader_address = fmt::format("127.0.0.1:{}", port);
  o.tensor = tensor;
  o.pipeline = pipeline;
  o.join_timeout = std::chrono::seconds(20);
  o.collective_timeout = std::chrono::seconds(10);
  return o;
}

#define CHECK_OR_EXIT(cond, code)                                              \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::fprintf(stderr, "rank check failed: %s (line %d)\n", #cond, __LINE__); \
      return code;                                                             \
    }                                                                          \
  } while (0)

int Collectives(int rank, int port) {
  auto m = GroupMember::Join(Options(rank, port, 2, 2), 4);
  if (!m.ok()) {
    std::fprintf(stderr, "rank %d join: %s\n", rank, m.status().ToString().c_str());
    return 10;
  }
  Communicator& world = (*m)->world();
  CHECK_OR_EXIT(world.size() == 4 && world.rank() == rank, 11);
  // all-reduce: sum of (rank + i)
  std::vector<float> v(1000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(rank + i);
  CHECK_OR_EXIT(world.AllReduceSum(v).ok(), 12);
  for (size_t i = 0; i < v.size(); ++i) CHECK_OR_EXIT(v[i] == static_cast<float>(6 + 4 * i), 13);
  // all-gather inside the tensor group of this stage: ranks {0,1} and {2,3}
  Communicator& tp = (*m)->tensor_group();
  CHECK_OR_EXIT(tp.size() == 2 && tp.rank() == rank % 2 && tp.group_rank(1) == (rank / 2) * 2 + 1, 14);
  std::vector<float> in = {static_cast<float>(rank), static_cast<float>(10 * rank)};
  std::vector<float> out(4);
  CHECK_OR_EXIT(tp.AllGather(in, out).ok(), 15);
  const int base = (rank / 2) * 2;
  CHECK_OR_EXIT(out[0] == base && out[1] == 10 * base && out[2] == base + 1 && out[3] == 10 * (base + 1), 16);
  // broadcast from rank 3
  std::vector<std::byte> b(77, std::byte{0});
  if (rank == 3) std::fill(b.begin(), b.end(), std::byte{42});
  CHECK_OR_EXIT(world.Broadcast(b, 3).ok(), 17);
  for (std::byte x : b) CHECK_OR_EXIT(x == std::byte{42}, 18);
  // send/recv around a ring, two tags in flight
  const int next = (rank + 1) % 4, prev = (rank + 3) % 4;
  std::vector<std::byte> s1(100, std::byte(rank)), s2(5000, std::byte(rank + 100)), r1(100), r2(5000);
  // Even ranks start both sends and receive in the opposite order: only asynchronous
  // sends make that not deadlock.
  if (rank % 2 == 0) {
    CHECK_OR_EXIT(world.SendAsync(s1, next, 1).ok() && world.SendAsync(s2, next, 2).ok(), 19);
    CHECK_OR_EXIT(world.Recv(r2, prev, 2).ok() && world.Recv(r1, prev, 1).ok(), 20);
    CHECK_OR_EXIT(world.WaitSends().ok(), 23);
  } else {
    CHECK_OR_EXIT(world.Recv(r2, prev, 2).ok() && world.Recv(r1, prev, 1).ok(), 20);
    CHECK_OR_EXIT(world.SendAsync(s1, next, 1).ok() && world.SendAsync(s2, next, 2).ok(), 19);
    CHECK_OR_EXIT(world.WaitSends().ok(), 23);
  }
  CHECK_OR_EXIT(r1[0] == std::byte(prev) && r2[4999] == std::byte(prev + 100), 21);
  CHECK_OR_EXIT(world.Barrier().ok(), 22);
  (*m)->SetStopping();
  return 0;
}

TEST(GlooCommunicator, CollectivesAcrossFourProcessesGiveExactResults) {
  const int port = testing::FreePort();
  auto exits = RunRanks(4, [&](int rank) { return Collectives(rank, port); }, std::chrono::seconds(60));
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(exits[r].code, 0) << "rank " << r << " signal " << exits[r].signal
                                << (exits[r].killed_at_deadline ? " (hung)" : "");
  }
}

// Each stage's tensor ranks tell each other their GPUs and choose the same collectives:
// stage 0's two ranks share one GPU (NCCL refuses that), stage 1's rank 3 runs on the CPU;
// both stay on Gloo, say why, and their tensor all-reduce works.
TEST(GroupRendezvous, TensorRanksChooseGlooWhenTheyShareAGpuOrHaveNone) {
  const int port = testing::FreePort();
  auto exits = RunRanks(
      4,
      [&](int rank) {
        GroupOptions o = Options(rank, port, 2, 2);
        if (rank < 2) o.gpu_identity = "node-a/0000:17:00.0";
        if (rank == 2) o.gpu_identity = "node-b/0000:17:00.0";
        auto m = GroupMember::Join(o, 4);
        if (!m.ok()) std::fprintf(stderr, "rank %d: %s\n", rank, m.status().ToString().c_str());
        CHECK_OR_EXIT(m.ok(), 60);
        const std::string& t = (*m)->tensor_transport();
        std::fprintf(stderr, "rank %d: %s\n", rank, t.c_str());
        if (rank < 2) {
          CHECK_OR_EXIT(t == "gloo: tensor ranks 0 and 1 share GPU node-a/0000:17:00.0 (NCCL needs a GPU per rank)", 61);
        } else {
          CHECK_OR_EXIT(t == "gloo: tensor rank 1 runs its shard on the CPU", 62);
        }
        CHECK_OR_EXIT(!(*m)->tensor_group().device_memory(), 63);
        std::vector<float> v(3, static_cast<float>(rank + 1));
        CHECK_OR_EXIT((*m)->tensor_group().AllReduceSum(v).ok(), 64);
        CHECK_OR_EXIT(v[0] == (rank < 2 ? 3.0f : 7.0f), 65);
        // The leader's store serves every stage's exchange: nobody leaves before all are done.
        CHECK_OR_EXIT((*m)->world().Barrier().ok(), 66);
        (*m)->SetStopping();
        return 0;
      },
      std::chrono::seconds(40));
  for (int r = 0; r < 4; ++r) EXPECT_EQ(exits[r].code, 0) << "rank " << r;
}

// Rank 2 of a 2x2 group never starts: the leader gives up after the join timeout with an
// error naming it, and the followers that did come hear the same.
TEST(GroupRendezvous, MissingRankFailsTheGroupByName) {
  const int port = testing::FreePort();
  auto exits = RunRanks(
      4,
      [&](int rank) {
        if (rank == 2) return 0;
        GroupOptions o = Options(rank, port, 2, 2);
        o.join_timeout = std::chrono::seconds(2);
        auto m = GroupMember::Join(o, 4);
        if (m.ok()) return 30;
        const std::string msg(m.status().message());
        std::fprintf(stderr, "rank %d: %s\n", rank, msg.c_str());
        if (m.status().code() != absl::StatusCode::kDeadlineExceeded) return 31;
        if (rank == 0 && msg.find("group rank 2 (pipeline stage 1, tensor rank 0)") == std::string::npos) return 32;
        return 0;
      },
      std::chrono::seconds(30));
  for (int r = 0; r < 4; ++r) EXPECT_EQ(exits[r].code, 0) << "rank " << r;
}

// A follower that gives up waiting for the others (its Join deadline passes, as when its
// pod restarts) hands its rank back: joining again later completes the group.
TEST(GroupRendezvous, RankThatGaveUpCanJoinAgain) {
  const int port = testing::FreePort();
  auto exits = RunRanks(
      3,
      [&](int rank) {
        GroupOptions o = Options(rank, port, 3, 1);
        o.join_timeout = std::chrono::seconds(rank == 0 ? 20 : 10);
        if (rank == 2) std::this_thread::sleep_for(std::chrono::seconds(6));  // past rank 1's first deadline (1 + 3 s)
        if (rank == 1) {
          GroupOptions early = o;
          early.join_timeout = std::chrono::seconds(1);
          auto first = GroupMember::Join(early, 2);
          if (first.ok()) return 50;  // rank 2 is not there yet
          std::this_thread::sleep_for(std::chrono::milliseconds(500));
        }
        auto m = GroupMember::Join(o, 2);
        if (!m.ok()) {
          std::fprintf(stderr, "rank %d: %s\n", rank, m.status().ToString().c_str());
          return 51;
        }
        std::vector<float> v(4, 1.0f);
        if (!(*m)->world().AllReduceSum(v).ok() || v[0] != 3.0f) return 52;
        (*m)->SetStopping();
        return 0;
      },
      std::chrono::seconds(40));
  for (int r = 0; r < 3; ++r) EXPECT_EQ(exits[r].code, 0) << "rank " << r;
}

// A collective whose peer is stopped (SIGSTOP) returns DEADLINE_EXCEEDED at the timeout
// instead of waiting forever; one whose peer died returns UNAVAILABLE at once. Later calls
// fail at once: the communicator stays broken.
void ExpectPeerFailure(bool peer_dies, absl::StatusCode want, double max_seconds) {
  const int port = testing::FreePort();
  auto pids = testing::ForkRanks(3, [&](int rank) {
    GroupOptions o = Options(rank, port, 3, 1);
    o.collective_timeout = std::chrono::milliseconds(1500);
    auto m = GroupMember::Join(o, 2);
    if (!m.ok()) return 40;
    std::vector<float> v(4, 1.0f);
    if (!(*m)->world().AllReduceSum(v).ok()) return 41;
    if (rank == 1) {
      if (peer_dies) _exit(0);
      raise(SIGSTOP);
    }
    const auto t0 = std::chrono::steady_clock::now();
    absl::Status st = (*m)->world().AllReduceSum(v);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rank != 0) pause();
    std::fprintf(stderr, "rank 0 after %.2fs: %s\n", s, st.ToString().c_str());
    if (st.code() != want) return 42;
    if (s > max_seconds) return 43;
    if ((*m)->world().Barrier().ok()) return 44;
    (*m)->SetStopping();
    return 0;
  });
  const testing::RankExit first = testing::WaitFirstKillRest(pids, std::chrono::seconds(30));
  EXPECT_EQ(first.code, 0) << "signal " << first.signal << (first.killed_at_deadline ? " (hung, killed)" : "");
}

TEST(GlooCommunicator, StoppedPeerTimesOut) { ExpectPeerFailure(false, absl::StatusCode::kDeadlineExceeded, 4.0); }

TEST(GlooCommunicator, DeadPeerFailsFast) { ExpectPeerFailure(true, absl::StatusCode::kUnavailable, 1.0); }

}  // namespace
}  // namespace shoal::worker
