// DeepSeek-V2/V3 against Hugging Face transformers: tiny random-weight checkpoints
// (tests/oracle/generate_deepseek_fixtures.py) and the logits / greedy tokens
// transformers produced for them, with MLA computed absorbed, expanded, or each where it
// fits (decode absorbed, prompt chunks expanded).
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <tuple>

#include "tests/models/greedy_driver.h"
#include "worker/kernels/cpu/thread_pool.h"
#include "worker/model/loaded_model.h"
#include "worker/models/causal_lm.h"
#include "worker/models/deepseek.h"

namespace shoal::worker {
namespace {

using testing::RelativeError;
using testing::RunGreedy;
using testing::SequenceRun;

constexpr double kLogitTolerance = 1e-3;
constexpr int kBlockSize = 4;
constexpr int kBlocksPerSeq = 16;  // 64 positions: prompt 20 + 32 new

const char* ModeName(MlaMode m) {
  switch (m) {
    case MlaMode::kAuto: return "auto";
    case MlaMode::kAbsorbed: return "absorbed";
    case MlaMode::kExpanded: return "expanded";
  }
  return "?";
}

class DeepseekOracle : public ::testing::TestWithParam<std::tuple<std::string, MlaMode>> {
 protected:
  void SetUp() override {
    testing::OracleExpectation e;
    std::string error;
    ASSERT_TRUE(testing::ReadOracleExpectation(std::get<0>(GetParam()), &e, &error)) << error;
    dir_ = e.dir;
    prompt_ = e.prompt;
    logits_ = e.logits;
    greedy_ = e.greedy;

    auto model = LoadModel(dir_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    // An f32 cache: the fixtures are f32 transformers runs (see oracle_fixture_test.cc).
    auto lm = CreateDeepseek(model_, ShardSpec{}, &pool_, CausalLMOptions{.kv_cache_dtype = DType::kF32},
                             DeepseekOptions{.mla_mode = std::get<1>(GetParam())});
    ASSERT_TRUE(lm.ok()) << lm.status();
    lm_ = std::move(*lm);
    ASSERT_TRUE(lm_->AllocateKvCache(4 * kBlocksPerSeq, kBlockSize).ok());
  }

  std::vector<SequenceRun> OneRun(std::vector<int> chunks) {
    std::vector<SequenceRun> runs(1);
    runs[0].prompt = prompt_;
    runs[0].chunk_sizes = std::move(chunks);
    runs[0].num_new = static_cast<int>(greedy_.size());
    return runs;
  }
  const std::vector<float>& LastLogits() const { return logits_.at(static_cast<int>(prompt_.size()) - 1); }

  std::string dir_;
  std::vector<int32_t> prompt_, greedy_;
  std::map<int, std::vector<float>> logits_;  // by prompt position
  ThreadPool pool_{2};
  LoadedModel model_;
  std::unique_ptr<CausalLM> lm_;
};

TEST_P(DeepseekOracle, LastPositionLogitsMatchTransformers) {
  std::vector<float> logits;
  const std::vector<int32_t> table = {3, 0, 7, 1, 9};
  ForwardBatch batch;
  batch.seqs.push_back({prompt_, 0, table, true});
  ASSERT_TRUE(lm_->Forward(batch, &logits).ok());
  ASSERT_EQ(logits.size(), LastLogits().size());
  EXPECT_LE(RelativeError(logits.data(), LastLogits()), kLogitTolerance);
}

TEST_P(DeepseekOracle, EarlierPositionsMatchAsPrefixesBatchedTogether) {
  std::vector<int> positions;
  std::vector<float> logits;
  ASSERT_TRUE(testing::ForwardRecordedPrefixes(*lm_, prompt_, logits_, &positions, &logits));
  const int64_t vocab = lm_->config().vocab_size;
  for (size_t i = 0; i < positions.size(); ++i) {
    EXPECT_LE(RelativeError(logits.data() + i * vocab, logits_.at(positions[i])), kLogitTolerance)
        << "position " << positions[i];
  }
}

TEST_P(DeepseekOracle, GreedyTokensMatchTransformers) {
  auto runs = OneRun({});
  RunGreedy(*lm_, runs, kBlockSize, kBlocksPerSeq);
  EXPECT_EQ(runs[0].generated, greedy_);
}

TEST_P(DeepseekOracle, ChunkedPromptGivesSameTokens) {
  for (std::vector<int> chunks : {std::vector<int>{1}, {3}, {7, 2, 5}, {4, 13}}) {
    auto runs = OneRun(chunks);
    RunGreedy(*lm_, runs, kBlockSize, kBlocksPerSeq);
    EXPECT_EQ(runs[0].generated, greedy_) << "chunks starting " << chunks[0];
    EXPECT_LE(RelativeError(runs[0].prompt_logits.data(), LastLogits()), kLogitTolerance);
  }
}

// Continuous batching: the fixture prompt shares every step with other sequences (one
// prefilling in chunks while others decode); no sequence's tokens may change.
TEST_P(DeepseekOracle, SequencesSharingStepsGiveTheirSoloTokens) {
  std::vector<int32_t> other = {5, 9, 250, 31, 17, 2, 64, 64, 100, 3, 8};
  std::vector<SequenceRun> solo(1);
  solo[0].prompt = other;
  solo[0].num_new = 20;
  RunGreedy(*lm_, solo, kBlockSize, kBlocksPerSeq);

  std::vector<SequenceRun> runs(3);
  runs[0].prompt = other;
  runs[0].num_new = 20;
  runs[1].prompt = prompt_;
  runs[1].chunk_sizes = {6};
  runs[1].num_new = static_cast<int>(greedy_.size());
  runs[2].prompt = {other.begin(), other.begin() + 4};
  runs[2].chunk_sizes = {1};
  runs[2].num_new = 5;
  RunGreedy(*lm_, runs, kBlockSize, kBlocksPerSeq);
  EXPECT_EQ(runs[0].generated, solo[0].generated);
  EXPECT_EQ(runs[1].generated, greedy_);
}

INSTANTIATE_TEST_SUITE_P(
    Transformers, DeepseekOracle,
    ::testing::Combine(::testing::Values("deepseek-v2-tiny", "deepseek-v2-lite-tiny", "deepseek-v3-tiny"),
                       ::testing::Values(MlaMode::kAuto, MlaMode::kAbsorbed, MlaMode::kExpanded)),
    [](const auto& info) {
      std::string n = std::get<0>(info.param) + "_" + ModeName(std::get<1>(info.param));
      std::replace(n.begin(), n.end(), '-', '_');
      return n;
    });

// The f16 latent cache (the serving default) rounds c and k_pe; the model must stay
// close to the f32 oracle (its rounding alone moves these tiny models' logits ~1e-3).
TEST(DeepseekF16Cache, StaysCloseToTransformers) {
  for (const char* name : {"deepseek-v2-tiny", "deepseek-v3-tiny"}) {
    testing::OracleExpectation e;
    std::string error;
    ASSERT_TRUE(testing::ReadOracleExpectation(name, &e, &error)) << error;
    const std::vector<int32_t>& prompt = e.prompt;
    const std::vector<float>& want = e.last_logits();
    auto model = LoadModel(e.dir);
    ASSERT_TRUE(model.ok()) << model.status();
    ThreadPool pool(2);
    auto lm = CreateCausalLM(*model, ShardSpec{}, &pool);
    ASSERT_TRUE(lm.ok()) << lm.status();
    ASSERT_TRUE((*lm)->AllocateKvCache(8, 4).ok());
    const std::vector<int32_t> table = {3, 0, 7, 1, 5};
    ForwardBatch batch;
    batch.seqs.push_back({prompt, 0, table, true});
    std::vector<float> logits;
    ASSERT_TRUE((*lm)->Forward(batch, &logits).ok());
    EXPECT_LE(RelativeError(logits.data(), want), 1e-2) << name;
  }
}

}  // namespace
}  // namespace shoal::worker
