// llama and qwen2 against Hugging Face transformers: tiny random-weight checkpoints and
// the logits / greedy tokens transformers produced for them (tests/oracle/).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "tests/models/greedy_driver.h"
#include "worker/kernels/cpu/thread_pool.h"
#include "worker/model/loaded_model.h"
#include "worker/models/causal_lm.h"

namespace shoal::worker {
namespace {

using testing::RelativeError;
using testing::RunGreedy;
using testing::SequenceRun;
using testing::SharedStepRuns;
using testing::UnrelatedPrompt;

constexpr double kLogitTolerance = 1e-3;
constexpr int kBlockSize = 4;
constexpr int kBlocksPerSeq = 16;  // 64 positions: prompt 20 + 32 new

class OracleFixture : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string error;
    ASSERT_TRUE(testing::ReadOracleExpectation(GetParam(), &expected_, &error)) << error;
    dir_ = expected_.dir;

    auto model = LoadModel(dir_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    // An f32 KV cache: the fixtures are f32 Transformers runs, and the f16 cache's
    // rounding (of K, V, q and the attention probabilities) alone moves these tiny models'
    // logits by ~2e-3 relative, past the tolerance.
    auto lm = CreateCausalLM(model_, ShardSpec{}, &pool_, CausalLMOptions{.kv_cache_dtype = DType::kF32});
    ASSERT_TRUE(lm.ok()) << lm.status();
    lm_ = std::move(*lm);
    ASSERT_TRUE(lm_->AllocateKvCache(4 * kBlocksPerSeq, kBlockSize).ok());
  }

  std::vector<SequenceRun> OneRun(std::vector<int> chunks) {
    std::vector<SequenceRun> runs(1);
    runs[0].prompt = expected_.prompt;
    runs[0].chunk_sizes = std::move(chunks);
    runs[0].num_new = static_cast<int>(expected_.greedy.size());
    return runs;
  }

  std::string dir_;
  testing::OracleExpectation expected_;
  ThreadPool pool_{2};
  LoadedModel model_;
  std::unique_ptr<CausalLM> lm_;
};

TEST_P(OracleFixture, LastPositionLogitsMatchTransformers) {
  std::vector<float> logits;
  const std::vector<int32_t> table = {3, 0, 7, 1, 9};
  ForwardBatch batch;
  batch.seqs.push_back({expected_.prompt, 0, table, true});
  ASSERT_TRUE(lm_->Forward(batch, &logits).ok());
  const auto& want = expected_.logits.at(static_cast<int>(expected_.prompt.size()) - 1);
  ASSERT_EQ(logits.size(), want.size());
  EXPECT_LE(RelativeError(logits.data(), want), kLogitTolerance);
}

// Every recorded position at once: four sequences, each a prefix of the prompt ending at
// one of those positions, in one batch with their own block tables.
TEST_P(OracleFixture, EarlierPositionsMatchAsPrefixesBatchedTogether) {
  std::vector<int> positions;
  std::vector<float> logits;
  ASSERT_TRUE(testing::ForwardRecordedPrefixes(*lm_, expected_.prompt, expected_.logits, &positions, &logits));
  const int64_t vocab = lm_->config().vocab_size;
  for (size_t i = 0; i < positions.size(); ++i) {
    EXPECT_LE(RelativeError(logits.data() + i * vocab, expected_.logits.at(positions[i])), kLogitTolerance)
        << "position " << positions[i];
  }
}

TEST_P(OracleFixture, GreedyTokensMatchTransformers) {
  auto runs = OneRun({});
  RunGreedy(*lm_, runs, kBlockSize, kBlocksPerSeq);
  EXPECT_EQ(runs[0].generated, expected_.greedy);
}

TEST_P(OracleFixture, ChunkedPromptGivesSameTokens) {
  for (std::vector<int> chunks : {std::vector<int>{1}, {3}, {7, 2, 5}, {4, 13}}) {
    auto runs = OneRun(chunks);
    RunGreedy(*lm_, runs, kBlockSize, kBlocksPerSeq);
    EXPECT_EQ(runs[0].generated, expected_.greedy) << "chunks starting " << chunks[0];
    EXPECT_LE(RelativeError(runs[0].prompt_logits.data(), expected_.logits.at(static_cast<int>(expected_.prompt.size()) - 1)),
              kLogitTolerance);
  }
}

// Continuous batching: the fixture prompt shares every step with other sequences (one
// prefilling in chunks while the other decodes, different lengths); its tokens must not
// change, and neither may the others' compared to running alone.
TEST_P(OracleFixture, SequencesSharingStepsGiveTheirSoloTokens) {
  std::vector<SequenceRun> solo(1);
  solo[0].prompt = UnrelatedPrompt();
  solo[0].num_new = 20;
  RunGreedy(*lm_, solo, kBlockSize, kBlocksPerSeq);

  std::vector<SequenceRun> runs = SharedStepRuns(expected_.prompt, static_cast<int>(expected_.greedy.size()));
  RunGreedy(*lm_, runs, kBlockSize, kBlocksPerSeq);
  EXPECT_EQ(runs[0].generated, solo[0].generated);
  EXPECT_EQ(runs[1].generated, expected_.greedy);
}

TEST_P(OracleFixture, RejectsBlockTableTooShortForPositions) {
  const std::vector<int32_t> table = {0};  // 4 positions, the prompt has 20
  ForwardBatch batch;
  batch.seqs.push_back({expected_.prompt, 0, table, true});
  std::vector<float> logits;
  const absl::Status st = lm_->Forward(batch, &logits);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("block table"), absl::string_view::npos) << st;
}

TEST_P(OracleFixture, RejectsTokenOutsideVocabulary) {
  const std::vector<int32_t> tokens = {1, static_cast<int32_t>(lm_->config().vocab_size)};
  const std::vector<int32_t> table = {0};
  ForwardBatch batch;
  batch.seqs.push_back({tokens, 0, table, true});
  std::vector<float> logits;
  EXPECT_EQ(lm_->Forward(batch, &logits).code(), absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Transformers, OracleFixture,
                         ::testing::Values("llama-tiny", "llama3-rope-tiny", "qwen2-tiny"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(CausalLMFactory, RejectsTensorParallelWithoutCommunicator) {
  auto model = LoadModel(testing::SourceDir() + "/tests/oracle/fixtures/llama-tiny");
  ASSERT_TRUE(model.ok()) << model.status();
  ThreadPool pool(1);
  ShardSpec shard;
  shard.tp_size = 2;
  auto lm = CreateCausalLM(*model, shard, &pool);
  EXPECT_EQ(lm.status().code(), absl::StatusCode::kInvalidArgument) << lm.status();
}

TEST(CausalLMFactory, LayerRangeOutsideModelIsAnError) {
  auto model = LoadModel(testing::SourceDir() + "/tests/oracle/fixtures/llama-tiny");
  ASSERT_TRUE(model.ok()) << model.status();
  ThreadPool pool(1);
  ShardSpec shard;
  shard.end_layer = 99;
  auto lm = CreateCausalLM(*model, shard, &pool);
  EXPECT_EQ(lm.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CausalLMFactory, KvCacheIsHalfByDefaultAndHalvesBlockBytes) {
  auto model = LoadModel(testing::SourceDir() + "/tests/oracle/fixtures/llama-tiny");
  ASSERT_TRUE(model.ok()) << model.status();
  ThreadPool pool(1);
  auto half = CreateCausalLM(*model, ShardSpec{}, &pool);
  auto full = CreateCausalLM(*model, ShardSpec{}, &pool, CausalLMOptions{.kv_cache_dtype = DType::kF32});
  ASSERT_TRUE(half.ok() && full.ok());
  const ModelConfig& c = model->config;
  const size_t f32_bytes = static_cast<size_t>(c.num_layers) * 2 * 16 * c.num_kv_heads * c.head_dim * 4;
  EXPECT_EQ((*full)->KvBytesPerBlock(16), f32_bytes);
  EXPECT_EQ((*half)->KvBytesPerBlock(16), f32_bytes / 2);
}

TEST(CausalLMFactory, KvCacheDTypeOtherThanF16OrF32IsAnError) {
  auto model = LoadModel(testing::SourceDir() + "/tests/oracle/fixtures/llama-tiny");
  ASSERT_TRUE(model.ok()) << model.status();
  ThreadPool pool(1);
  auto lm = CreateCausalLM(*model, ShardSpec{}, &pool, CausalLMOptions{.kv_cache_dtype = DType::kBF16});
  EXPECT_EQ(lm.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(lm.status().message()).find("BF16"), std::string::npos) << lm.status();
}

// A CPU-only build has no CUDA model; a CUDA build on a machine without one finds no
// GPU. Either way a precondition, never a crash; on a GPU machine the model is built.
TEST(CausalLMFactory, CudaDeviceIsAPreconditionWithoutCudaOrGpu) {
  auto model = LoadModel(testing::SourceDir() + "/tests/oracle/fixtures/llama-tiny");
  ASSERT_TRUE(model.ok()) << model.status();
  CausalLMOptions options;
  options.device = Device::kCuda;
  auto lm = CreateCausalLM(*model, ShardSpec{}, nullptr, options);
  if (lm.ok()) GTEST_SKIP() << "built with CUDA on a GPU machine";
  EXPECT_EQ(lm.status().code(), absl::StatusCode::kFailedPrecondition) << lm.status();
  const std::string message(lm.status().message());
  EXPECT_TRUE(message.find("built without CUDA") != std::string::npos || message.rfind("no GPU: ", 0) == 0)
      << message;
}

}  // namespace
}  // namespace shoal::worker
