// `shoal serve`: the serving tree on this machine (see serving_tree.h), and
// `shoal serve --once "QUESTION"`: start it, ask one chat question over gRPC, print the
// streamed answer on stdout, stop it.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tools/shoal/commands.h"
#include "tools/shoal/generation_backend.h"
#include "tools/shoal/serving_tree.h"

namespace shoal::cli {
namespace {

struct ServeFlags {
  std::string model;
  std::string served_name;
  std::string host = "0.0.0.0";
  int port = 50051;
  int metrics_port = 9090;
  int http_port = 8080;
  int threads = 0;
  int kv_cache_mb = 0;
  std::string device = "cpu";
  std::string device_weight_dtype = "bf16";
  std::string fp8_gemm = "tensor-cores";
  bool cuda_graphs = false;
  double kv_cache_memory_fraction = 0;
  int max_num_seqs = 0;
  int max_model_len = 0;
  std::string log_level = "info";
  std::string worker_binary;
  std::string router_binary;
  int ready_timeout_s = 300;
  // The worker group's shape: tensor x pipeline ranks, each its own shoal-worker.
  int tensor = 1;
  int pipeline = 1;
  // --once
  std::string once;
  int max_tokens = 256;
  float temperature = 0.0f;
};

// host:port a local client dials for a server listening on `host`.
std::string DialAddress(const std::string& host, int port) {
  const std::string dial_host = (host == "0.0.0.0" || host == "::" || host.empty()) ? "127.0.0.1" : host;
  return fmt::format("{}:{}", dial_host, port);
}

// Where every rank's shard runs and how: the same for the leader and each follower (a
// group is all on the CPU or all on GPUs).
std::vector<std::string> DeviceArgs(const ServeFlags& f) {
  std::vector<std::string> a;
  if (f.device == "cpu") return a;
  a = {"--device", f.device, "--device-weight-dtype", f.device_weight_dtype, "--fp8-gemm", f.fp8_gemm};
  if (f.cuda_graphs) a.push_back("--cuda-graphs");
  return a;
}

// The worker group: today one shoal-worker process (rank 0 of a 1x1 group). It listens on
// loopback only: clients reach it through the router.
ChildSpec WorkerChild(const ServeFlags& f, int port, int metrics_port) {
  ChildSpec c;
  c.name = "worker";
  c.argv = {f.worker_binary.empty() ? ExecutableDir() + "/shoal-worker" : f.worker_binary,
            "--host", "127.0.0.1", "--port", std::to_string(port), "--metrics-port", std::to_string(metrics_port),
            "--log-level", f.log_level};
  if (!f.model.empty()) c.argv.insert(c.argv.end(), {"--model", f.model});
  if (!f.served_name.empty()) c.argv.insert(c.argv.end(), {"--served-name", f.served_name});
  if (f.threads > 0) c.argv.insert(c.argv.end(), {"--threads", std::to_string(f.threads)});
  if (f.kv_cache_mb > 0) c.argv.insert(c.argv.end(), {"--kv-cache-mb", std::to_string(f.kv_cache_mb)});
  const std::vector<std::string> device = DeviceArgs(f);
  c.argv.insert(c.argv.end(), device.begin(), device.end());
  if (f.kv_cache_memory_fraction > 0) {
    c.argv.insert(c.argv.end(), {"--kv-cache-memory-fraction", fmt::format("{}", f.kv_cache_memory_fraction)});
  }
  if (f.max_num_seqs > 0) c.argv.insert(c.argv.end(), {"--max-num-seqs", std::to_string(f.max_num_seqs)});
  if (f.max_model_len > 0) c.argv.insert(c.argv.end(), {"--max-model-len", std::to_string(f.max_model_len)});
  c.health_address = DialAddress("127.0.0.1", port);
  return c;
}

// A multi-rank group: the leader gets the shape and serves the rendezvous on
// `rendezvous_port`; each follower (rank 1..W-1) is a shoal-worker that only dials it.
// Followers start first and report no health of their own: the leader turns SERVING only
// once every rank has joined.
std::vector<ChildSpec> GroupChildren(const ServeFlags& f, int port, int metrics_port, int rendezvous_port) {
  const int world = f.tensor * f.pipeline;
  const std::string leader_addr = fmt::format("127.0.0.1:{}", rendezvous_port);
  // Ranks share the machine's cores unless told otherwise.
  const int threads = f.threads > 0 ? f.threads
                                    : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / world);
  ServeFlags per_rank = f;
  per_rank.threads = threads;
  std::vector<ChildSpec> children;
  for (int r = 1; r < world; ++r) {
    ChildSpec c;
    c.name = fmt::format("worker rank {}", r);
    c.argv = {f.worker_binary.empty() ? ExecutableDir() + "/shoal-worker" : f.worker_binary,
              "--rank", std::to_string(r), "--world-size", std::to_string(world), "--leader-addr", leader_addr,
              "--group-host", "127.0.0.1", "--threads", std::to_string(threads), "--log-level", f.log_level,
              "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1"};  // health only, on any free port
    if (!f.model.empty()) c.argv.insert(c.argv.end(), {"--model", f.model});
    const std::vector<std::string> device = DeviceArgs(f);
    c.argv.insert(c.argv.end(), device.begin(), device.end());
    children.push_back(std::move(c));
  }
  ChildSpec leader = WorkerChild(per_rank, port, metrics_port);
  leader.name = "worker rank 0 (leader)";
  leader.argv.insert(leader.argv.end(), {"--tensor", std::to_string(f.tensor), "--pipeline", std::to_string(f.pipeline),
                                         "--leader-addr", leader_addr, "--group-host", "127.0.0.1"});
  children.push_back(std::move(leader));
  return children;
}

// The front door on the public ports: gRPC, OpenAI-compatible HTTP and metrics, in front of
// the worker group at `upstream`.
ChildSpec RouterChild(const ServeFlags& f, int port, int http_port, int metrics_port, const std::string& upstream) {
  ChildSpec c;
  c.name = "router";
  c.argv = {f.router_binary.empty() ? ExecutableDir() + "/shoal-router" : f.router_binary,
            "--host", f.host, "--port", std::to_string(port), "--http-port", std::to_string(http_port),
            "--metrics-port", std::to_string(metrics_port), "--upstream", upstream,
            "--health-interval-ms", "500", "--log-level", f.log_level};
  c.health_address = DialAddress(f.host, port);
  return c;
}

int RunServe(ServeFlags f) {
  const bool once = !f.once.empty();
  int port = f.port;
  int metrics_port = f.metrics_port;
  int http_port = f.http_port;
  if (once) {
    // A one-shot tree must not collide with a server already running on the defaults.
    f.host = "127.0.0.1";
    if (f.log_level == "info") f.log_level = "warn";
    if (port == 50051) port = 0;
    if (metrics_port == 9090) metrics_port = 0;
    if (http_port == 8080) http_port = -1;
  }
  // The worker's own ports are internal: always free ones on loopback.
  int worker_port = 0, worker_metrics_port = 0;
  for (int* p : {&port, &http_port, &worker_port, &worker_metrics_port}) {
    if (*p != 0) continue;
    auto picked = PickFreePort();
    if (!picked.ok()) {
      std::fprintf(stderr, "shoal serve: %s\n", picked.status().ToString().c_str());
      return 1;
    }
    *p = *picked;
  }
  std::vector<ChildSpec> children;
  if (f.tensor * f.pipeline > 1) {
    // The rendezvous is one more service on the leader's own gRPC port, as in Kubernetes.
    children = GroupChildren(f, worker_port, worker_metrics_port, worker_port);
    std::fprintf(stderr, "shoal serve: starting a worker group of %d ranks (tensor %d x pipeline %d)\n",
                 f.tensor * f.pipeline, f.tensor, f.pipeline);
  } else {
    children.push_back(WorkerChild(f, worker_port, worker_metrics_port));
  }
  children.push_back(RouterChild(f, port, http_port, metrics_port, children.back().health_address));
  const std::string endpoint = children.back().health_address;
  std::fprintf(stderr, "shoal serve: starting the worker (%s) and the router (%s)\n", children[0].argv[0].c_str(),
               children.back().argv[0].c_str());
  auto tree = ServingTree::Start(std::move(children), std::chrono::seconds(f.ready_timeout_s));
  if (!tree.ok()) {
    std::fprintf(stderr, "shoal serve: %s\n", tree.status().ToString().c_str());
    return tree.status().code() == absl::StatusCode::kCancelled ? 130 : 1;
  }

  if (!once) {
    std::printf("grpc=%s\n", endpoint.c_str());
    if (http_port > 0) std::printf("http=%s\n", DialAddress(f.host, http_port).c_str());
    std::fflush(stdout);
    std::fprintf(stderr, "shoal serve: ready; try: shoal generate --server %s --prompt \"Hello\"; Ctrl-C stops\n",
                 endpoint.c_str());
    return (*tree)->Wait();
  }

  v1::GenerateRequest request;
  v1::ChatMessage* message = request.mutable_chat()->add_messages();
  message->set_role("user");
  message->set_content(f.once);
  request.set_max_tokens(f.max_tokens);
  request.mutable_sampling()->set_temperature(f.temperature);
  std::string answer;
  absl::Status status = ConnectRemoteBackend(endpoint)->Generate(request, [&](const v1::GenerateResponse& r) {
    std::fwrite(r.text().data(), 1, r.text().size(), stdout);
    std::fflush(stdout);
    answer += r.text();
  });
  if (!answer.empty() && answer.back() != '\n') std::fputc('\n', stdout);
  std::fflush(stdout);
  (*tree)->Stop();
  if (!status.ok()) {
    std::fprintf(stderr, "shoal serve --once: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace

void AddServeCommand(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<ServeFlags>();
  CLI::App* cmd = app.add_subcommand("serve", "run the serving tree (router + one worker group) on this machine");
  cmd->add_option("--model", f->model, "a .gguf file or Hugging Face directory; empty = the default model");
  cmd->add_option("--served-name", f->served_name, "the name clients select the model by");
  cmd->add_option("--host", f->host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", f->port, "gRPC port; 0 = pick a free one")->capture_default_str();
  cmd->add_option("--http-port", f->http_port, "OpenAI-compatible HTTP port; 0 = pick a free one, -1 = off")
      ->capture_default_str();
  cmd->add_option("--metrics-port", f->metrics_port, "the router's Prometheus /metrics port; 0 = pick a free one")
      ->capture_default_str();
  cmd->add_option("--threads", f->threads, "CPU threads for the model; 0 = one per core");
  cmd->add_option("--kv-cache-mb", f->kv_cache_mb, "KV cache budget in MiB; 0 = the worker's default");
  cmd->add_option("--device", f->device,
                  "where the model runs: cpu, or cuda (llama/qwen2/DeepSeek; a group's ranks spread over the visible GPUs)")
      ->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--device-weight-dtype", f->device_weight_dtype,
                  "with --device cuda: bf16, f32, or fp8 (DeepSeek's FP8 matrices stay FP8)")
      ->capture_default_str()->check(CLI::IsMember({"bf16", "f32", "fp8"}));
  cmd->add_option("--fp8-gemm", f->fp8_gemm,
                  "with --device-weight-dtype fp8: tensor-cores (FP8 activations, Hopper's FP8 GEMM) or exact")
      ->capture_default_str()->check(CLI::IsMember({"tensor-cores", "exact"}));
  cmd->add_flag("--cuda-graphs", f->cuda_graphs, "with --device cuda: decode steps replay captured CUDA graphs");
  cmd->add_option("--kv-cache-memory-fraction", f->kv_cache_memory_fraction,
                  "with --device cuda: KV cache = this fraction of the GPU memory the weights leave free")
      ->check(CLI::Range(0.0, 0.99));
  cmd->add_option("--max-num-seqs", f->max_num_seqs, "running sequences at most; 0 = the worker's default");
  cmd->add_option("--max-model-len", f->max_model_len, "context length; 0 = the model's own");
  cmd->add_option("--log-level", f->log_level, "the children's log level")->capture_default_str();
  cmd->add_option("--worker-binary", f->worker_binary, "shoal-worker to run (default: next to shoal)");
  cmd->add_option("--router-binary", f->router_binary, "shoal-router to run (default: next to shoal)");
  cmd->add_option("--ready-timeout", f->ready_timeout_s, "seconds to wait for the tree to be healthy")
      ->capture_default_str();
  cmd->add_option("--tensor", f->tensor, "tensor parallel ranks of the worker group (one process each)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--pipeline", f->pipeline, "pipeline stages of the worker group (one process each)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--once", f->once, "ask this one question as a chat message, print the answer, stop");
  cmd->add_option("--max-tokens", f->max_tokens, "answer length limit with --once")->capture_default_str();
  cmd->add_option("--temperature", f->temperature, "sampling temperature with --once; 0 = greedy")
      ->capture_default_str();
  cmd->callback([f, exit_code] { *exit_code = RunServe(*f); });
}

}  // namespace shoal::cli
