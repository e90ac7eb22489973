// shoal-worker: one model replica's leader. Starts gRPC and /metrics first (health says
// NOT_SERVING), loads the model, turns SERVING and prints the one "listening" line that
// scripts and `shoal serve` wait for, then serves until SIGTERM/SIGINT, when it drains
// streams for --shutdown-grace seconds before cancelling what is left.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <chrono>
#include <cstdio>
#include <thread>

#include "worker/common/log.h"
#include "worker/parallel/group_flags.h"
#include "worker/parallel/group_runtime.h"
#include "worker/parallel/rendezvous_service.h"
#include "worker/server/model_runtime.h"
#include "worker/server/worker_server.h"

namespace {

int Run(int argc, char** argv) {
  using shoal::worker::ModelRuntime;
  using shoal::worker::ModelRuntimeOptions;
  using shoal::worker::WorkerServer;
  using shoal::worker::WorkerServerOptions;

  ModelRuntimeOptions runtime_options;
  runtime_options.num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  WorkerServerOptions server_options;
  int kv_cache_mb = static_cast<int>(runtime_options.engine.kv_cache_bytes >> 20);
  std::string kv_cache_dtype = "f16";
  std::string device = "cpu";
  std::string device_weight_dtype = "bf16";
  std::string fp8_gemm = "tensor-cores";
  bool no_prefix_caching = false;
  double grace_seconds = 20.0;
  std::string log_level = "info";

  CLI::App app{"shoal-worker: serves one model over gRPC shoal.v1.Generate"};
  app.add_option("--model", runtime_options.model,
                 "a .gguf file or a Hugging Face directory; empty = the default model in $SHOAL_MODELS_DIR");
  app.add_option("--served-name", runtime_options.served_name,
                 "the name clients select the model by (default: the file name, lower-cased, without quantization)");
  app.add_option("--host", server_options.host, "address to listen on")->capture_default_str();
  app.add_option("--port", server_options.port, "gRPC port; 0 = pick a free one")->capture_default_str();
  app.add_option("--metrics-port", server_options.metrics_port, "Prometheus /metrics port; 0 = pick a free one")
      ->capture_default_str();
  app.add_option("--threads", runtime_options.num_threads, "CPU threads for the model")->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--kv-cache-mb", kv_cache_mb, "KV cache budget in MiB")->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--kv-cache-dtype", kv_cache_dtype,
                 "KV cache element type: f16 (half the memory; attention computes as llama.cpp's CPU path), f32, "
                 "or bf16 (cuda only)")
      ->capture_default_str()->check(CLI::IsMember({"f16", "f32", "bf16"}));
  app.add_option("--device", device,
                 "where the model runs: cpu, or cuda (llama/qwen2; with --tensor/--pipeline each rank's shard on "
                 "its own GPU)")
      ->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--cuda-device", runtime_options.cuda_device,
                 "with --device cuda: the GPU index; -1 = the group rank modulo the visible GPUs (0 alone)")
      ->capture_default_str()->check(CLI::Range(-1, 1023));
  app.add_option("--device-weight-dtype", device_weight_dtype,
                 "with --device cuda: weights on the GPU as bf16 (speed) or f32 (exactness), whatever the file holds; "
                 "fp8: DeepSeek's FP8 matrices stay FP8 (one byte a weight), the rest bf16")
      ->capture_default_str()->check(CLI::IsMember({"bf16", "f32", "fp8"}));
  app.add_option("--fp8-gemm", fp8_gemm,
                 "with --device-weight-dtype fp8, for prompts and large batches: tensor-cores (activations quantized "
                 "to FP8 per row and 128 columns, Hopper's FP8 GEMM) or exact (weights widened to bf16)")
      ->capture_default_str()->check(CLI::IsMember({"tensor-cores", "exact"}));
  app.add_flag("--cuda-graphs", runtime_options.cuda_graphs,
               "with --device cuda: decode steps of a shape seen before replay a captured CUDA graph (a whole "
               "model alone on a GPU)");
  app.add_option("--kv-cache-memory-fraction", runtime_options.kv_cache_memory_fraction,
                 "with --device cuda: the KV cache takes this fraction of the GPU memory left free by the weights "
                 "(instead of --kv-cache-mb); 0 = use --kv-cache-mb")
      ->capture_default_str()->check(CLI::Range(0.0, 0.99));
  app.add_option("--max-num-seqs", runtime_options.engine.max_num_seqs, "running sequences at most")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--max-num-batched-tokens", runtime_options.engine.max_num_batched_tokens,
                 "tokens computed in one engine step at most")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--max-model-len", runtime_options.engine.max_model_len,
                 "context length; 0 = the model's own")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--block-size", runtime_options.engine.block_size, "tokens per KV cache block")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--max-waiting", runtime_options.engine.max_waiting,
                 "queued requests beyond this are refused with RESOURCE_EXHAUSTED")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_flag("--no-prefix-caching", no_prefix_caching, "do not reuse KV blocks of shared prompt prefixes");
  app.add_option("--shutdown-grace", grace_seconds, "seconds running streams get to finish on SIGTERM")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--log-level", log_level, "debug, info, warn or error")->capture_default_str()
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  // Multi-rank groups (worker/parallel): rank 0 serves, the others follow it.
  shoal::worker::GroupOptions group_options;
  shoal::worker::GroupFlags group_flags;
  AddGroupFlags(app, &group_options, &group_flags);
  CLI11_PARSE(app, argc, argv);
  ApplyGroupFlags(group_flags, &group_options);

  runtime_options.engine.kv_cache_bytes = static_cast<size_t>(kv_cache_mb) << 20;
  runtime_options.kv_cache_dtype = kv_cache_dtype == "f32"    ? shoal::worker::DType::kF32
                                   : kv_cache_dtype == "bf16" ? shoal::worker::DType::kBF16
                                                              : shoal::worker::DType::kF16;
  runtime_options.device = device == "cuda" ? shoal::worker::Device::kCuda : shoal::worker::Device::kCpu;
  runtime_options.device_weight_dtype =
      device_weight_dtype == "f32"   ? shoal::worker::DType::kF32
      : device_weight_dtype == "fp8" ? shoal::worker::DType::kF8E4M3
                                     : shoal::worker::DType::kBF16;
  runtime_options.fp8_gemm = fp8_gemm == "exact" ? shoal::worker::CausalLMOptions::Fp8Gemm::kExact
                                                 : shoal::worker::CausalLMOptions::Fp8Gemm::kTensorCores;
  runtime_options.engine.enable_prefix_caching = !no_prefix_caching;
  shoal::InitLogging(log_level);
  if (absl::Status st = shoal::worker::ApplyGroupEnv(&group_options); !st.ok()) {
    spdlog::error("startup failed: {}", st.ToString());
    return 1;
  }
  if (group_options.rank > 0) {
    auto path = shoal::worker::ResolveModelPath(runtime_options.model);
    if (!path.ok()) {
      spdlog::error("model load failed: {}", path.status().ToString());
      return 1;
    }
    // A follower serves no requests, only health (for its pod's readiness probe).
    const std::string health = server_options.host.find(':') != std::string::npos
                                   ? fmt::format("[{}]:{}", server_options.host, server_options.port)
                                   : fmt::format("{}:{}", server_options.host, server_options.port);
    const shoal::worker::CausalLMOptions lm_options{.kv_cache_dtype = runtime_options.kv_cache_dtype,
                                                    .device = runtime_options.device,
                                                    .device_weight_dtype = runtime_options.device_weight_dtype,
                                                    .fp8_gemm = runtime_options.fp8_gemm,
                                                    .cuda_graphs = runtime_options.cuda_graphs,
                                                    .cuda_device = runtime_options.cuda_device};
    return shoal::worker::RunFollower(group_options, *path, runtime_options.num_threads, lm_options,
                                      health, std::chrono::milliseconds(static_cast<int64_t>((grace_seconds + 10) * 1000)));
  }

  // SIGTERM/SIGINT are taken by sigwait below, never by a handler: block them before any
  // thread exists so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGUSR1);  // the group broke (raised by the group's failure callback)
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  if (group_options.grouped()) {
    runtime_options.model_factory = [&group_options](const shoal::worker::LoadedModel& model,
                                                     shoal::worker::ThreadPool* pool,
                                                     const shoal::worker::CausalLMOptions& options) {
      return shoal::worker::CreateGroupLeaderModel(group_options, model, pool, options,
                                                   [](const absl::Status&) { kill(getpid(), SIGUSR1); });
    };
  }

  // When SHOAL_LEADER_ADDR names this server's own port (as the operator sets it), the
  // group rendezvous is one more service on it; otherwise the group serves its own port.
  std::unique_ptr<shoal::worker::RendezvousService> rendezvous;
  if (group_options.grouped() && shoal::worker::LeaderPort(group_options) == server_options.port) {
    rendezvous = std::make_unique<shoal::worker::RendezvousService>();
    server_options.extra_services.push_back(rendezvous.get());
    group_options.rendezvous = rendezvous.get();
  }
  auto server = WorkerServer::Start(server_options);
  if (!server.ok()) {
    spdlog::error("startup failed: {}", server.status().ToString());
    return 1;
  }
  auto runtime = ModelRuntime::Load(runtime_options, [](std::string_view line) { spdlog::info("{}", line); });
  if (!runtime.ok()) {
    spdlog::error("model load failed: {}", runtime.status().ToString());
    (*server)->Shutdown(std::chrono::milliseconds(0));
    return 1;
  }
  (*server)->Serve(runtime->get());
  std::fprintf(stderr, "listening grpc=%s:%d metrics=%s:%d\n", server_options.host.c_str(), (*server)->port(),
               server_options.host.c_str(), (*server)->metrics_port());
  std::fflush(stderr);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  if (signal_number == SIGUSR1) {
    // The group lost a rank or a link: say NOT_SERVING at once, let the engine fail what is
    // queued or running (each with the group's UNAVAILABLE naming the lost rank), linger so
    // health checkers see the state, then exit non-zero for the whole group to restart.
    (*server)->SetServing(false);
    spdlog::error("group broken: NOT_SERVING, failing requests, exiting with status {}",
                  shoal::worker::kExitGroupFailed);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    for (int i = 0; i < 60; ++i) {
      const auto stats = (*runtime)->engine().Stats();
      if (stats.running + stats.waiting == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    (*server)->Shutdown(std::chrono::milliseconds(1000));
    std::fflush(nullptr);
    std::_Exit(shoal::worker::kExitGroupFailed);  // no teardown that could wait on a wedged peer
  }
  spdlog::info("signal={} draining", signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
  // The followers' rendezvous streams would hold the server's drain open until the grace
  // runs out: close them first (the followers wait for the STOP that comes after).
  if (rendezvous) rendezvous->SetStopping();
  (*server)->Shutdown(std::chrono::milliseconds(static_cast<int64_t>(grace_seconds * 1000)));
  // The group may have broken during the drain (its SIGUSR1 is still pending, blocked):
  // then the exit says so, and the operator restarts the whole group.
  sigset_t pending;
  sigpending(&pending);
  if (sigismember(&pending, SIGUSR1)) {
    spdlog::error("group broken while draining: exiting with status {}", shoal::worker::kExitGroupFailed);
    std::fflush(nullptr);
    std::_Exit(shoal::worker::kExitGroupFailed);
  }
  runtime->reset();
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }
