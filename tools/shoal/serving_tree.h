#pragma once
// The processes `shoal serve` runs on this machine, as a tree under the CLI: one worker
// group leader (shoal-worker) and the router (shoal-router) in front of it, each a ChildSpec. Children start in order, each healthy (grpc.health.v1 SERVING) before the
// next; SIGINT/SIGTERM to the CLI are passed on; when one child dies the rest are stopped.
#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace shoal::cli {

struct ChildSpec {
  std::string name;                // for messages: "worker", "router"
  std::vector<std::string> argv;   // argv[0] is the executable path
  std::string health_address;      // host:port answering grpc.health.v1; "" = started is ready
};

class ServingTree {
 public:
  // Blocks SIGINT, SIGTERM and SIGCHLD in the calling thread (call it before starting other
  // threads) and starts the children. A signal while waiting for health stops everything
  // and returns CANCELLED; a child that exits or stays unhealthy past `ready_timeout`
  // gives UNAVAILABLE naming it.
  static absl::StatusOr<std::unique_ptr<ServingTree>> Start(std::vector<ChildSpec> children,
                                                            std::chrono::seconds ready_timeout);
  ~ServingTree();

  // Until a signal arrives (passed on to every child) or a child exits (the others get
  // SIGTERM); then waits for all of them. Returns the exit status for the CLI: 0 after a
  // signal and a clean shutdown, else the failed child's.
  int Wait();
  // SIGTERM to every child (last started first), SIGKILL after `grace`, and reap them.
  void Stop(std::chrono::seconds grace = std::chrono::seconds(30));

 private:
  struct Child {
    ChildSpec spec;
    pid_t pid = -1;
    int exit_status = -1;  // set once reaped
  };

  ServingTree() = default;
  absl::Status Spawn(Child& child);
  absl::Status WaitHealthy(Child& child, std::chrono::seconds timeout);
  // Reaps whichever children have exited; returns the first one found, or nullptr.
  Child* ReapExited();
  bool AllReaped() const;

  std::vector<Child> children_;
  sigset_t signals_;
};

// A TCP port on 127.0.0.1 that was free a moment ago.
absl::StatusOr<int> PickFreePort();
// grpc.health.v1 Check of the whole server ("" service); true when SERVING.
bool IsServing(const std::string& address, std::chrono::milliseconds timeout);
// The directory this executable lives in (where shoal-worker is installed next to it).
std::string ExecutableDir();

}  // namespace shoal::cli
