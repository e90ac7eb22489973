#pragma once
// The network side of the router's view of its groups: one gRPC channel per group
// leader, discovery rounds (static list, file, DNS) that add and remove groups, and
// health rounds that ask each leader grpc.health.v1 Check, shoal.v1.Worker/GetStats and
// ListModels, feeding the answers into the Balancer. A group starts out of rotation and
// enters it on its first SERVING answer; it leaves after `unhealthy_threshold` failed
// checks in a row, or at once when a call to it fails with UNAVAILABLE (ReportFailure).
// Channels are plaintext, or TLS verified against a CA file (UpstreamTls).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
#include "router/balancer.h"
#include "router/discovery.h"
#include "router/router_metrics.h"
#include "shoal/v1/generate.grpc.pb.h"
#include "shoal/v1/worker.grpc.pb.h"

namespace shoal::router {

// One group leader and the stubs to reach it. Calls in flight hold a shared_ptr, so a
// group that leaves discovery stays reachable until they end.
struct Upstream {
  uint64_t id = 0;
  std::string endpoint;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Generation::Stub> generation;
  std::unique_ptr<v1::Worker::Stub> worker;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;
};

// TLS from the router to its groups (PEM contents, not paths). Off when root_certs_pem is
// empty; the client pair is for groups that ask for client certificates (mutual TLS).
struct UpstreamTls {
  std::string root_certs_pem;
  std::string client_cert_pem;
  std::string client_key_pem;
  // The name the groups' certificates carry, when it is not the dialled host (DNS discovery
  // dials pod IPs; their certificate names the Service).
  std::string server_name;
  bool enabled() const { return !root_certs_pem.empty(); }
};

struct UpstreamPoolOptions {
  DiscoverySources sources;
  UpstreamTls tls;
  std::chrono::milliseconds health_interval{1000};
  std::chrono::milliseconds health_timeout{1000};
  std::chrono::milliseconds discovery_interval{5000};
  int unhealthy_threshold = 2;
};

class UpstreamPool {
 public:
  UpstreamPool(UpstreamPoolOptions options, Balancer* balancer, RouterMetrics* metrics);
  ~UpstreamPool();

  // Runs the first discovery and health round (waiting up to one health timeout for the
  // answers), then keeps going on a background thread.
  void Start();
  // Stops the rounds and waits for checks in flight.
  void Stop();

  std::shared_ptr<Upstream> Find(uint64_t id) const;
  // The models the healthy groups serve, one entry per name.
  std::vector<v1::ModelInfo> Models() const;
  // A call to `id` failed in a way that says the group is down: out of rotation until a
  // health check passes again.
  void ReportFailure(uint64_t id, const std::string& reason);

 private:
  struct GroupState {
    std::shared_ptr<Upstream> upstream;
    int consecutive_failures = 0;
    bool healthy = false;
    bool check_in_flight = false;
    std::vector<v1::ModelInfo> models;
  };
  void Loop();
  void Discover();
  void CheckAll();
  void Check(std::shared_ptr<Upstream> upstream);
  void OnCheckDone(uint64_t id, bool serving, const std::string& reason);
  void FetchStatsAndModels(std::shared_ptr<Upstream> upstream);
  std::shared_ptr<Upstream> Connect(uint64_t id, const std::string& endpoint) const;
  void RpcStarted();
  void RpcDone();

  const UpstreamPoolOptions options_;
  std::shared_ptr<grpc::ChannelCredentials> credentials_;  // shared by every group's channel
  Balancer* const balancer_;
  RouterMetrics* const metrics_;

  mutable std::mutex mu_;
  std::map<uint64_t, GroupState> groups_;
  std::map<std::string, uint64_t> ids_;  // endpoint -> stable group id
  std::map<std::string, std::vector<HostPort>> last_resolved_;  // per file / DNS name
  uint64_t next_id_ = 1;

  std::mutex loop_mu_;
  std::condition_variable loop_cv_;
  bool stopping_ = false;
  std::thread thread_;
  // Health, stats and model RPCs in flight; Stop waits for them.
  std::mutex rpc_mu_;
  std::condition_variable rpc_cv_;
  int rpcs_in_flight_ = 0;
};

}  // namespace shoal::router
