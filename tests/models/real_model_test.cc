// The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF): loads in place, and its
// greedy continuation is finite and the same however the work is split into steps.
// Agreement with llama.cpp itself is pinned by tests/oracle/llamacpp_agreement_test.cc.
#include <gtest/gtest.h>

#include <filesystem>
#include <iostream>
#include <set>

#include "tests/models/greedy_driver.h"
#include "worker/kernels/cpu/thread_pool.h"
#include "worker/model/loaded_model.h"
#include "worker/models/causal_lm.h"

namespace shoal::worker {
namespace {

using testing::RunGreedy;
using testing::SequenceRun;

constexpr char kModelFile[] = "SmolLM2-135M-Instruct.Q4_1.gguf";
// "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
// in SmolLM2's vocabulary; any fixed ids would do, real text keeps the logits typical.
const std::vector<int32_t> kPrompt = {1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198};

class RealModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = testing::ModelsDir() + "/" + kModelFile;
    ASSERT_TRUE(std::filesystem::exists(path)) << path << " is missing: run scripts/setup.sh";
    auto model = LoadModel(path);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = new LoadedModel(std::move(*model));
    pool_ = new ThreadPool(2);
    auto lm = CreateCausalLM(*model_, ShardSpec{}, pool_);
    ASSERT_TRUE(lm.ok()) << lm.status();
    lm_ = lm->release();
    ASSERT_TRUE(lm_->AllocateKvCache(64, 16).ok());
  }
  static void TearDownTestSuite() {
    delete lm_;
    delete pool_;
    delete model_;
  }
  void SetUp() override { ASSERT_NE(lm_, nullptr) << "model failed to load"; }

  static LoadedModel* model_;
  static ThreadPool* pool_;
  static CausalLM* lm_;
};
LoadedModel* RealModel::model_ = nullptr;
ThreadPool* RealModel::pool_ = nullptr;
CausalLM* RealModel::lm_ = nullptr;

TEST_F(RealModel, ConfigIsSmolLM2) {
  const ModelConfig& c = lm_->config();
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.num_heads, 9);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.rope_interleaved);
}

// Weights are read in place from the mapping: what the model keeps is the file's tensor
// bytes (Q4_1 layers + Q8_0 embedding shared with the output), not dequantized copies.
TEST_F(RealModel, WeightsAreUsedInPlace) {
  const auto file_bytes = std::filesystem::file_size(testing::ModelsDir() + "/" + kModelFile);
  EXPECT_LE(lm_->WeightBytes(), file_bytes);
  EXPECT_GE(lm_->WeightBytes(), file_bytes * 9 / 10);
}

TEST_F(RealModel, GreedyContinuationIsFiniteAndStableAcrossStepSplits) {
  std::vector<SequenceRun> whole(1);
  whole[0].prompt = kPrompt;
  whole[0].num_new = 24;
  RunGreedy(*lm_, whole, 16, 4);
  const std::vector<int32_t> reference = whole[0].generated;
  ASSERT_EQ(reference.size(), 24u);
  std::string ids;
  for (int32_t t : reference) ids += std::to_string(t) + " ";
  std::cout << "greedy continuation ids: " << ids << "\n";
  // Not stuck on one token: a working model says something.
  EXPECT_GT(std::set<int32_t>(reference.begin(), reference.end()).size(), 3u);

  std::vector<SequenceRun> again(1);
  again[0].prompt = kPrompt;
  again[0].num_new = 24;
  RunGreedy(*lm_, again, 16, 4);
  EXPECT_EQ(again[0].generated, reference) << "same input, different tokens";

  // The prompt fed a token at a time (every matmul takes the single-token path) and in
  // uneven chunks, alongside another sequence.
  std::vector<SequenceRun> split(2);
  split[0].prompt = kPrompt;
  split[0].chunk_sizes = {1};
  split[0].num_new = 24;
  split[1].prompt = {1, 4093, 198, 19556};
  split[1].chunk_sizes = {3};
  split[1].num_new = 10;
  RunGreedy(*lm_, split, 16, 4);
  EXPECT_EQ(split[0].generated, reference);
  double max_diff = 0;
  for (size_t i = 0; i < whole[0].prompt_logits.size(); ++i) {
    max_diff = std::max<double>(max_diff, std::fabs(whole[0].prompt_logits[i] - split[0].prompt_logits[i]));
  }
  EXPECT_LT(max_diff, 1e-3);
}

}  // namespace
}  // namespace shoal::worker
