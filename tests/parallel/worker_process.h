#pragma once
// shoal-worker processes for end-to-end group tests: each rank launched with the flags a
// Kubernetes pod would get as env vars, a gRPC client for the leader, health polling.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"

extern char** environ;

namespace shoal::worker::testing {

class WorkerProcess {
 public:
  WorkerProcess(std::vector<std::string> args, const std::string& log_path) {
    std::vector<std::string> argv = {SHOAL_WORKER_BINARY};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> raw;
    for (std::string& a : argv) raw.push_back(a.data());
    raw.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn(&pid_, raw[0], &fa, nullptr, raw.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
  }
  ~WorkerProcess() {
    if (!exited()) {
      kill(pid_, SIGKILL);
      kill(pid_, SIGCONT);
      Wait(std::chrono::seconds(5));
    }
  }
  pid_t pid() const { return pid_; }
  void Signal(int sig) { kill(pid_, sig); }
  bool exited() {
    if (status_) return true;
    int st = 0;
    if (waitpid(pid_, &st, WNOHANG) == pid_) status_ = st;
    return status_.has_value();
  }
  // The exit status, or nullopt if it is still running after `timeout`.
  std::optional<int> Wait(std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (!exited() && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (!status_) return std::nullopt;
    return WIFEXITED(*status_) ? WEXITSTATUS(*status_) : 128 + WTERMSIG(*status_);
  }

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
};

// SERVING, NOT_SERVING, or "unreachable".
inline std::string HealthOf(const std::string& address) {
  auto stub = grpc::health::v1::Health::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  const grpc::Status st = stub->Check(&ctx, req, &resp);
  if (!st.ok()) return "unreachable";
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? "SERVING" : "NOT_SERVING";
}

inline bool WaitServing(const std::string& address, WorkerProcess& leader, std::chrono::seconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (HealthOf(address) == "SERVING") return true;
    if (leader.exited()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

}  // namespace shoal::worker::testing
