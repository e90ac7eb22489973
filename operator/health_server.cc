#include "operator/health_server.h"

#include <httplib.h>

#include <fmt/format.h>

namespace shoal::op {

absl::StatusOr<std::pair<std::string, int>> ParseListenAddress(const std::string& addr) {
  const size_t colon = addr.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(fmt::format("listen address \"{}\" is not host:port or :port", addr));
  }
  std::string host = addr.substr(0, colon);
  if (host.empty()) host = "0.0.0.0";
  const std::string port_text = addr.substr(colon + 1);
  char* end = nullptr;
  long port = std::strtol(port_text.c_str(), &end, 10);
  if (port_text.empty() || *end != '\0' || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(fmt::format("listen address \"{}\": bad port", addr));
  }
  return std::make_pair(host, static_cast<int>(port));
}

namespace {

absl::StatusOr<int> Bind(httplib::Server* server, const std::string& addr) {
  auto parsed = ParseListenAddress(addr);
  if (!parsed.ok()) return parsed.status();
  int port = parsed->second;
  if (port == 0) {
    port = server->bind_to_any_port(parsed->first.c_str());
  } else if (!server->bind_to_port(parsed->first.c_str(), port)) {
    port = -1;
  }
  if (port < 0) return absl::UnavailableError(fmt::format("cannot listen on {}", addr));
  return port;
}

}  // namespace

absl::StatusOr<std::unique_ptr<HealthServer>> HealthServer::Start(const std::string& metrics_addr,
                                                                   const std::string& health_addr,
                                                                   std::function<bool()> ready,
                                                                   std::function<std::string()> metrics_text) {
  std::unique_ptr<HealthServer> s(new HealthServer());
  s->metrics_ = std::make_unique<httplib::Server>();
  s->health_ = std::make_unique<httplib::Server>();
  s->metrics_->Get("/metrics", [metrics_text](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_text(), "text/plain; version=0.0.4");
  });
  s->health_->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  s->health_->Get("/readyz", [ready](const httplib::Request&, httplib::Response& res) {
    const bool ok = ready();
    res.status = ok ? 200 : 503;
    res.set_content(ok ? "ok\n" : "caches not synced\n", "text/plain");
  });
  auto mp = Bind(s->metrics_.get(), metrics_addr);
  if (!mp.ok()) return mp.status();
  auto hp = Bind(s->health_.get(), health_addr);
  if (!hp.ok()) return hp.status();
  s->metrics_port_ = *mp;
  s->health_port_ = *hp;
  s->metrics_thread_ = std::thread([srv = s->metrics_.get()] { srv->listen_after_bind(); });
  s->health_thread_ = std::thread([srv = s->health_.get()] { srv->listen_after_bind(); });
  return s;
}

HealthServer::~HealthServer() {
  if (metrics_) metrics_->stop();
  if (health_) health_->stop();
  if (metrics_thread_.joinable()) metrics_thread_.join();
  if (health_thread_.joinable()) health_thread_.join();
}

}  // namespace shoal::op
