#include "router/upstream_pool.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <set>

namespace shoal::router {

namespace {

std::shared_ptr<grpc::ChannelCredentials> UpstreamCredentials(const UpstreamTls& tls) {
  if (!tls.enabled()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = tls.root_certs_pem;
  ssl.pem_cert_chain = tls.client_cert_pem;
  ssl.pem_private_key = tls.client_key_pem;
  return grpc::SslCredentials(ssl);
}

}  // namespace

UpstreamPool::UpstreamPool(UpstreamPoolOptions options, Balancer* balancer, RouterMetrics* metrics)
    : options_(std::move(options)),
      credentials_(UpstreamCredentials(options_.tls)),
      balancer_(balancer),
      metrics_(metrics) {}

UpstreamPool::~UpstreamPool() { Stop(); }

std::shared_ptr<Upstream> UpstreamPool::Connect(uint64_t id, const std::string& endpoint) const {
  grpc::ChannelArguments args;
  // A restarted group should be found within about a health interval, not gRPC's default
  // backoff of up to two minutes; keepalive notices a dead peer mid-stream.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  args.SetMaxReceiveMessageSize(64 << 20);
  if (options_.tls.enabled() && !options_.tls.server_name.empty()) {
    args.SetSslTargetNameOverride(options_.tls.server_name);
  }
  auto upstream = std::make_shared<Upstream>();
  upstream->id = id;
  upstream->endpoint = endpoint;
  upstream->channel = grpc::CreateCustomChannel(endpoint, credentials_, args);
  upstream->generation = v1::Generation::NewStub(upstream->channel);
  upstream->worker = v1::Worker::NewStub(upstream->channel);
  upstream->health = grpc::health::v1::Health::NewStub(upstream->channel);
  return upstream;
}

void UpstreamPool::Start() {
  Discover();
  CheckAll();
  // Wait for the first answers so a router that starts next to ready groups routes at once.
  {
    std::unique_lock<std::mutex> lock(rpc_mu_);
    rpc_cv_.wait_for(lock, options_.health_timeout + std::chrono::milliseconds(200),
                     [&] { return rpcs_in_flight_ == 0; });
  }
  thread_ = std::thread([this] { Loop(); });
}

void UpstreamPool::Stop() {
  {
    std::lock_guard<std::mutex> lock(loop_mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  loop_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::unique_lock<std::mutex> lock(rpc_mu_);
  rpc_cv_.wait(lock, [&] { return rpcs_in_flight_ == 0; });
}

void UpstreamPool::Loop() {
  auto next_discovery = std::chrono::steady_clock::now() + options_.discovery_interval;
  auto next_check = std::chrono::steady_clock::now() + options_.health_interval;
  std::unique_lock<std::mutex> lock(loop_mu_);
  while (!stopping_) {
    // Short ticks: queued requests must expire close to their limit.
    loop_cv_.wait_for(lock, std::chrono::milliseconds(50));
    if (stopping_) break;
    lock.unlock();
    const auto now = std::chrono::steady_clock::now();
    balancer_->ExpireWaiters(now);
    metrics_->SetQueued(static_cast<double>(balancer_->queued()));
    if (now >= next_discovery) {
      Discover();
      next_discovery = now + options_.discovery_interval;
    }
    if (now >= next_check) {
      CheckAll();
      next_check = now + options_.health_interval;
    }
    lock.lock();
  }
}

void UpstreamPool::Discover() {
  std::vector<std::string> wanted;
  auto add = [&](const std::vector<HostPort>& endpoints) {
    for (const auto& e : endpoints) wanted.push_back(e.ToString());
  };
  add(options_.sources.static_upstreams);
  // A file or name that fails this round keeps its last good answer: a DNS hiccup must
  // not empty the rotation.
  auto refresh = [&](const std::string& key, absl::StatusOr<std::vector<HostPort>> result) {
    if (result.ok()) {
      last_resolved_[key] = *result;
    } else {
      spdlog::warn("discovery source={} error=\"{}\" keeping={}", key, std::string(result.status().message()),
                   last_resolved_[key].size());
    }
    add(last_resolved_[key]);
  };
  for (const auto& path : options_.sources.upstream_files) refresh("file:" + path, ReadUpstreamFile(path));
  for (const auto& name : options_.sources.dns_names) refresh("dns:" + name.ToString(), ResolveDns(name));

  std::set<std::string> wanted_set(wanted.begin(), wanted.end());
  std::vector<std::pair<uint64_t, std::string>> added, removed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& endpoint : wanted_set) {
      auto [it, inserted] = ids_.try_emplace(endpoint, next_id_);
      if (inserted) ++next_id_;
      if (groups_.count(it->second) == 0) {
        groups_[it->second].upstream = Connect(it->second, endpoint);
        added.emplace_back(it->second, endpoint);
      }
    }
    for (auto it = groups_.begin(); it != groups_.end();) {
      if (wanted_set.count(it->second.upstream->endpoint) == 0) {
        removed.emplace_back(it->first, it->second.upstream->endpoint);
        it = groups_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const auto& [id, endpoint] : added) {
    spdlog::info("upstream added group={} id={}", endpoint, id);
    balancer_->UpsertGroup(id, endpoint);
    metrics_->SetUpstreamHealthy(endpoint, false);
  }
  for (const auto& [id, endpoint] : removed) {
    spdlog::info("upstream removed group={} id={}", endpoint, id);
    balancer_->RemoveGroup(id);
    metrics_->RemoveUpstream(endpoint);
  }
}

void UpstreamPool::RpcStarted() {
  std::lock_guard<std::mutex> lock(rpc_mu_);
  ++rpcs_in_flight_;
}

void UpstreamPool::RpcDone() {
  std::lock_guard<std::mutex> lock(rpc_mu_);
  if (--rpcs_in_flight_ == 0) rpc_cv_.notify_all();
}

void UpstreamPool::CheckAll() {
  std::vector<std::shared_ptr<Upstream>> due;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, state] : groups_) {
      // A check still waiting on a slow group is not stacked with another.
      if (state.check_in_flight) continue;
      state.check_in_flight = true;
      due.push_back(state.upstream);
    }
  }
  for (auto& upstream : due) Check(upstream);
}

void UpstreamPool::Check(std::shared_ptr<Upstream> upstream) {
  struct Rpc {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
  };
  auto rpc = std::make_shared<Rpc>();
  rpc->context.set_deadline(std::chrono::system_clock::now() + options_.health_timeout);
  RpcStarted();
  upstream->health->async()->Check(
      &rpc->context, &rpc->request, &rpc->response, [this, rpc, upstream](grpc::Status status) {
        const bool serving =
            status.ok() && rpc->response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
        std::string reason;
        if (!status.ok()) {
          reason = fmt::format("{}: {}", StatusCodeName(status.error_code()), status.error_message());
        } else if (!serving) {
          reason = fmt::format("health status {}",
                               grpc::health::v1::HealthCheckResponse::ServingStatus_Name(rpc->response.status()));
        }
        OnCheckDone(upstream->id, serving, reason);
        if (serving) FetchStatsAndModels(upstream);
        RpcDone();
      });
}

void UpstreamPool::OnCheckDone(uint64_t id, bool serving, const std::string& reason) {
  bool changed = false, now_healthy = false;
  std::string endpoint;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = groups_.find(id);
    if (it == groups_.end()) return;
    GroupState& state = it->second;
    state.check_in_flight = false;
    endpoint = state.upstream->endpoint;
    if (serving) {
      state.consecutive_failures = 0;
      changed = !state.healthy;
      state.healthy = true;
    } else {
      ++state.consecutive_failures;
      if (state.healthy && state.consecutive_failures >= options_.unhealthy_threshold) {
        state.healthy = false;
        changed = true;
      }
    }
    now_healthy = state.healthy;
  }
  if (!changed) return;
  if (now_healthy) {
    spdlog::info("upstream healthy group={}", endpoint);
  } else {
    spdlog::warn("upstream unhealthy group={} reason=\"{}\"", endpoint, reason);
  }
  metrics_->SetUpstreamHealthy(endpoint, now_healthy);
  balancer_->SetHealthy(id, now_healthy);
}

void UpstreamPool::FetchStatsAndModels(std::shared_ptr<Upstream> upstream) {
  struct StatsRpc {
    grpc::ClientContext context;
    v1::GetStatsRequest request;
    v1::WorkerStats response;
  };
  auto stats = std::make_shared<StatsRpc>();
  stats->context.set_deadline(std::chrono::system_clock::now() + options_.health_timeout);
  RpcStarted();
  upstream->worker->async()->GetStats(&stats->context, &stats->request, &stats->response,
                                      [this, stats, upstream](grpc::Status status) {
                                        // A leader without shoal.v1.Worker is scored on the
                                        // router's own counts alone.
                                        if (status.ok()) balancer_->SetStats(upstream->id, stats->response);
                                        RpcDone();
                                      });
  struct ModelsRpc {
    grpc::ClientContext context;
    v1::ListModelsRequest request;
    v1::ListModelsResponse response;
  };
  auto models = std::make_shared<ModelsRpc>();
  models->context.set_deadline(std::chrono::system_clock::now() + options_.health_timeout);
  RpcStarted();
  upstream->generation->async()->ListModels(
      &models->context, &models->request, &models->response, [this, models, upstream](grpc::Status status) {
        if (status.ok()) {
          std::vector<std::string> names;
          for (const auto& m : models->response.models()) names.push_back(m.name());
          {
            std::lock_guard<std::mutex> lock(mu_);
            auto it = groups_.find(upstream->id);
            if (it != groups_.end()) {
              it->second.models.assign(models->response.models().begin(), models->response.models().end());
            }
          }
          balancer_->SetModels(upstream->id, std::move(names));
        }
        RpcDone();
      });
}

std::shared_ptr<Upstream> UpstreamPool::Find(uint64_t id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = groups_.find(id);
  return it == groups_.end() ? nullptr : it->second.upstream;
}

std::vector<v1::ModelInfo> UpstreamPool::Models() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<v1::ModelInfo> out;
  std::set<std::string> seen;
  for (const auto& [id, state] : groups_) {
    if (!state.healthy) continue;
    for (const auto& m : state.models) {
      if (seen.insert(m.name()).second) out.push_back(m);
    }
  }
  return out;
}

void UpstreamPool::ReportFailure(uint64_t id, const std::string& reason) {
  std::string endpoint;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = groups_.find(id);
    if (it == groups_.end() || !it->second.healthy) return;
    it->second.healthy = false;
    it->second.consecutive_failures = options_.unhealthy_threshold;
    endpoint = it->second.upstream->endpoint;
  }
  spdlog::warn("upstream unhealthy group={} reason=\"call failed: {}\"", endpoint, reason);
  metrics_->SetUpstreamHealthy(endpoint, false);
  balancer_->SetHealthy(id, false);
}

}  // namespace shoal::router
