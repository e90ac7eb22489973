#pragma once
// The operator's HTTP endpoints: /metrics on one address, /healthz and /readyz on
// another (the chart's probes), each a small cpp-httplib server on its own thread.
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace httplib {
class Server;
}

namespace shoal::op {

class HealthServer {
 public:
  // `addr` is "host:port" or ":port" (all interfaces); port 0 picks a free one.
  // `ready` answers /readyz; `metrics_text` renders /metrics.
  static absl::StatusOr<std::unique_ptr<HealthServer>> Start(const std::string& metrics_addr,
                                                             const std::string& health_addr,
                                                             std::function<bool()> ready,
                                                             std::function<std::string()> metrics_text);
  ~HealthServer();
  int metrics_port() const { return metrics_port_; }
  int health_port() const { return health_port_; }

 private:
  HealthServer() = default;
  std::unique_ptr<httplib::Server> metrics_;
  std::unique_ptr<httplib::Server> health_;
  std::thread metrics_thread_;
  std::thread health_thread_;
  int metrics_port_ = 0;
  int health_port_ = 0;
};

// Splits "host:port" / ":port" into host ("0.0.0.0" when empty) and port.
absl::StatusOr<std::pair<std::string, int>> ParseListenAddress(const std::string& addr);

}  // namespace shoal::op
