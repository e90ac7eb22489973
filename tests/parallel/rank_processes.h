#pragma once
// Runs the ranks of a group as forked processes of the test binary: each child runs
// `body(rank)` and exits with its return value; the parent waits for all of them, killing
// any still running at the deadline, so a hang fails the test instead of stalling CI.
// Fork happens before the parent touches gRPC or threads, so every child starts clean.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace shoal::worker::testing {

// A port that was free a moment ago (bind to 0, read it, close).
inline int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const int port = ntohs(a.sin_port);
  close(fd);
  return port;
}

struct RankExit {
  int code = -1;        // exit status, or -1 when killed by a signal
  int signal = 0;       // the signal that ended it
  bool killed_at_deadline = false;
};

inline std::vector<pid_t> ForkRanks(int n, const std::function<int(int)>& body) {
  std::vector<pid_t> pids;
  for (int r = 0; r < n; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      const int code = body(r);
      std::fflush(nullptr);
      _exit(code);
    }
    pids.push_back(pid);
  }
  return pids;
}

inline std::vector<RankExit> WaitRanks(const std::vector<pid_t>& pids, std::chrono::seconds deadline) {
  std::vector<RankExit> out(pids.size());
  std::vector<bool> done(pids.size(), false);
  const auto end = std::chrono::steady_clock::now() + deadline;
  size_t remaining = pids.size();
  while (remaining > 0) {
    for (size_t i = 0; i < pids.size(); ++i) {
      if (done[i]) continue;
      int status = 0;
      if (waitpid(pids[i], &status, WNOHANG) == pids[i]) {
        done[i] = true;
        --remaining;
        if (WIFEXITED(status)) out[i].code = WEXITSTATUS(status);
        if (WIFSIGNALED(status)) out[i].signal = WTERMSIG(status);
      }
    }
    if (remaining == 0) break;
    if (std::chrono::steady_clock::now() > end) {
      for (size_t i = 0; i < pids.size(); ++i) {
        if (done[i]) continue;
        kill(pids[i], SIGKILL);
        int status = 0;
        waitpid(pids[i], &status, 0);
        out[i].killed_at_deadline = true;
        out[i].signal = SIGKILL;
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return out;
}

// Waits for one rank (the one that reports), then SIGKILLs and reaps the rest: for tests
// that leave a peer stopped or wedged on purpose.
inline RankExit WaitFirstKillRest(const std::vector<pid_t>& pids, std::chrono::seconds deadline) {
  RankExit first = WaitRanks({pids[0]}, deadline)[0];
  for (size_t i = 1; i < pids.size(); ++i) {
    kill(pids[i], SIGKILL);
    int status = 0;
    waitpid(pids[i], &status, 0);
  }
  return first;
}

inline std::vector<RankExit> RunRanks(int n, const std::function<int(int)>& body,
                                      std::chrono::seconds deadline = std::chrono::seconds(60)) {
  return WaitRanks(ForkRanks(n, body), deadline);
}

}  // namespace shoal::worker::testing
