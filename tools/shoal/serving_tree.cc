#include "tools/shoal/serving_tree.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "grpcpp/grpcpp.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"

extern char** environ;

namespace shoal::cli {
namespace {

using Clock = std::chrono::steady_clock;

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return "stopped";
}

// Waits up to `timeout` for a signal in `set`; returns it, or 0 on timeout.
int WaitSignal(const sigset_t& set, std::chrono::milliseconds timeout) {
  timespec ts{static_cast<time_t>(timeout.count() / 1000), static_cast<long>((timeout.count() % 1000) * 1000000)};
  int sig = sigtimedwait(&set, nullptr, &ts);
  return sig > 0 ? sig : 0;
}

}  // namespace

absl::StatusOr<int> PickFreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError(fmt::format("socket: {}", strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    int err = errno;
    close(fd);
    return absl::InternalError(fmt::format("cannot pick a free port: {}", strerror(err)));
  }
  close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

bool IsServing(const std::string& address, std::chrono::milliseconds timeout) {
  auto stub = grpc::health::v1::Health::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  return status.ok() && response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

std::string ExecutableDir() {
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : self.parent_path().string();
}

absl::StatusOr<std::unique_ptr<ServingTree>> ServingTree::Start(std::vector<ChildSpec> children,
                                                                std::chrono::seconds ready_timeout) {
  auto tree = std::unique_ptr<ServingTree>(new ServingTree());
  sigemptyset(&tree->signals_);
  sigaddset(&tree->signals_, SIGINT);
  sigaddset(&tree->signals_, SIGTERM);
  sigaddset(&tree->signals_, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &tree->signals_, nullptr);

  tree->children_.reserve(children.size());
  for (ChildSpec& spec : children) tree->children_.push_back(Child{std::move(spec)});
  for (Child& child : tree->children_) {
    if (absl::Status st = tree->Spawn(child); !st.ok()) {
      tree->Stop();
      return st;
    }
    if (absl::Status st = tree->WaitHealthy(child, ready_timeout); !st.ok()) {
      tree->Stop();
      return st;
    }
  }
  return tree;
}

ServingTree::~ServingTree() { Stop(); }

absl::Status ServingTree::Spawn(Child& child) {
  std::vector<char*> argv;
  for (std::string& arg : child.spec.argv) argv.push_back(arg.data());
  argv.push_back(nullptr);
  // The child starts with no signals blocked: it installs its own handling.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  int rc = posix_spawn(&child.pid, argv[0], nullptr, &attr, argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    child.pid = -1;
    return absl::NotFoundError(fmt::format("cannot start the {} ({}): {}", child.spec.name, child.spec.argv[0],
                                           strerror(rc)));
  }
  return absl::OkStatus();
}

absl::Status ServingTree::WaitHealthy(Child& child, std::chrono::seconds timeout) {
  if (child.spec.health_address.empty()) return absl::OkStatus();
  const auto deadline = Clock::now() + timeout;
  while (true) {
    if (IsServing(child.spec.health_address, std::chrono::milliseconds(500))) return absl::OkStatus();
    if (Child* dead = ReapExited()) {
      return absl::UnavailableError(fmt::format("the {} {} before it was ready (see its messages above)",
                                                dead->spec.name, DescribeExit(dead->exit_status)));
    }
    if (Clock::now() > deadline) {
      return absl::UnavailableError(fmt::format("the {} at {} was not serving after {}s", child.spec.name,
                                                child.spec.health_address, timeout.count()));
    }
    const int sig = WaitSignal(signals_, std::chrono::milliseconds(200));
    if (sig == SIGINT || sig == SIGTERM) return absl::CancelledError(fmt::format("{} while starting", strsignal(sig)));
  }
}

ServingTree::Child* ServingTree::ReapExited() {
  Child* first = nullptr;
  for (Child& c : children_) {
    if (c.pid <= 0 || c.exit_status >= 0) continue;
    int status = 0;
    if (waitpid(c.pid, &status, WNOHANG) == c.pid) {
      c.exit_status = status;
      if (first == nullptr) first = &c;
    }
  }
  return first;
}

bool ServingTree::AllReaped() const {
  for (const Child& c : children_) {
    if (c.pid > 0 && c.exit_status < 0) return false;
  }
  return true;
}

int ServingTree::Wait() {
  while (true) {
    if (Child* dead = ReapExited()) {
      std::fprintf(stderr, "shoal serve: the %s %s; stopping the others\n", dead->spec.name.c_str(),
                   DescribeExit(dead->exit_status).c_str());
      const int status = dead->exit_status;
      Stop();
      if (WIFEXITED(status)) return WEXITSTATUS(status) == 0 ? 1 : WEXITSTATUS(status);
      return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    }
    const int sig = WaitSignal(signals_, std::chrono::milliseconds(500));
    if (sig == SIGINT || sig == SIGTERM) {
      std::fprintf(stderr, "shoal serve: %s, shutting down\n", strsignal(sig));
      for (auto it = children_.rbegin(); it != children_.rend(); ++it) {
        if (it->pid > 0 && it->exit_status < 0) kill(it->pid, sig);
      }
      Stop();
      int worst = 0;
      for (const Child& c : children_) {
        if (!WIFEXITED(c.exit_status) || WEXITSTATUS(c.exit_status) != 0) worst = 1;
      }
      return worst;
    }
  }
}

void ServingTree::Stop(std::chrono::seconds grace) {
  for (auto it = children_.rbegin(); it != children_.rend(); ++it) {
    if (it->pid > 0 && it->exit_status < 0) kill(it->pid, SIGTERM);
  }
  const auto deadline = Clock::now() + grace;
  while (!AllReaped()) {
    ReapExited();
    if (AllReaped()) break;
    if (Clock::now() > deadline) {
      for (Child& c : children_) {
        if (c.pid > 0 && c.exit_status < 0) kill(c.pid, SIGKILL);
      }
      for (Child& c : children_) {
        if (c.pid > 0 && c.exit_status < 0 && waitpid(c.pid, &c.exit_status, 0) != c.pid) c.exit_status = 0;
      }
      break;
    }
    WaitSignal(signals_, std::chrono::milliseconds(100));  // SIGCHLD wakes us early
  }
}

}  // namespace shoal::cli
