#pragma once
// A program run as a child process for the multi-process tests: its stderr is collected
// (and echoed with a name prefix, for failure logs), and WaitForLine finds the
// "listening ..." line Shoal's servers print once they serve, to learn the ports bound to 0.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace shoal::router::testing {

class ChildProcess {
 public:
  ChildProcess(std::string name, std::vector<std::string> argv) : name_(std::move(name)) {
    int fds[2];
    if (pipe(fds) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    if (posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    read_fd_ = fds[0];
    reader_ = std::thread([this] { ReadLoop(); });
  }
  ~ChildProcess() {
    Kill(SIGKILL);
    Wait();
    if (reader_.joinable()) reader_.join();
    if (read_fd_ >= 0) close(read_fd_);
  }

  bool started() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

  // The first stderr line containing `needle`, waiting up to `timeout`.
  std::optional<std::string> WaitForLine(const std::string& needle, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    std::optional<std::string> found;
    cv_.wait_for(lock, timeout, [&] {
      for (const auto& line : lines_) {
        if (line.find(needle) != std::string::npos) {
          found = line;
          return true;
        }
      }
      return eof_;
    });
    return found;
  }
  // The port after "<key>=host:" in a listening line.
  static int PortOf(const std::string& line, const std::string& key) {
    const size_t at = line.find(key + "=");
    if (at == std::string::npos) return -1;
    const size_t end = line.find_first_of(" \n", at);
    const std::string endpoint = line.substr(at, end == std::string::npos ? std::string::npos : end - at);
    return std::atoi(endpoint.substr(endpoint.rfind(':') + 1).c_str());
  }

  void Kill(int signal) {
    if (pid_ > 0 && !exited_) ::kill(pid_, signal);
  }
  // The exit status (as waitpid reports it), waiting up to `timeout`; nullopt if still running.
  std::optional<int> Wait(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    if (pid_ <= 0) return std::nullopt;
    if (exited_) return status_;
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (true) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        status_ = status;
        return status_;
      }
      if (std::chrono::steady_clock::now() >= end) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

 private:
  void ReadLoop() {
    std::string partial;
    char buffer[4096];
    while (true) {
      const ssize_t n = read(read_fd_, buffer, sizeof(buffer));
      if (n <= 0) break;
      partial.append(buffer, static_cast<size_t>(n));
      size_t newline;
      while ((newline = partial.find('\n')) != std::string::npos) {
        std::string line = partial.substr(0, newline);
        partial.erase(0, newline + 1);
        std::fprintf(stderr, "[%s] %s\n", name_.c_str(), line.c_str());
        std::lock_guard<std::mutex> lock(mu_);
        lines_.push_back(std::move(line));
        cv_.notify_all();
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    eof_ = true;
    cv_.notify_all();
  }

  std::string name_;
  pid_t pid_ = -1;
  int read_fd_ = -1;
  bool exited_ = false;
  int status_ = 0;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> lines_;
  bool eof_ = false;
};

}  // namespace shoal::router::testing
