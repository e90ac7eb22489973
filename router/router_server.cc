#include "router/router_server.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <fstream>
#include <sstream>

#include "grpcpp/health_check_service_interface.h"
#include "router/openai_http_server.h"

namespace shoal::router {
namespace {

absl::StatusOr<std::string> ReadWholeFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(fmt::format("cannot open {} {}", what, path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::string JoinHostPort(const std::string& host, int port) {
  return host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
}

}  // namespace

absl::StatusOr<std::unique_ptr<RouterServer>> RouterServer::Start(const RouterServerOptions& options) {
  auto server = std::unique_ptr<RouterServer>(new RouterServer());
  server->options_ = options;
  if (options.upstreams.sources.empty()) {
    return absl::InvalidArgumentError("no upstream groups: give --upstream, --upstream-file or --upstream-dns");
  }
  if (!options.api_key_file.empty()) {
    auto keys = ApiKeys::ReadFile(options.api_key_file);
    if (!keys.ok()) return keys.status();
    server->api_keys_ = *std::move(keys);
  }
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!options.tls_cert_file.empty() || !options.tls_key_file.empty()) {
    if (options.tls_cert_file.empty() || options.tls_key_file.empty()) {
      return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key");
    }
    auto cert = ReadWholeFile(options.tls_cert_file, "TLS certificate");
    if (!cert.ok()) return cert.status();
    auto key = ReadWholeFile(options.tls_key_file, "TLS key");
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    credentials = grpc::SslServerCredentials(ssl);
  }

  UpstreamPoolOptions upstreams = options.upstreams;
  if (!options.upstream_tls_ca_file.empty()) {
    auto ca = ReadWholeFile(options.upstream_tls_ca_file, "upstream TLS CA file");
    if (!ca.ok()) return ca.status();
    if (ca->empty()) {
      return absl::InvalidArgumentError(fmt::format("upstream TLS CA file {} is empty", options.upstream_tls_ca_file));
    }
    upstreams.tls.root_certs_pem = *std::move(ca);
    upstreams.tls.server_name = options.upstream_tls_server_name;
  }
  if (!options.upstream_tls_cert_file.empty() || !options.upstream_tls_key_file.empty()) {
    if (options.upstream_tls_ca_file.empty() || options.upstream_tls_cert_file.empty() ||
        options.upstream_tls_key_file.empty()) {
      return absl::InvalidArgumentError(
          "an upstream client certificate needs --upstream-tls-ca, --upstream-tls-cert and --upstream-tls-key");
    }
    auto cert = ReadWholeFile(options.upstream_tls_cert_file, "upstream TLS client certificate");
    if (!cert.ok()) return cert.status();
    auto key = ReadWholeFile(options.upstream_tls_key_file, "upstream TLS client key");
    if (!key.ok()) return key.status();
    upstreams.tls.client_cert_pem = *std::move(cert);
    upstreams.tls.client_key_pem = *std::move(key);
  }

  server->metrics_ = std::make_unique<RouterMetrics>();
  if (options.metrics_port >= 0) {
    auto exposer = MetricsExposer::Start(options.host, options.metrics_port, *server->metrics_);
    if (!exposer.ok()) return exposer.status();
    server->metrics_exposer_ = *std::move(exposer);
  }
  server->balancer_ = std::make_unique<Balancer>(options.balancer);
  server->pool_ = std::make_unique<UpstreamPool>(std::move(upstreams), server->balancer_.get(), server->metrics_.get());
  server->core_ = std::make_unique<RouterCore>();
  server->core_->balancer = server->balancer_.get();
  server->core_->pool = server->pool_.get();
  server->core_->metrics = server->metrics_.get();
  server->core_->api_keys = &server->api_keys_;
  server->core_->prefix = options.prefix;
  server->core_->default_completion_tokens = options.default_completion_tokens;
  server->service_ = std::make_unique<RouterService>(server->core_.get());

  grpc::EnableDefaultHealthCheckService(true);
  const std::string address = JoinHostPort(options.host, options.grpc_port);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, credentials, &server->grpc_port_);
  builder.RegisterService(server->service_.get());
  builder.SetMaxReceiveMessageSize(64 << 20);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->grpc_port_ == 0) {
    return absl::UnavailableError(fmt::format("gRPC server cannot listen on {} (port in use?)", address));
  }
  server->pool_->Start();
  // gRPC health says the router process serves; /readyz also needs a healthy group.
  server->server_->GetHealthCheckService()->SetServingStatus(true);

  if (options.http_port >= 0) {
    OpenAiHttpServerOptions http;
    http.host = options.host;
    http.port = options.http_port;
    http.max_body_bytes = options.max_http_body_bytes;
    http.tls_cert_file = options.tls_cert_file;
    http.tls_key_file = options.tls_key_file;
    RouterServer* self = server.get();
    auto started = OpenAiHttpServer::Start(http, server->InProcessChannel(), [self] { return self->Ready(); });
    if (!started.ok()) return started.status();
    server->http_ = *std::move(started);
  }
  spdlog::info("router started grpc_port={} http_port={} metrics_port={}", server->grpc_port_, server->http_port(),
               server->metrics_port());
  return server;
}

RouterServer::~RouterServer() { Shutdown(std::chrono::milliseconds(0)); }

int RouterServer::http_port() const { return http_ ? http_->port() : -1; }
int RouterServer::metrics_port() const { return metrics_exposer_ ? metrics_exposer_->port() : -1; }

bool RouterServer::Ready() const {
  return core_ != nullptr && !core_->draining.load() && balancer_->AnyHealthy();
}

std::shared_ptr<grpc::Channel> RouterServer::InProcessChannel() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  return server_->InProcessChannel(args);
}

void RouterServer::Shutdown(std::chrono::milliseconds grace) {
  if (shut_down_ || server_ == nullptr) return;
  shut_down_ = true;
  spdlog::info("router draining grace_ms={} inflight={}", grace.count(), balancer_->inflight());
  core_->draining = true;
  server_->GetHealthCheckService()->SetServingStatus(false);
  // HTTP requests ride the in-process channel, so the gRPC drain below covers them; the
  // HTTP listener stops after it so their streams can end cleanly.
  server_->Shutdown(std::chrono::system_clock::now() + grace);
  server_->Wait();
  if (http_) http_->Stop();
  // Upstream attempts of cancelled calls end shortly after their cancel.
  if (!core_->WaitForCalls(std::chrono::seconds(10))) spdlog::warn("router shutdown: calls still alive after 10 s");
  pool_->Stop();
  // civetweb's stop polls its threads: this takes up to about two seconds.
  metrics_exposer_.reset();
  spdlog::info("router stopped");
}

}  // namespace shoal::router
