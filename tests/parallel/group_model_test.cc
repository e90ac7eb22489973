// Compiled twice: as parallel_test (label multiproc) every rank runs on the CPU; with
// SHOAL_GROUP_TEST_CUDA as cuda_group_test (label cuda) every rank's shard runs on a GPU
// (rank modulo the visible GPUs; ranks sharing one all-reduce over Gloo in host memory),
// with f32 weights, against the same one-process CPU run. The parent never touches CUDA
// before it forks: a child that inherits an initialized CUDA context cannot use it.
//
// Tensor and pipeline parallel llama, qwen2 and DeepSeek (V2, V2-Lite, V3: MLA heads,
// shared-expert and dense features split, routed experts partitioned over the tensor
// ranks) against one process and against Hugging Face transformers: every rank is a
// forked process joined through the leader's rendezvous,
// the leader drives a GroupCausalLM with three sequences batched together (one prefilled
// in chunks), and the parent compares the tokens and logits it reports with a
// single-process run of the same model and with the fixture's recorded logits. Each
// rank's resident weight bytes are checked against its share of the file's tensors.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <fstream>
#include <regex>

#include "tests/models/greedy_driver.h"
#include "tests/parallel/rank_processes.h"
#include "worker/kernels/cpu/thread_pool.h"
#include "worker/model/loaded_model.h"
#include "worker/parallel/group_causal_lm.h"

namespace shoal::worker {
namespace {

using testing::RelativeError;
using testing::RunGreedy;
using testing::SequenceRun;

constexpr int kBlockSize = 4;
constexpr int kBlocksPerSeq = 16;

struct Case {
  std::string fixture;
  int tensor;
  int pipeline;
};

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  std::string f = info.param.fixture;
  for (char& c : f) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return fmt::format("{}_tp{}_pp{}", f, info.param.tensor, info.param.pipeline);
}

std::vector<SequenceRun> Runs(const std::vector<int32_t>& prompt, int num_new) {
  std::vector<SequenceRun> runs(3);
  runs[0].prompt = prompt;
  runs[0].num_new = num_new;
  runs[1].prompt = {5, 9, 200, 17, 33, 8, 100, 3, 77, 41, 12};
  runs[1].chunk_sizes = {4};
  runs[1].num_new = 9;
  runs[2].prompt = {250, 1, 2, 3};
  runs[2].chunk_sizes = {3, 1};
  runs[2].num_new = 14;
  return runs;
}

class GroupModel : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    testing::OracleExpectation e;
    std::string error;
    ASSERT_TRUE(testing::ReadOracleExpectation(GetParam().fixture, &e, &error)) << error;
    dir_ = e.dir;
    prompt_ = e.prompt;
    want_logits_ = e.last_logits();
    want_greedy_ = e.greedy;
    auto model = LoadModel(dir_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
  }

  std::string ResultPath(int rank) const { return fmt::format("/tmp/shoal-group-model-{}-{}.json", parent_pid_, rank); }

  // One rank's whole life; the leader writes what it generated, every rank its weights.
  int RankMain(int rank, int port) {
    const Case c = GetParam();
    GroupOptions o;
    o.rank = rank;
    o.leader_address = fmt::format("127.0.0.1:{}", port);
    o.tensor = c.tensor;
    o.pipeline = c.pipeline;
    o.micro_batches = 2;
    o.min_micro_batch_tokens = 1;  // split even one-token decode steps: the pipeline path under test
    o.join_timeout = std::chrono::seconds(30);
    o.collective_timeout = std::chrono::seconds(30);
    auto member = GroupMember::Join(o, model_.config.num_layers);
    if (!member.ok()) {
      std::fprintf(stderr, "rank %d: %s\n", rank, member.status().ToString().c_str());
      return 10;
    }
    ThreadPool pool(1);
    CausalLMOptions opts{.kv_cache_dtype = DType::kF32, .tensor_group = &(*member)->tensor_group()};
#ifdef SHOAL_GROUP_TEST_CUDA
    opts.device = Device::kCuda;
    opts.device_weight_dtype = DType::kF32;
    opts.cuda_device = -1;
    ResolveCudaDevice(rank, &opts);
#endif
    auto local = CreateCausalLM(model_, (*member)->shard(), &pool, opts);
    if (!local.ok()) {
      std::fprintf(stderr, "rank %d: %s\n", rank, local.status().ToString().c_str());
      return 11;
    }
    nlohmann::json out;
    out["weight_bytes"] = (*local)->WeightBytes();
    if (rank != 0) {
      absl::Status st = FollowerLoop(**member, **local);
      if (!st.ok()) std::fprintf(stderr, "rank %d: %s\n", rank, st.ToString().c_str());
      std::ofstream(ResultPath(rank)) << out.dump();
      return st.ok() ? 0 : 12;
    }
    auto group = GroupCausalLM::Create(std::move(*member), std::move(*local));
    if (!group.ok()) return 13;
    if (!(*group)->AllocateKvCache(3 * kBlocksPerSeq, kBlockSize).ok()) return 14;
    auto runs = Runs(prompt_, static_cast<int>(want_greedy_.size()));
    RunGreedy(**group, runs, kBlockSize, kBlocksPerSeq);
    for (const SequenceRun& r : runs) out["generated"].push_back(r.generated);
    out["prompt_logits"] = runs[0].prompt_logits;
    std::ofstream(ResultPath(rank)) << out.dump();
    group->reset();  // tells the followers to stop
    return 0;
  }

  // The bytes of the file's tensors rank `rank` should hold. Split over the tensor ranks:
  // layer matrices (k/v over at most num_kv_heads), shared-expert and dense features, the
  // vocabulary of llama's embedding and every LM head. Whole on every rank: norms,
  // DeepSeek's q_a/kv_a projections, router and embedding. Routed experts: those of the
  // rank's ExpertRange. kv_b_proj counts twice: the absorbed MLA form keeps a per-head
  // copy of the rank's slice in the same element size (f32 fixtures).
  size_t ExpectedBytes(const GroupLayout& g, int rank) const {
    const ShardSpec s = g.shard_of(rank);
    const ModelConfig& c = model_.config;
    const bool first = s.first_layer == 0, last = s.end_layer == c.num_layers;
    const bool deepseek = IsDeepseek(c.arch);
    const ExpertRange experts = ExpertRange::Of(c.deepseek.n_routed_experts, s.tp_rank, s.tp_size);
    const std::regex layer_re(R"(model\.layers\.(\d+)\.(.*))"), expert_re(R"(mlp\.experts\.(\d+)\..*)");
    const auto has = [](const std::string& rest, const char* part) { return rest.find(part) != std::string::npos; };
    size_t bytes = 0;
    for (const std::string& name : model_.weights->Names()) {
      const TensorView* t = model_.weights->Find(name);
      const size_t whole = t->nbytes, split = t->nbytes / g.tensor;
      std::smatch m;
      if (std::regex_match(name, m, layer_re)) {
        const int64_t layer = std::stoll(m[1]);
        if (layer < s.first_layer || layer >= s.end_layer) continue;
        const std::string rest = m[2];
        std::smatch e;
        if (std::regex_match(rest, e, expert_re)) {
          const int64_t expert = std::stoll(e[1]);
          if (experts.Contains(expert)) bytes += whole;
        } else if (has(rest, "norm") || has(rest, "q_a_proj") || has(rest, "kv_a_proj") ||
                   has(rest, "mlp.gate.") || has(rest, "e_score_correction_bias")) {
          bytes += whole;
        } else if (has(rest, "kv_b_proj")) {
          bytes += 2 * split;
        } else if (has(rest, "k_proj") || has(rest, "v_proj")) {
          bytes += t->nbytes / std::min<int64_t>(g.tensor, c.num_kv_heads);
        } else {
          bytes += split;
        }
      } else if (name == "model.embed_tokens.weight") {
        if (first) bytes += deepseek ? whole : split;
        if (last && c.tie_word_embeddings && !first) bytes += split;
      } else if (name == "lm_head.weight") {
        if (last) bytes += split;
      } else if (name == "model.norm.weight") {
        if (last) bytes += whole;
      }
    }
    return bytes;
  }

  std::string dir_;
  std::vector<int32_t> prompt_;
  std::vector<float> want_logits_;
  std::vector<int32_t> want_greedy_;
  LoadedModel model_;
  const pid_t parent_pid_ = getpid();  // children name their result files by it
};

#ifdef SHOAL_GROUP_TEST_CUDA
// Asked in a child process, so this one stays free of CUDA for the ranks it forks.
std::string WhyNoGpu() {
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) return "pipe failed";
  auto exits = testing::RunRanks(1, [&](int) {
    close(pipe_fds[0]);
    const int n = VisibleCudaDevices();
    const std::string why = n > 0 ? "" : "no GPU visible to the CUDA driver";
    (void)!write(pipe_fds[1], why.data(), why.size());
    return 0;
  }, std::chrono::seconds(60));
  close(pipe_fds[1]);
  char buf[256];
  const ssize_t got = read(pipe_fds[0], buf, sizeof(buf));
  close(pipe_fds[0]);
  if (exits[0].code != 0) return "the GPU probe process failed";
  return got > 0 ? std::string(buf, got) : "";
}
#endif

TEST_P(GroupModel, SameTokensAsOneProcessAndLogitsWithinTolerance) {
#ifdef SHOAL_GROUP_TEST_CUDA
  if (const std::string why = WhyNoGpu(); !why.empty()) GTEST_SKIP() << "skipped: " << why;
#endif
  const Case c = GetParam();
  const int world = c.tensor * c.pipeline;
  const int port = testing::FreePort();
  auto exits = testing::RunRanks(world, [&](int rank) { return RankMain(rank, port); }, std::chrono::seconds(90));
  for (int r = 0; r < world; ++r) {
    ASSERT_EQ(exits[r].code, 0) << "rank " << r << " signal " << exits[r].signal
                                << (exits[r].killed_at_deadline ? " (hung, killed)" : "");
  }
  std::vector<nlohmann::json> results;
  for (int r = 0; r < world; ++r) {
    std::ifstream f(ResultPath(r));
    ASSERT_TRUE(f) << ResultPath(r);
    results.push_back(nlohmann::json::parse(f));
    std::remove(ResultPath(r).c_str());
  }

  // The same runs in this process, one rank holding everything.
  ThreadPool pool(1);
  auto single = CreateCausalLM(model_, ShardSpec{}, &pool, CausalLMOptions{.kv_cache_dtype = DType::kF32});
  ASSERT_TRUE(single.ok()) << single.status();
  ASSERT_TRUE((*single)->AllocateKvCache(3 * kBlocksPerSeq, kBlockSize).ok());
  auto runs = Runs(prompt_, static_cast<int>(want_greedy_.size()));
  RunGreedy(**single, runs, kBlockSize, kBlocksPerSeq);

  ASSERT_EQ(results[0]["generated"].size(), runs.size());
  for (size_t i = 0; i < runs.size(); ++i) {
    EXPECT_EQ(results[0]["generated"][i].get<std::vector<int32_t>>(), runs[i].generated) << "sequence " << i;
  }
  EXPECT_EQ(runs[0].generated, want_greedy_);
  const auto logits = results[0]["prompt_logits"].get<std::vector<float>>();
  ASSERT_EQ(logits.size(), want_logits_.size());
  EXPECT_LE(RelativeError(logits.data(), want_logits_), 1e-3) << "against transformers";
  EXPECT_LE(RelativeError(logits.data(), runs[0].prompt_logits), 1e-4) << "against one process";

  auto layout = GroupLayout::Make(c.tensor, c.pipeline, model_.config.num_layers);
  ASSERT_TRUE(layout.ok());
  const size_t total = (*single)->WeightBytes();
  for (int r = 0; r < world; ++r) {
    const size_t got = results[r]["weight_bytes"].get<size_t>();
    const size_t want = ExpectedBytes(*layout, r);
    std::printf("%s rank %d: weight bytes %zu, its share of the file %zu, whole model %zu (1/%d = %zu)\n",
                CaseName({c, 0}).c_str(), r, got, want, total, world, total / world);
    EXPECT_NEAR(static_cast<double>(got), static_cast<double>(want), 0.1 * want) << "rank " << r;
  }
}

#ifdef SHOAL_GROUP_TEST_CUDA
INSTANTIATE_TEST_SUITE_P(CudaFixtures, GroupModel,
                         ::testing::Values(Case{"llama-tiny", 2, 1}, Case{"llama-tiny", 1, 2}, Case{"llama-tiny", 2, 2},
                                           Case{"llama-tiny", 4, 1}, Case{"qwen2-tiny", 2, 2}),
                         CaseName);
#else
INSTANTIATE_TEST_SUITE_P(Fixtures, GroupModel,
                         ::testing::Values(Case{"llama-tiny", 2, 1}, Case{"llama-tiny", 1, 2}, Case{"llama-tiny", 2, 2},
                                           Case{"llama-tiny", 4, 1}, Case{"qwen2-tiny", 2, 2},
                                           Case{"deepseek-v3-tiny", 2, 1}, Case{"deepseek-v2-tiny", 2, 1}, Case{"deepseek-v2-tiny", 1, 2},
                                           Case{"deepseek-v2-tiny", 2, 2},
                                           Case{"deepseek-v2-lite-tiny", 2, 2}, Case{"deepseek-v3-tiny", 4, 1}),
                         CaseName);
#endif

}  // namespace
}  // namespace shoal::worker
