// The step loop over TestModel (a real paged KV cache, deterministic logits) and
// ByteTokenizer: every output is compared with the model's function computed straight
// from the token list, so block tables, prefix sharing, chunking and preemption must all
// be right for the tokens to match.
#include "worker/engine/engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "tests/engine/engine_collector.h"
#include "tests/engine/test_model.h"
#include "worker/engine/sampler.h"

namespace shoal::worker::testing {
namespace {

using ::testing::HasSubstr;

struct EngineUnderTest {
  std::unique_ptr<Engine> engine;
  TestModel* model = nullptr;  // owned by engine
  Collector collector;
};

std::unique_ptr<EngineUnderTest> Start(EngineOptions options, TestModelOptions model_options = {}) {
  auto t = std::make_unique<EngineUnderTest>();
  auto model = std::make_unique<TestModel>(model_options);
  t->model = model.get();
  auto engine = Engine::Create(options, std::move(model), std::make_shared<ByteTokenizer>());
  EXPECT_TRUE(engine.ok()) << engine.status();
  t->engine = std::move(engine).value();
  return t;
}

// Submits all requests while the model is held inside its first Forward, so they are
// all queued together however slowly this thread runs.
void SubmitTogether(EngineUnderTest* t, const std::vector<GenerationRequest>& requests) {
  t->model->Pause();
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(t->engine->Submit(requests[i], t->collector.Callback()).ok());
    if (i == 0) t->model->WaitUntilPaused();
  }
  t->model->Resume();
}

EngineOptions SmallOptions() {
  EngineOptions o;
  o.block_size = 4;
  o.num_kv_blocks = 256;
  o.max_num_batched_tokens = 32;
  o.max_num_seqs = 16;
  return o;
}

std::vector<int32_t> RandomPrompt(std::mt19937_64& gen, int n) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back(static_cast<int32_t>('a' + gen() % 26));
  return p;
}

GenerationRequest Greedy(std::string id, std::vector<int32_t> prompt, int max_tokens) {
  GenerationRequest r;
  r.request_id = std::move(id);
  r.prompt_tokens = std::move(prompt);
  r.stop.max_tokens = max_tokens;
  return r;
}

std::string AsText(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) {
    if (id < 256) s += static_cast<char>(id);
  }
  return s;
}

TEST(Engine, GreedyOutputIsTheModelsFunctionOfTheContext) {
  auto t = Start(SmallOptions());
  std::vector<int32_t> prompt{'h', 'e', 'l', 'l', 'o', ' '};
  ASSERT_TRUE(t->engine->Submit(Greedy("a", prompt, 12), t->collector.Callback()).ok());
  Collected c = t->collector.Wait("a");
  std::vector<int32_t> expected = t->model->ReferenceGreedy(prompt, 12);
  EXPECT_EQ(c.tokens, expected);
  EXPECT_EQ(c.text, AsText(expected));
  EXPECT_EQ(c.final_output.finish, FinishReason::kLength);
  EXPECT_EQ(c.final_output.prompt_tokens, 6);
  EXPECT_EQ(c.final_output.completion_tokens, 12);
  EXPECT_EQ(c.num_pieces, 12);
  EXPECT_GT(c.final_output.time_to_first_token_seconds, 0.0);
}

TEST(Engine, ConcurrentRequestsGiveWhatEachGivesAlone) {
  auto t = Start(SmallOptions());
  std::mt19937_64 gen(11);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int> max_tokens;
  for (int i = 0; i < 16; ++i) {
    prompts.push_back(RandomPrompt(gen, 1 + static_cast<int>(gen() % 70)));
    max_tokens.push_back(1 + static_cast<int>(gen() % 30));
  }
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 16; ++i) {
    requests.push_back(Greedy("r" + std::to_string(i), prompts[i], max_tokens[i]));
  }
  SubmitTogether(t.get(), requests);
  for (int i = 0; i < 16; ++i) {
    Collected c = t->collector.Wait("r" + std::to_string(i));
    EXPECT_EQ(c.tokens, t->model->ReferenceGreedy(prompts[i], max_tokens[i])) << "request " << i;
  }
  EXPECT_GT(t->model->max_batch_seqs.load(), 1);
  EngineStats s = t->engine->Stats();
  EXPECT_EQ(s.running, 0);
  EXPECT_EQ(s.num_free_blocks, s.num_total_blocks);
}

TEST(Engine, RequestsArrivingFromThreadsAtAnyTimeGiveTheSameTokens) {
  EngineOptions o = SmallOptions();
  o.num_kv_blocks = 24;  // small enough that arrivals and preemptions interleave
  auto t = Start(o);
  std::vector<std::thread> threads;
  std::vector<std::vector<int32_t>> prompts(24);
  std::mt19937_64 gen(15);
  for (auto& p : prompts) {
    std::vector<int32_t> shared{'c', 'o', 'm', 'm', 'o', 'n', ' ', 'h'};  // two shared blocks
    p = RandomPrompt(gen, static_cast<int>(gen() % 20));
    p.insert(p.begin(), shared.begin(), shared.end());
  }
  for (int th = 0; th < 3; ++th) {
    threads.emplace_back([&, th] {
      std::mt19937_64 g(100 + th);
      for (int i = th; i < 24; i += 3) {
        std::this_thread::sleep_for(std::chrono::microseconds(g() % 3000));
        ASSERT_TRUE(t->engine->Submit(Greedy("t" + std::to_string(i), prompts[i], 15),
                                      t->collector.Callback()).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int i = 0; i < 24; ++i) {
    Collected c = t->collector.Wait("t" + std::to_string(i));
    EXPECT_EQ(c.tokens, t->model->ReferenceGreedy(prompts[i], 15)) << i;
  }
  EngineStats s = t->engine->Stats();
  EXPECT_EQ(s.num_free_blocks, s.num_total_blocks);
}

TEST(Engine, SharedPrefixIsComputedOnceAndGivesTheSameTokens) {
  auto t = Start(SmallOptions());
  std::mt19937_64 gen(12);
  std::vector<int32_t> system = RandomPrompt(gen, 40);
  ASSERT_TRUE(t->engine->Submit(Greedy("first", system, 4), t->collector.Callback()).ok());
  t->collector.Wait("first");
  const int64_t computed_before = t->model->num_tokens_computed;
  const int64_t hits_before = t->engine->Stats().prefix_cache_hits_total;

  std::vector<std::vector<int32_t>> prompts;
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> p = system;
    std::vector<int32_t> q = RandomPrompt(gen, 5 + i);
    p.insert(p.end(), q.begin(), q.end());
    prompts.push_back(p);
    requests.push_back(Greedy("q" + std::to_string(i), p, 6));
  }
  SubmitTogether(t.get(), requests);
  int64_t prompt_total = 0;
  for (int i = 0; i < 4; ++i) {
    Collected c = t->collector.Wait("q" + std::to_string(i));
    EXPECT_EQ(c.tokens, t->model->ReferenceGreedy(prompts[i], 6));
    EXPECT_EQ(c.final_output.cached_prompt_tokens, 40) << i;
    prompt_total += static_cast<int64_t>(prompts[i].size());
  }
  EXPECT_EQ(t->engine->Stats().prefix_cache_hits_total - hits_before, 4 * 40);
  // Only the new part of each prompt and the decoded tokens were computed.
  EXPECT_EQ(t->model->num_tokens_computed - computed_before, prompt_total - 4 * 40 + 4 * 5);
}

TEST(Engine, NextTurnReusesTheCachedAnswer) {
  auto t = Start(SmallOptions());
  std::vector<int32_t> p1{'t', 'u', 'r', 'n', ' ', 'o', 'n', 'e', '?', ' '};
  ASSERT_TRUE(t->engine->Submit(Greedy("turn1", p1, 14), t->collector.Callback()).ok());
  Collected c1 = t->collector.Wait("turn1");
  // 10 + 14 tokens, the last never computed: 23 in the cache, 5 full blocks of 4.
  std::vector<int32_t> p2 = p1;
  p2.insert(p2.end(), c1.tokens.begin(), c1.tokens.end());
  p2.insert(p2.end(), {'a', 'n', 'd', '?'});
  ASSERT_TRUE(t->engine->Submit(Greedy("turn2", p2, 6), t->collector.Callback()).ok());
  Collected c2 = t->collector.Wait("turn2");
  EXPECT_EQ(c2.final_output.cached_prompt_tokens, 20);
  EXPECT_EQ(c2.tokens, t->model->ReferenceGreedy(p2, 6));
}

TEST(Engine, PrefixCachingOffGivesTheSameTokens) {
  EngineOptions o = SmallOptions();
  o.enable_prefix_caching = false;
  auto t = Start(o);
  std::vector<int32_t> p(20, 'x');
  ASSERT_TRUE(t->engine->Submit(Greedy("a", p, 5), t->collector.Callback()).ok());
  t->collector.Wait("a");
  ASSERT_TRUE(t->engine->Submit(Greedy("b", p, 5), t->collector.Callback()).ok());
  Collected c = t->collector.Wait("b");
  EXPECT_EQ(c.tokens, t->model->ReferenceGreedy(p, 5));
  EXPECT_EQ(c.final_output.cached_prompt_tokens, 0);
  EXPECT_EQ(t->engine->Stats().prefix_cache_hits_total, 0);
}

TEST(Engine, TinyKvCachePreemptsAndStillGivesTheSameTokens) {
  EngineOptions o = SmallOptions();
  o.num_kv_blocks = 14;  // 56 tokens for 6 sequences that grow to 30 each
  auto t = Start(o);
  std::mt19937_64 gen(13);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 6; ++i) {
    prompts.push_back(RandomPrompt(gen, 10));
    requests.push_back(Greedy("p" + std::to_string(i), prompts.back(), 20));
  }
  SubmitTogether(t.get(), requests);
  for (int i = 0; i < 6; ++i) {
    Collected c = t->collector.Wait("p" + std::to_string(i));
    EXPECT_EQ(c.tokens, t->model->ReferenceGreedy(prompts[i], 20)) << i;
    EXPECT_EQ(c.final_output.finish, FinishReason::kLength);
  }
  EngineStats s = t->engine->Stats();
  EXPECT_GT(s.preemptions_total, 0);
  EXPECT_EQ(s.num_free_blocks, 14);
}

TEST(Engine, MaxModelLenIsClampedToWhatTheCacheHolds) {
  EngineOptions o = SmallOptions();
  o.num_kv_blocks = 5;
  auto t = Start(o);
  EXPECT_EQ(t->engine->max_model_len(), 20);
  ASSERT_TRUE(t->engine->Submit(Greedy("a", {'a', 'b'}, 0), t->collector.Callback()).ok());
  Collected c = t->collector.Wait("a");
  EXPECT_EQ(c.final_output.finish, FinishReason::kLength);
  EXPECT_EQ(c.tokens.size(), 18u);
}

TEST(Engine, CancelEndsTheRequestAndFreesItsBlocks) {
  auto t = Start(SmallOptions());
  Engine* engine = t->engine.get();
  Collector& collector = t->collector;
  OutputCallback inner = collector.Callback();
  // Cancel from inside the callback after the third token (callbacks may call Cancel).
  int seen = 0;
  OutputCallback cb = [&, inner](GenerationOutput out) {
    if (++seen == 3) engine->Cancel("long");
    inner(std::move(out));
  };
  ASSERT_TRUE(engine->Submit(Greedy("long", std::vector<int32_t>(30, 'a'), 500), cb).ok());
  Collected c = collector.Wait("long");
  EXPECT_EQ(c.final_output.finish, FinishReason::kCancelled);
  EXPECT_LT(c.tokens.size(), 10u);
  EngineStats s = engine->Stats();
  EXPECT_EQ(s.num_free_blocks, s.num_total_blocks);
  EXPECT_EQ(s.running, 0);
  engine->Cancel("long");  // idempotent
  engine->Cancel("never-submitted");
}

TEST(Engine, CancelOfAQueuedRequest) {
  auto t = Start(SmallOptions());
  t->model->Pause();
  ASSERT_TRUE(t->engine->Submit(Greedy("a", {'a'}, 5), t->collector.Callback()).ok());
  t->model->WaitUntilPaused();
  ASSERT_TRUE(t->engine->Submit(Greedy("b", {'b'}, 5), t->collector.Callback()).ok());
  t->engine->Cancel("b");
  t->model->Resume();
  EXPECT_EQ(t->collector.Wait("b").final_output.finish, FinishReason::kCancelled);
  EXPECT_TRUE(t->collector.Wait("b").tokens.empty());
  EXPECT_EQ(t->collector.Wait("a").final_output.finish, FinishReason::kLength);
}

TEST(Engine, FullWaitQueueIsResourceExhausted) {
  EngineOptions o = SmallOptions();
  o.max_waiting = 2;
  auto t = Start(o);
  t->model->Pause();
  ASSERT_TRUE(t->engine->Submit(Greedy("a", {'a'}, 3), t->collector.Callback()).ok());
  t->model->WaitUntilPaused();
  ASSERT_TRUE(t->engine->Submit(Greedy("b", {'b'}, 3), t->collector.Callback()).ok());
  ASSERT_TRUE(t->engine->Submit(Greedy("c", {'c'}, 3), t->collector.Callback()).ok());
  absl::Status s = t->engine->Submit(Greedy("d", {'d'}, 3), t->collector.Callback());
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  t->model->Resume();
  for (const char* id : {"a", "b", "c"}) {
    EXPECT_EQ(t->collector.Wait(id).final_output.finish, FinishReason::kLength);
  }
}

TEST(Engine, ModelErrorFailsTheBatchAndTheEngineGoesOn) {
  TestModelOptions mo;
  mo.poison_token = 'Z';
  auto t = Start(SmallOptions(), mo);
  ASSERT_TRUE(t->engine->Submit(Greedy("bad", {'a', 'Z'}, 5), t->collector.Callback()).ok());
  Collected bad = t->collector.Wait("bad");
  EXPECT_EQ(bad.final_output.finish, FinishReason::kError);
  EXPECT_THAT(std::string(bad.final_output.error.message()), HasSubstr("poisoned token"));
  EXPECT_FALSE(bad.final_output.error.ok());
  ASSERT_TRUE(t->engine->Submit(Greedy("good", {'a', 'b'}, 5), t->collector.Callback()).ok());
  Collected good = t->collector.Wait("good");
  EXPECT_EQ(good.tokens, t->model->ReferenceGreedy({'a', 'b'}, 5));
  EngineStats s = t->engine->Stats();
  EXPECT_EQ(s.num_free_blocks, s.num_total_blocks);
}

TEST(Engine, StopStringEndsTheTextBeforeIt) {
  auto t = Start(SmallOptions());
  std::vector<int32_t> prompt{'s', 't', 'o', 'p'};
  std::string full = AsText(t->model->ReferenceGreedy(prompt, 40));
  // A stop string that spans tokens: three characters from the middle of the output.
  std::string stop = full.substr(10, 3);
  size_t cut = full.find(stop);
  GenerationRequest r = Greedy("s", prompt, 40);
  r.stop.stop_strings = {stop, "no such text here"};
  ASSERT_TRUE(t->engine->Submit(r, t->collector.Callback()).ok());
  Collected c = t->collector.Wait("s");
  EXPECT_EQ(c.final_output.finish, FinishReason::kStop);
  EXPECT_EQ(c.final_output.matched_stop, stop);
  EXPECT_EQ(c.text, full.substr(0, cut));
  EXPECT_EQ(c.tokens.size(), cut + 3);  // one byte per token
}

TEST(Engine, EosStopsUnlessIgnored) {
  TestModelOptions mo;
  mo.eos_at_num_tokens = 8;
  auto t = Start(SmallOptions(), mo);
  std::vector<int32_t> prompt{'a', 'b', 'c'};
  ASSERT_TRUE(t->engine->Submit(Greedy("e", prompt, 20), t->collector.Callback()).ok());
  Collected c = t->collector.Wait("e");
  EXPECT_EQ(c.final_output.finish, FinishReason::kStop);
  ASSERT_EQ(c.tokens.size(), 6u);  // 5 letters, then EOS once the context has 8 tokens
  EXPECT_EQ(c.tokens.back(), kTestEos);
  EXPECT_EQ(c.text, AsText(c.tokens));  // EOS has no text

  GenerationRequest r = Greedy("i", prompt, 20);
  r.stop.ignore_eos = true;
  ASSERT_TRUE(t->engine->Submit(r, t->collector.Callback()).ok());
  Collected ci = t->collector.Wait("i");
  EXPECT_EQ(ci.final_output.finish, FinishReason::kLength);
  EXPECT_EQ(ci.tokens.size(), 20u);
}

TEST(Engine, StopTokenIdEndsTheRequest) {
  auto t = Start(SmallOptions());
  std::vector<int32_t> prompt{'q'};
  std::vector<int32_t> ref = t->model->ReferenceGreedy(prompt, 30);
  GenerationRequest r = Greedy("t", prompt, 30);
  r.stop.stop_token_ids = {ref[7]};
  ASSERT_TRUE(t->engine->Submit(r, t->collector.Callback()).ok());
  Collected c = t->collector.Wait("t");
  EXPECT_EQ(c.final_output.finish, FinishReason::kStop);
  size_t first = std::find(ref.begin(), ref.end(), ref[7]) - ref.begin();
  EXPECT_EQ(c.tokens, std::vector<int32_t>(ref.begin(), ref.begin() + first + 1));
  EXPECT_EQ(c.text, AsText(std::vector<int32_t>(ref.begin(), ref.begin() + first)));
}

TEST(Engine, SameSeedSameTokensAloneOrBatched) {
  auto t = Start(SmallOptions());
  GenerationRequest r = Greedy("alone", {'s', 'e', 'e', 'd'}, 25);
  r.sampling.temperature = 1.0f;
  r.sampling.top_p = 0.9f;
  r.sampling.seed = 1234;
  ASSERT_TRUE(t->engine->Submit(r, t->collector.Callback()).ok());
  std::vector<int32_t> alone = t->collector.Wait("alone").tokens;
  EXPECT_NE(alone, t->model->ReferenceGreedy({'s', 'e', 'e', 'd'}, 25));

  std::mt19937_64 gen(14);
  std::vector<GenerationRequest> batch;
  for (int i = 0; i < 5; ++i) {
    GenerationRequest other = Greedy("o" + std::to_string(i), RandomPrompt(gen, 3 + i * 7), 25);
    other.sampling.temperature = 0.8f;
    batch.push_back(other);
  }
  r.request_id = "batched";
  batch.push_back(r);
  SubmitTogether(t.get(), batch);
  EXPECT_EQ(t->collector.Wait("batched").tokens, alone);
  r.request_id = "other-seed";
  r.sampling.seed = 99;
  ASSERT_TRUE(t->engine->Submit(r, t->collector.Callback()).ok());
  EXPECT_NE(t->collector.Wait("other-seed").tokens, alone);
}

TEST(Engine, LogprobsDescribeTheChosenToken) {
  auto t = Start(SmallOptions());
  GenerationRequest r = Greedy("l", {'l', 'p'}, 3);
  r.include_logprobs = true;
  r.top_logprobs = 3;
  ASSERT_TRUE(t->engine->Submit(r, t->collector.Callback()).ok());
  Collected c = t->collector.Wait("l");
  ASSERT_EQ(c.logprobs.size(), 3u);
  std::vector<int32_t> ctx{'l', 'p'};
  for (size_t i = 0; i < 3; ++i) {
    std::vector<float> row = t->model->ReferenceLogits(ctx);
    std::mt19937_64 rng(0);
    SampleResult ref = Sampler::Sample(row, SamplingOptions{}, ctx, 2, &rng, true, 3);
    EXPECT_EQ(c.logprobs[i].token_id, c.tokens[i]);
    EXPECT_FLOAT_EQ(c.logprobs[i].logprob, ref.logprob);
    ASSERT_EQ(c.logprobs[i].top.size(), 3u);
    EXPECT_EQ(c.logprobs[i].top[0].first, c.tokens[i]);  // greedy picks the most likely
    EXPECT_LE(c.logprobs[i].logprob, 0.0f);
    ctx.push_back(c.tokens[i]);
  }
}

TEST(Engine, StepObserverSeesEveryStep) {
  auto t = Start(SmallOptions());
  std::atomic<int64_t> calls{0}, last_steps{0};
  t->engine->SetStepObserver([&](const EngineStats& s) {
    ++calls;
    last_steps = s.steps_total;
  });
  ASSERT_TRUE(t->engine->Submit(Greedy("a", std::vector<int32_t>(50, 'a'), 4), t->collector.Callback()).ok());
  t->collector.Wait("a");
  // 50 tokens in chunks of 32: 2 prefill steps (the second samples), then 3 decode steps.
  EXPECT_EQ(t->model->num_forward_calls.load(), 5);
  EXPECT_EQ(t->engine->Stats().steps_total, 5);
  for (int i = 0; i < 100 && calls < 5; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(calls.load(), 5);
  EXPECT_EQ(last_steps.load(), 5);
}

TEST(Engine, ShutdownFailsWhatIsLeftWithUnavailable) {
  auto t = Start(SmallOptions());
  t->model->Pause();
  ASSERT_TRUE(t->engine->Submit(Greedy("a", {'a'}, 100), t->collector.Callback()).ok());
  t->model->WaitUntilPaused();
  ASSERT_TRUE(t->engine->Submit(Greedy("b", {'b'}, 100), t->collector.Callback()).ok());
  std::thread stopper([&] { t->engine->Shutdown(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  t->model->Resume();
  stopper.join();
  for (const char* id : {"a", "b"}) {
    Collected c = t->collector.Wait(id);
    EXPECT_EQ(c.final_output.finish, FinishReason::kError);
    EXPECT_EQ(c.final_output.error.code(), absl::StatusCode::kUnavailable);
  }
  EXPECT_EQ(t->engine->Submit(Greedy("c", {'c'}, 1), t->collector.Callback()).code(),
            absl::StatusCode::kUnavailable);
}

TEST(Engine, DuplicateRequestIdIsRejectedWhileActive) {
  auto t = Start(SmallOptions());
  t->model->Pause();
  ASSERT_TRUE(t->engine->Submit(Greedy("dup", {'a'}, 3), t->collector.Callback()).ok());
  absl::Status s = t->engine->Submit(Greedy("dup", {'a'}, 3), t->collector.Callback());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("\"dup\""));
  t->model->Resume();
  t->collector.Wait("dup");
}

TEST(Engine, CreateRejectsACacheBudgetWithoutOneBlock) {
  EngineOptions o;
  o.kv_cache_bytes = 10;
  auto e = Engine::Create(o, std::make_unique<TestModel>(), std::make_shared<ByteTokenizer>());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("kv_cache_bytes"));
}

TEST(Engine, CacheBytesAreTurnedIntoBlocks) {
  EngineOptions o;
  o.block_size = 16;
  o.kv_cache_bytes = 16 * 8 * 100 + 5;  // TestModel: 8 bytes per token
  auto t = Start(o);
  EXPECT_EQ(t->engine->Stats().num_total_blocks, 100);
}

struct BadField {
  std::string name;
  std::function<void(GenerationRequest&)> apply;
  std::string message;
};

TEST(Engine, ValidateNamesTheBadField) {
  EngineOptions o = SmallOptions();
  o.max_model_len = 64;
  auto t = Start(o);
  std::vector<BadField> cases = {
      {"temperature", [](auto& r) { r.sampling.temperature = -0.5f; }, "sampling.temperature must be >= 0, got -0.5"},
      {"temperature nan", [](auto& r) { r.sampling.temperature = NAN; }, "sampling.temperature"},
      {"top_p high", [](auto& r) { r.sampling.top_p = 1.5f; }, "sampling.top_p must be in (0, 1], got 1.5"},
      {"top_p zero", [](auto& r) { r.sampling.top_p = 0.0f; }, "sampling.top_p"},
      {"top_k", [](auto& r) { r.sampling.top_k = -1; }, "sampling.top_k must be >= 0, got -1"},
      {"min_p", [](auto& r) { r.sampling.min_p = 1.5f; }, "sampling.min_p must be in [0, 1]"},
      {"repetition", [](auto& r) { r.sampling.repetition_penalty = 0.0f; }, "sampling.repetition_penalty must be > 0"},
      {"presence", [](auto& r) { r.sampling.presence_penalty = 2.5f; }, "sampling.presence_penalty must be in [-2, 2]"},
      {"frequency", [](auto& r) { r.sampling.frequency_penalty = -3.0f; }, "sampling.frequency_penalty must be in [-2, 2]"},
      {"max_tokens", [](auto& r) { r.stop.max_tokens = -1; }, "stop.max_tokens must be >= 0"},
      {"empty prompt", [](auto& r) { r.prompt_tokens.clear(); }, "prompt_tokens must not be empty"},
      {"long prompt", [](auto& r) { r.prompt_tokens.assign(64, 'a'); }, "prompt has 64 tokens, the model's context is 64"},
      {"prompt+max_tokens", [](auto& r) { r.prompt_tokens.assign(60, 'a'); r.stop.max_tokens = 5; }, "stop.max_tokens is 5"},
      {"vocab", [](auto& r) { r.prompt_tokens[1] = 5000; }, "prompt_tokens[1] = 5000 is outside the vocabulary of 260"},
      {"negative id", [](auto& r) { r.prompt_tokens[0] = -1; }, "prompt_tokens[0] = -1"},
      {"top_logprobs", [](auto& r) { r.top_logprobs = 21; }, "top_logprobs must be in [0, 20], got 21"},
      {"stop string", [](auto& r) { r.stop.stop_strings = {"x", ""}; }, "stop.stop_strings[1] must not be empty"},
      {"stop token", [](auto& r) { r.stop.stop_token_ids = {999}; }, "stop.stop_token_ids[0] = 999"},
      {"request id", [](auto& r) { r.request_id.clear(); }, "request_id must not be empty"},
  };
  for (const BadField& c : cases) {
    GenerationRequest r = Greedy("v", {'a', 'b'}, 4);
    c.apply(r);
    absl::Status s = t->engine->Validate(r);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message)) << c.name;
    EXPECT_EQ(t->engine->Submit(r, t->collector.Callback()).code(),
              absl::StatusCode::kInvalidArgument) << c.name;
  }
  EXPECT_TRUE(t->engine->Validate(Greedy("v", {'a', 'b'}, 4)).ok());
}

}  // namespace
}  // namespace shoal::worker::testing
