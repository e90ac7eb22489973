#pragma once
// Shared by the router's multi-process tests: starting shoal-synthetic-worker, shoal-worker
// and shoal-router as child processes on loopback (ports bound to 0, read back from their
// "listening" lines), scraping a process's Prometheus /metrics, and running a shell
// command (curl) for its output.
#include <httplib.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "shoal/v1/generate.grpc.pb.h"
#include "tests/router/child_process.h"

namespace shoal::router::testing {

inline std::string BinaryPath(const char* env, const char* built) {
  const char* value = std::getenv(env);
  return value != nullptr && *value != '\0' ? value : built;
}

// One group leader process (synthetic or a real shoal-worker).
struct Group {
  std::unique_ptr<ChildProcess> process;
  int port = -1;
  int metrics_port = -1;
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
};

inline Group StartSynthetic(const std::string& name, int token_interval_us, const std::string& model = "synthetic",
                            std::vector<std::string> extra = {}) {
  Group g;
  std::vector<std::string> argv = {SHOAL_SYNTHETIC_WORKER_BIN, "--port", "0", "--model", model,
                                   "--token-interval-us", std::to_string(token_interval_us)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  g.process = std::make_unique<ChildProcess>(name, argv);
  auto line = g.process->WaitForLine("listening", std::chrono::seconds(10));
  if (line) g.port = ChildProcess::PortOf(*line, "grpc");
  return g;
}

inline std::string ModelPath() {
  const char* dir = std::getenv("SHOAL_MODELS_DIR");
  const std::string models =
      dir != nullptr && *dir != '\0' ? dir : std::string(std::getenv("HOME")) + "/.cache/shoal/models";
  return models + "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// A real shoal-worker group serving SmolLM2 on one thread.
inline Group StartWorker(const std::string& name) {
  Group g;
  g.process = std::make_unique<ChildProcess>(
      name, std::vector<std::string>{BinaryPath("SHOAL_WORKER_BIN", SHOAL_WORKER_BIN), "--model", ModelPath(),
                                     "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--threads", "1",
                                     "--kv-cache-mb", "64", "--log-level", "warn"});
  return g;
}
// Waits for a worker started by StartWorker to load its model and serve.
inline void AwaitWorker(Group& g) {
  auto line = g.process->WaitForLine("listening", std::chrono::seconds(120));
  if (line) {
    g.port = ChildProcess::PortOf(*line, "grpc");
    g.metrics_port = ChildProcess::PortOf(*line, "metrics");
  }
}

struct Router {
  std::unique_ptr<ChildProcess> process;
  int grpc_port = -1, http_port = -1, metrics_port = -1;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Generation::Stub> stub;
  std::string http_base() const { return "http://127.0.0.1:" + std::to_string(http_port); }
};

// `with_metrics` serves /metrics on a free port (else none: it takes ~2 s to stop).
inline Router StartRouter(std::vector<std::string> extra, bool with_metrics = false) {
  std::vector<std::string> argv = {BinaryPath("SHOAL_ROUTER_BIN", SHOAL_ROUTER_BIN), "--host", "127.0.0.1",
                                   "--port", "0", "--http-port", "0", "--metrics-port", with_metrics ? "0" : "-1",
                                   "--health-interval-ms", "200", "--discovery-interval-ms", "200",
                                   "--shutdown-grace", "10"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  Router r;
  r.process = std::make_unique<ChildProcess>("router", argv);
  auto line = r.process->WaitForLine("listening", std::chrono::seconds(10));
  if (!line) return r;
  r.grpc_port = ChildProcess::PortOf(*line, "grpc");
  r.http_port = ChildProcess::PortOf(*line, "http");
  r.metrics_port = ChildProcess::PortOf(*line, "metrics");
  r.channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(r.grpc_port), grpc::InsecureChannelCredentials());
  r.stub = v1::Generation::NewStub(r.channel);
  return r;
}

// A process's /metrics as "name{labels}" -> value; empty when the scrape fails.
inline std::map<std::string, double> ScrapeMetrics(int port) {
  std::map<std::string, double> out;
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(5, 0);
  auto res = client.Get("/metrics");
  if (!res || res->status != 200) return out;
  std::istringstream lines(res->body);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == std::string::npos) continue;
    out[line.substr(0, space)] = std::strtod(line.c_str() + space + 1, nullptr);
  }
  return out;
}

inline double MetricOr(const std::map<std::string, double>& metrics, const std::string& key, double fallback = 0) {
  auto it = metrics.find(key);
  return it == metrics.end() ? fallback : it->second;
}

inline std::string RunCommand(const std::string& command) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  pclose(pipe);
  return out;
}

}  // namespace shoal::router::testing
