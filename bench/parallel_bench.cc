// Worker groups on this machine, every rank a forked process over Gloo on loopback:
//   1. pipeline utilization: P=2 stages decoding 8 concurrent streams, with one
//      micro-batch per step (no overlap) and with several (stages overlap); a stage's
//      utilization is the time it spends computing over the step's wall time;
//   2. tensor parallel step time: T ranks vs one process on the same batch, each rank
//      with the same thread count.
// Validates first (the group's greedy tokens equal one process's), then times.
// Prints `name: value` lines and `ratio_*` lines.
#include <fmt/format.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <algorithm>
#include <fstream>
#include <functional>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "worker/common/status_macros.h"
#include "worker/kernels/cpu/thread_pool.h"
#include "worker/model/loaded_model.h"
#include "worker/parallel/group_causal_lm.h"
#include "worker/parallel/group_member.h"

namespace shoal::worker {
namespace {

using Clock = std::chrono::steady_clock;

// Wraps a rank's model and counts the seconds it computes (ForwardStage), so waiting for
// neighbours is what is left of the step.
class TimedModel final : public CausalLM {
 public:
  explicit TimedModel(std::unique_ptr<CausalLM> inner) : inner_(std::move(inner)) {}
  const ModelConfig& config() const override { return inner_->config(); }
  const ShardSpec& shard() const override { return inner_->shard(); }
  size_t KvBytesPerBlock(int b) const override { return inner_->KvBytesPerBlock(b); }
  absl::Status AllocateKvCache(int64_t n, int b) override { return inner_->AllocateKvCache(n, b); }
  absl::Status Forward(const ForwardBatch& batch, std::vector<float>* out) override { return inner_->Forward(batch, out); }
  absl::Status ForwardStage(const ForwardBatch& batch, std::span<const float> in, std::vector<float>* out) override {
    const auto t0 = Clock::now();
    absl::Status st = inner_->ForwardStage(batch, in, out);
    if (timing) busy += std::chrono::duration<double>(Clock::now() - t0).count();
    return st;
  }
  size_t WeightBytes() const override { return inner_->WeightBytes(); }
  double busy = 0;
  bool timing = false;

 private:
  std::unique_ptr<CausalLM> inner_;
};

struct Streams {
  int num = 8;
  int prompt = 32;
  int decode = 24;
  int block_size = 16;
  int blocks_per_seq() const { return (prompt + decode + block_size - 1) / block_size + 1; }
};

struct DecodeResult {
  std::vector<std::vector<int32_t>> tokens;  // generated, per stream
  double total_seconds = 0;                  // every Forward, prefill included
  double decode_seconds = 0;                 // the decode steps only
};

// Prefills `s.num` streams together, then decodes them greedily in lock-step.
absl::StatusOr<DecodeResult> Decode(CausalLM& lm, const Streams& s) {
  const int64_t vocab = lm.config().vocab_size;
  RETURN_IF_ERROR(lm.AllocateKvCache(static_cast<int64_t>(s.num) * s.blocks_per_seq(), s.block_size));
  std::vector<std::vector<int32_t>> tokens(s.num), tables(s.num);
  for (int i = 0; i < s.num; ++i) {
    for (int t = 0; t < s.prompt; ++t) tokens[i].push_back(static_cast<int32_t>((i * 131 + t * 17 + 5) % vocab));
    for (int b = 0; b < s.blocks_per_seq(); ++b) tables[i].push_back(i * s.blocks_per_seq() + b);
  }
  std::vector<float> logits;
  double decode_seconds = 0, total_seconds = 0;
  for (int step = 0; step <= s.decode; ++step) {
    ForwardBatch batch;
    for (int i = 0; i < s.num; ++i) {
      const int64_t start = step == 0 ? 0 : static_cast<int64_t>(tokens[i].size()) - 1;
      batch.seqs.push_back({std::span<const int32_t>(tokens[i]).subspan(start), start, tables[i], true});
    }
    const auto t0 = Clock::now();
    RETURN_IF_ERROR(lm.Forward(batch, &logits));
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    total_seconds += dt;
    if (step > 0) decode_seconds += dt;
    if (step == s.decode) break;
    for (int i = 0; i < s.num; ++i) {
      const float* row = logits.data() + i * vocab;
      tokens[i].push_back(static_cast<int32_t>(std::max_element(row, row + vocab) - row));
    }
  }
  for (auto& t : tokens) t.erase(t.begin(), t.begin() + s.prompt);
  return DecodeResult{tokens, total_seconds, decode_seconds};
}

struct RankReport {
  double busy = 0;   // seconds computing
  double wall = 0;   // leader: seconds of every step
  double decode = 0; // leader: seconds of the decode steps
  std::vector<std::vector<int32_t>> tokens;
};

// A port that was free a moment ago, for the rendezvous.
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const int port = ntohs(a.sin_port);
  close(fd);
  return port;
}

// Forks `world` children, child r running body(r) and exiting with its value; returns
// their pids. Flushes first, or the children would print the parent's buffered lines again.
std::vector<pid_t> ForkRanks(int world, const std::function<int(int)>& body) {
  std::vector<pid_t> pids;
  std::fflush(nullptr);
  for (int rank = 0; rank < world; ++rank) {
    const pid_t pid = fork();
    if (pid == 0) _exit(body(rank));
    pids.push_back(pid);
  }
  return pids;
}

std::string ReportPath(pid_t parent, int rank) { return fmt::format("/tmp/shoal-parallel-bench-{}-{}.txt", parent, rank); }

// Forks a group of tensor x pipeline ranks; rank 0 decodes, everyone reports busy seconds.
std::vector<RankReport> RunGroup(const LoadedModel& model, int tensor, int pipeline, int micro_batches, int threads,
                                 const Streams& s, const std::vector<int64_t>& pipeline_layers = {},
                                 int min_micro_batch_tokens = 1) {
  const int world = tensor * pipeline;
  const pid_t parent = getpid();
  const int port = FreePort();
  const std::vector<pid_t> pids = ForkRanks(world, [&](int rank) {
    GroupOptions o;
    o.rank = rank;
    o.leader_address = fmt::format("127.0.0.1:{}", port);
    o.tensor = tensor;
    o.pipeline = pipeline;
    o.micro_batches = micro_batches;
    o.min_micro_batch_tokens = min_micro_batch_tokens;
    if (pipeline > 1) o.pipeline_layers = pipeline_layers;
    o.probe_interval = std::chrono::seconds(60);
    auto member = GroupMember::Join(o, model.config.num_layers);
    if (!member.ok()) {
      std::fprintf(stderr, "rank %d: %s\n", rank, member.status().ToString().c_str());
      return 1;
    }
    ThreadPool pool(threads);
    auto local = CreateCausalLM(model, (*member)->shard(), &pool,
                                CausalLMOptions{.tensor_group = &(*member)->tensor_group()});
    if (!local.ok()) {
      std::fprintf(stderr, "rank %d: %s\n", rank, local.status().ToString().c_str());
      return 1;
    }
    auto timed = std::make_unique<TimedModel>(std::move(*local));
    TimedModel* t = timed.get();
    std::ofstream out(ReportPath(parent, rank));
    if (rank != 0) {
      t->timing = true;
      absl::Status st = FollowerLoop(**member, *t);
      out << t->busy << " 0 0\n";
      out.close();
      return st.ok() ? 0 : 1;
    }
    auto group = GroupCausalLM::Create(std::move(*member), std::move(timed));
    if (!group.ok()) return 1;
    t->timing = true;
    auto r = Decode(**group, s);
    if (!r.ok()) {
      std::fprintf(stderr, "rank 0: %s\n", r.status().ToString().c_str());
      return 1;
    }
    out << t->busy << " " << r->total_seconds << " " << r->decode_seconds << "\n";
    for (const auto& seq : r->tokens) {
      for (int32_t tok : seq) out << tok << " ";
      out << "\n";
    }
    out.close();
    group->reset();
    return 0;
  });
  std::vector<RankReport> reports(world);
  for (int r = 0; r < world; ++r) {
    int status = 0;
    waitpid(pids[r], &status, 0);
    std::ifstream in(ReportPath(parent, r));
    in >> reports[r].busy >> reports[r].wall >> reports[r].decode;
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      std::vector<int32_t> seq;
      std::istringstream ls(line);
      for (int32_t tok; ls >> tok;) seq.push_back(tok);
      reports[r].tokens.push_back(seq);
    }
    std::remove(ReportPath(parent, r).c_str());
  }
  return reports;
}

// Mean seconds of one all-reduce of `floats` f32 values over `tensor` ranks (forked,
// joined like a group), after a warm-up: the latency a tensor-parallel layer pays twice.
double AllReduceSeconds(int tensor, int64_t num_layers, int64_t floats, int iterations) {
  const int port = FreePort();
  const pid_t parent = getpid();
  const std::vector<pid_t> pids = ForkRanks(tensor, [&](int rank) {
    GroupOptions o;
    o.rank = rank;
    o.leader_address = fmt::format("127.0.0.1:{}", port);
    o.tensor = tensor;
    o.probe_interval = std::chrono::seconds(60);
    auto member = GroupMember::Join(o, num_layers);
    if (!member.ok()) return 1;
    std::vector<float> data(floats, 1.0f);
    for (int i = 0; i < 20; ++i) {
      if (!(*member)->tensor_group().AllReduceSum(data).ok()) return 1;
    }
    const auto t0 = Clock::now();
    for (int i = 0; i < iterations; ++i) {
      if (!(*member)->tensor_group().AllReduceSum(data).ok()) return 1;
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count() / iterations;
    std::ofstream(ReportPath(parent, rank)) << seconds << "\n";
    return 0;
  });
  double seconds = 0;
  for (int r = 0; r < tensor; ++r) {
    int status = 0;
    waitpid(pids[r], &status, 0);
    std::ifstream in(ReportPath(parent, r));
    double s = 0;
    in >> s;
    seconds = std::max(seconds, s);
    std::remove(ReportPath(parent, r).c_str());
  }
  return seconds;
}

int Run(int argc, char** argv) {
  std::string model_path = std::string(std::getenv("HOME")) + "/.cache/shoal/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  int threads = 1, tensor = 0, micro_batches = 4;
  std::vector<int64_t> pipeline_layers;
  int min_micro_batch_tokens = 1;
  Streams s;
  CLI::App app{"parallel-bench: pipeline utilization and tensor-parallel step time of worker groups"};
  app.add_option("--model", model_path)->capture_default_str();
  app.add_option("--threads", threads, "threads per rank")->capture_default_str();
  app.add_option("--tensor", tensor, "tensor ranks to compare with one; 0 = the smallest >1 the model's heads allow");
  app.add_option("--micro-batches", micro_batches, "micro-batches per step for the overlapped pipeline")
      ->capture_default_str();
  app.add_option("--pipeline-layers", pipeline_layers, "layers of stage 0 and 1, e.g. 17,13; default: balanced")
      ->delimiter(',');
  app.add_option("--min-micro-batch-tokens", min_micro_batch_tokens,
                 "the group's floor on tokens per micro-batch (the server's default is 16; 1 = always split)")
      ->capture_default_str();
  app.add_option("--streams", s.num)->capture_default_str();
  app.add_option("--decode", s.decode, "decode steps timed")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);

  auto model = LoadModel(model_path);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    return 1;
  }
  const ModelConfig& c = model->config;
  if (tensor == 0) {
    for (int t = 2; t <= c.num_heads; ++t) {
      if (c.num_heads % t == 0 && (c.num_kv_heads % t == 0 || t % c.num_kv_heads == 0) && c.vocab_size % t == 0 &&
          c.intermediate_size % t == 0) {
        tensor = t;
        break;
      }
    }
  }
  std::printf("model: %s\nthreads_per_rank: %d\nstreams: %d\nprompt_tokens: %d\ndecode_steps: %d\n", model_path.c_str(),
              threads, s.num, s.prompt, s.decode);

  // One process: the reference tokens and step time.
  auto one = RunGroup(*model, 1, 1, 1, threads, s);
  const double one_step = one[0].decode / s.decode;
  std::printf("tp1_pp1_decode_step_ms: %.2f\n", 1e3 * one_step);

  // 1. Pipeline P=2.
  double util[2] = {0, 0};
  const int mbs[2] = {1, micro_batches};
  for (int k = 0; k < 2; ++k) {
    auto pp = RunGroup(*model, 1, 2, mbs[k], threads, s, pipeline_layers, min_micro_batch_tokens);
    if (pp[0].tokens != one[0].tokens) {
      std::printf("validation: FAILED (pipeline 2, %d micro-batches: tokens differ from one process)\n", mbs[k]);
      return 1;
    }
    double sum = 0;
    for (int r = 0; r < 2; ++r) {
      const double u = pp[r].busy / pp[0].wall;
      std::printf("pp2_mb%d_stage%d_utilization: %.3f\n", mbs[k], r, u);
      sum += u;
    }
    util[k] = sum / 2;
    std::printf("pp2_mb%d_decode_step_ms: %.2f\npp2_mb%d_mean_utilization: %.3f\n", mbs[k], 1e3 * pp[0].decode / s.decode,
                mbs[k], util[k]);
  }
  std::printf("pp2_ideal_utilization_mb%d: %.3f\n", micro_batches,
              static_cast<double>(micro_batches) / (micro_batches + 1));
  std::printf("ratio_pp2_utilization_mb%d_vs_mb1: %.2f\n", micro_batches, util[1] / util[0]);

  // 2. Tensor parallel.
  if (tensor > 1) {
    auto tp = RunGroup(*model, tensor, 1, 1, threads, s);
    if (tp[0].tokens != one[0].tokens) {
      // Summation order differs across ranks; greedy ties may flip late in a sequence.
      size_t same = 0, total = 0;
      for (size_t i = 0; i < tp[0].tokens.size(); ++i) {
        for (size_t j = 0; j < tp[0].tokens[i].size(); ++j, ++total) same += tp[0].tokens[i][j] == one[0].tokens[i][j];
      }
      std::printf("tp%d_tokens_equal_to_one_process: %zu/%zu\n", tensor, same, total);
    } else {
      std::printf("tp%d_tokens_equal_to_one_process: all\n", tensor);
    }
    const double tp_step = tp[0].decode / s.decode;
    std::printf("tp%d_decode_step_ms: %.2f\nratio_tp%d_step_time_vs_tp1: %.2f\n", tensor, 1e3 * tp_step, tensor,
                tp_step / one_step);
    // What each of the layers' all-reduces costs at this batch ([streams, hidden] f32).
    const int64_t floats = static_cast<int64_t>(s.num) * c.hidden_size;
    const double ar = AllReduceSeconds(tensor, c.num_layers, floats, 500);
    std::printf("tp%d_allreduce_%lld_floats_us: %.1f\n", tensor, static_cast<long long>(floats), 1e6 * ar);
    std::printf("tp%d_allreduce_bus_gb_per_s: %.3f\n", tensor,
                2.0 * (tensor - 1) / tensor * floats * sizeof(float) / ar / 1e9);
    std::printf("tp%d_allreduces_per_decode_step: %lld\n", tensor, static_cast<long long>(2 * c.num_layers + 1));
  }
  std::printf("validation: ok (pipeline tokens equal one process's)\n");
  return 0;
}

}  // namespace
}  // namespace shoal::worker

int main(int argc, char** argv) { return shoal::worker::Run(argc, argv); }
