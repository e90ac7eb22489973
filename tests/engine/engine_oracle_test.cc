// The step loop over the real SmolLM2-135M GGUF and its real tokenizer. The oracle for
// batching, prefix caching and preemption is the same engine running each request alone
// (and with the cache off): scheduling must never change a greedy or seeded token.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <random>

#include "tests/engine/engine_collector.h"
#include "worker/engine/engine.h"
#include "worker/kernels/cpu/thread_pool.h"
#include "worker/model/loaded_model.h"
#include "worker/models/causal_lm.h"
#include "worker/tokenizer/tokenizer.h"

namespace shoal::worker::testing {
namespace {

std::string ModelPath() {
  const char* dir = std::getenv("SHOAL_MODELS_DIR");
  std::string base = dir != nullptr ? dir : std::string(std::getenv("HOME")) + "/.cache/shoal/models";
  return base + "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

class OracleEngine : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = ModelPath();
    if (!std::filesystem::exists(path)) {
      load_error_ = new std::string(path + " is missing: run scripts/setup.sh to fetch the model");
      return;
    }
    auto loaded = LoadModel(path);
    if (!loaded.ok()) {
      load_error_ = new std::string(loaded.status().ToString());
      return;
    }
    model_ = new LoadedModel(std::move(loaded).value());
    auto tok = Tokenizer::ForModel(*model_);
    if (!tok.ok()) {
      load_error_ = new std::string(tok.status().ToString());
      return;
    }
    tokenizer_ = new std::shared_ptr<const Tokenizer>(std::move(tok).value());
    pool_ = new ThreadPool(2);
  }

  void SetUp() override { ASSERT_EQ(load_error_, nullptr) << *load_error_; }

  std::unique_ptr<Engine> NewEngine(EngineOptions options) {
    auto lm = CreateCausalLM(*model_, ShardSpec{}, pool_);
    EXPECT_TRUE(lm.ok()) << lm.status();
    if (!lm.ok()) return nullptr;
    if (options.max_model_len == 0) options.max_model_len = 2048;
    auto engine = Engine::Create(options, std::move(lm).value(), *tokenizer_);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return engine.ok() ? std::move(engine).value() : nullptr;
  }

  std::vector<int32_t> Encode(const std::string& text) const {
    std::vector<int32_t> ids;
    if ((*tokenizer_)->add_bos() && (*tokenizer_)->bos_id()) ids.push_back(*(*tokenizer_)->bos_id());
    std::vector<int32_t> body = (*tokenizer_)->Encode(text);
    ids.insert(ids.end(), body.begin(), body.end());
    return ids;
  }

  static std::string Chat(const std::string& system, const std::string& user) {
    return "<|im_start|>system\n" + system + "<|im_end|>\n<|im_start|>user\n" + user +
           "<|im_end|>\n<|im_start|>assistant\n";
  }

  // Runs each request alone, one after another.
  static std::vector<std::vector<int32_t>> RunAlone(Engine* engine,
                                                    const std::vector<GenerationRequest>& requests) {
    std::vector<std::vector<int32_t>> out;
    Collector collector;
    for (const GenerationRequest& r : requests) {
      GenerationRequest copy = r;
      copy.request_id = "alone-" + r.request_id;
      EXPECT_TRUE(engine->Submit(copy, collector.Callback()).ok());
      Collected c = collector.Wait(copy.request_id);
      EXPECT_NE(c.final_output.finish, FinishReason::kError) << c.final_output.error;
      out.push_back(c.tokens);
    }
    return out;
  }

  static std::vector<Collected> RunTogether(Engine* engine,
                                            const std::vector<GenerationRequest>& requests) {
    Collector collector;
    for (const GenerationRequest& r : requests) {
      EXPECT_TRUE(engine->Submit(r, collector.Callback()).ok());
    }
    std::vector<Collected> out;
    for (const GenerationRequest& r : requests) out.push_back(collector.Wait(r.request_id));
    return out;
  }

  static GenerationRequest Greedy(std::string id, std::vector<int32_t> prompt, int max_tokens) {
    GenerationRequest r;
    r.request_id = std::move(id);
    r.prompt_tokens = std::move(prompt);
    r.stop.max_tokens = max_tokens;
    r.stop.ignore_eos = true;  // fixed lengths make the comparison cover every step
    return r;
  }

  static inline std::string* load_error_ = nullptr;
  static inline LoadedModel* model_ = nullptr;
  static inline std::shared_ptr<const Tokenizer>* tokenizer_ = nullptr;
  static inline ThreadPool* pool_ = nullptr;
};

const char* kQuestions[] = {
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain gravity to a child in two sentences, using a simple example from everyday life.",
    "Hi",
    "What is 12 times 12?",
    "Name a color.",
    "Translate 'good morning' into Spanish and German, and say which one is more formal.",
    "Why is the sky blue?",
    "Give me a word that rhymes with cat.",
    "Describe a cat.",
    "Count from one to five.",
    "What do bees make?",
    "Tell me a very short story about a robot who learns to paint, in three sentences.",
    "Is water wet?",
    "What is the opposite of hot?",
};

TEST_F(OracleEngine, SixteenConcurrentGreedyRequestsMatchEachAlone) {
  EngineOptions o;
  o.max_num_batched_tokens = 64;  // long prompts are chunked while others decode
  auto engine = NewEngine(o);
  ASSERT_NE(engine, nullptr);
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 16; ++i) {
    requests.push_back(Greedy("r" + std::to_string(i),
                              Encode(Chat("You are a helpful assistant.", kQuestions[i])),
                              4 + (i * 7) % 17));
  }
  std::vector<std::vector<int32_t>> alone = RunAlone(engine.get(), requests);
  std::vector<Collected> together = RunTogether(engine.get(), requests);
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(together[i].tokens, alone[i]) << "request " << i << ": " << kQuestions[i];
    EXPECT_EQ(together[i].final_output.finish, FinishReason::kLength);
  }
  EngineStats s = engine->Stats();
  EXPECT_EQ(s.num_free_blocks, s.num_total_blocks);
}

TEST_F(OracleEngine, SharedSystemPromptHitsTheCacheWithTheSameTokens) {
  const std::string system =
      "You are Shoal, a careful assistant. Answer briefly and precisely. If you do not know "
      "something, say so. Prefer short sentences and plain words. Never invent facts.";
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 6; ++i) {
    requests.push_back(Greedy("s" + std::to_string(i), Encode(Chat(system, kQuestions[i])), 8));
  }
  EngineOptions off;
  off.enable_prefix_caching = false;
  auto reference = NewEngine(off);
  ASSERT_NE(reference, nullptr);
  std::vector<std::vector<int32_t>> expected = RunAlone(reference.get(), requests);
  reference.reset();

  auto engine = NewEngine(EngineOptions{});
  ASSERT_NE(engine, nullptr);
  Collector collector;
  // The first request fills the cache; the rest, together, find the system prompt there.
  ASSERT_TRUE(engine->Submit(requests[0], collector.Callback()).ok());
  EXPECT_EQ(collector.Wait("s0").tokens, expected[0]);
  const int64_t hits_before = engine->Stats().prefix_cache_hits_total;
  std::vector<GenerationRequest> rest(requests.begin() + 1, requests.end());
  std::vector<Collected> got = RunTogether(engine.get(), rest);
  for (size_t i = 0; i < rest.size(); ++i) {
    EXPECT_EQ(got[i].tokens, expected[i + 1]) << kQuestions[i + 1];
    EXPECT_GE(got[i].final_output.cached_prompt_tokens, 32) << kQuestions[i + 1];
  }
  EXPECT_GE(engine->Stats().prefix_cache_hits_total - hits_before, 5 * 32);
}

TEST_F(OracleEngine, CancelledRequestsFreeTheirBlocks) {
  auto engine = NewEngine(EngineOptions{});
  ASSERT_NE(engine, nullptr);
  Collector collector;
  for (int i = 0; i < 4; ++i) {
    GenerationRequest r = Greedy("c" + std::to_string(i), Encode(Chat("Be verbose.", kQuestions[i])), 1000);
    ASSERT_TRUE(engine->Submit(r, collector.Callback()).ok());
  }
  for (int i = 0; i < 4; ++i) collector.WaitForTokens("c" + std::to_string(i), 2);
  EXPECT_LT(engine->Stats().num_free_blocks, engine->Stats().num_total_blocks);
  for (int i = 0; i < 4; ++i) engine->Cancel("c" + std::to_string(i));
  for (int i = 0; i < 4; ++i) {
    Collected c = collector.Wait("c" + std::to_string(i));
    EXPECT_EQ(c.final_output.finish, FinishReason::kCancelled);
    EXPECT_EQ(c.final_output.completion_tokens, static_cast<int32_t>(c.tokens.size()));
  }
  EngineStats s = engine->Stats();
  EXPECT_EQ(s.num_free_blocks, s.num_total_blocks);
  EXPECT_EQ(s.running + s.waiting, 0);
}

TEST_F(OracleEngine, TinyKvBudgetPreemptsAndTheTokensStayTheSame) {
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 5; ++i) {
    requests.push_back(Greedy("p" + std::to_string(i), Encode(kQuestions[8 + i]), 40));
  }
  EngineOptions big;
  auto reference = NewEngine(big);
  ASSERT_NE(reference, nullptr);
  std::vector<std::vector<int32_t>> expected = RunAlone(reference.get(), requests);
  reference.reset();

  EngineOptions tiny;
  tiny.num_kv_blocks = 12;  // 192 tokens; five requests grow to ~50 tokens each
  auto engine = NewEngine(tiny);
  ASSERT_NE(engine, nullptr);
  std::vector<Collected> got = RunTogether(engine.get(), requests);
  for (size_t i = 0; i < requests.size(); ++i) EXPECT_EQ(got[i].tokens, expected[i]) << i;
  EngineStats s = engine->Stats();
  EXPECT_GT(s.preemptions_total, 0);
  EXPECT_EQ(s.num_free_blocks, 12);
}

TEST_F(OracleEngine, SameSeedSameSampledTokensAloneOrBatched) {
  auto engine = NewEngine(EngineOptions{});
  ASSERT_NE(engine, nullptr);
  GenerationRequest r = Greedy("seeded", Encode(Chat("You tell stories.", "Tell me a story.")), 24);
  r.sampling.temperature = 0.9f;
  r.sampling.top_p = 0.95f;
  r.sampling.top_k = 50;
  r.sampling.seed = 2024;
  std::vector<int32_t> alone = RunAlone(engine.get(), {r})[0];
  ASSERT_EQ(alone.size(), 24u);

  std::vector<GenerationRequest> batch;
  for (int i = 0; i < 5; ++i) {
    GenerationRequest other = Greedy("o" + std::to_string(i), Encode(kQuestions[i]), 10 + i);
    other.sampling.temperature = 1.0f;
    batch.push_back(other);
  }
  batch.push_back(r);
  std::vector<Collected> got = RunTogether(engine.get(), batch);
  EXPECT_EQ(got.back().tokens, alone);
  // A different seed should give a different story (checks the seed is used at all).
  GenerationRequest other_seed = r;
  other_seed.request_id = "seed-2025";
  other_seed.sampling.seed = 2025;
  EXPECT_NE(RunAlone(engine.get(), {other_seed})[0], alone);
}

TEST_F(OracleEngine, StopStringAndEosEndTheAnswer) {
  auto engine = NewEngine(EngineOptions{});
  ASSERT_NE(engine, nullptr);
  GenerationRequest free_run = Greedy("free", Encode(Chat("You are a helpful assistant.", "Count from one to ten.")), 60);
  free_run.stop.ignore_eos = false;
  Collector collector;
  ASSERT_TRUE(engine->Submit(free_run, collector.Callback()).ok());
  Collected full = collector.Wait("free");
  ASSERT_GE(full.text.size(), 12u) << full.text;
  // Stop at a piece of text from the middle of the answer.
  std::string stop = full.text.substr(full.text.size() / 2, 3);
  GenerationRequest stopped = free_run;
  stopped.request_id = "stopped";
  stopped.stop.stop_strings = {stop};
  ASSERT_TRUE(engine->Submit(stopped, collector.Callback()).ok());
  Collected c = collector.Wait("stopped");
  EXPECT_EQ(c.final_output.finish, FinishReason::kStop);
  EXPECT_EQ(c.final_output.matched_stop, stop);
  EXPECT_EQ(c.text, full.text.substr(0, full.text.find(stop)));
}

}  // namespace
}  // namespace shoal::worker::testing
